"""The notice watcher and the poll schedule, without TensorFlow: a notice is seen from the
watcher's thread while the training thread does something else; an already handled notice is
not one; the ranks' poll schedule follows the agreed step time, identically on every rank."""

from __future__ import annotations

import time
from typing import Any

from trainer.notice_watcher import RAY_NOTICE, SIGTERM, NoticeWatcher, PollSchedule
from trainer.preemption import PreemptionFlag


class Source:
    """A worker whose local Ray notice is set by hand (from any thread)."""

    rank = 0

    def __init__(self) -> None:
        self.notice: str | None = None
        self.reads = 0

    def local_preemption_notice(self) -> Any:
        self.reads += 1
        return self.notice


def _wait_for(predicate: Any, timeout_s: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(0.01)
    raise AssertionError("timed out")


def test_the_thread_sees_a_notice_while_the_training_thread_is_busy() -> None:
    source = Source()
    # this (training) thread never calls check(): only the watcher's thread reads the source
    with NoticeWatcher(source, interval_s=0.01) as watcher:
        _wait_for(lambda: source.reads >= 2)
        assert watcher._seen is None
        source.notice = "PreemptionInfo(a)"
        seen = _wait_for(lambda: watcher._seen)
    assert (seen.reason, seen.text) == (RAY_NOTICE, "PreemptionInfo(a)")
    source.notice = "PreemptionInfo(b)"
    assert watcher.check() == seen  # the first notice stands


def test_a_handled_notice_is_ignored_and_sigterm_is_one() -> None:
    source = Source()
    flag = PreemptionFlag()
    watcher = NoticeWatcher(source, flag, interval_s=0)  # no thread: check() reads the sources
    watcher.ignore("PreemptionInfo(old)")
    source.notice = "PreemptionInfo(old)"
    assert watcher.check() is None
    flag.set("SIGTERM")
    notice = watcher.check()
    assert notice is not None and (notice.reason, notice.text) == (SIGTERM, None)


def test_a_source_that_raises_is_no_notice() -> None:
    class Broken(Source):
        def local_preemption_notice(self) -> Any:
            raise RuntimeError("no train context")

    assert NoticeWatcher(Broken(), interval_s=0).check() is None


def test_poll_schedule_first_boundary_then_grid_for_fast_steps() -> None:
    schedule = PollSchedule(every_steps=10, poll_s=1.0)
    schedule.begin(23)
    assert schedule.due(24)  # the attempt's first boundary
    schedule.polled(24, slowest_step_s=0.01)  # 10 steps = 0.1 s: on the grid
    assert next(g for g in range(25, 41) if schedule.due(g)) == 30
    schedule.polled(30, slowest_step_s=0.01)
    assert not schedule.due(39) and schedule.due(40)


def test_poll_schedule_polls_sooner_when_steps_are_long() -> None:
    schedule = PollSchedule(every_steps=10, poll_s=1.0)
    schedule.begin(0)
    schedule.polled(1, slowest_step_s=0.3)  # 3 steps ~ 0.9 s
    assert not schedule.due(3) and schedule.due(4)
    schedule.polled(4, slowest_step_s=5.0)  # a step longer than poll_s: every step
    assert schedule.due(5)
    schedule.polled(5, slowest_step_s=0.2)  # capped at the grid point
    assert not schedule.due(9) and schedule.due(10)


def test_poll_schedule_off_and_the_same_on_every_rank() -> None:
    assert not PollSchedule(every_steps=0).due(10)
    ranks = [PollSchedule(every_steps=4, poll_s=1.0) for _ in range(2)]
    agreed = [0.0, 0.5, 0.05, 2.0, 0.01]
    for r in ranks:
        r.begin(0)
    due: list[list[int]] = [[], []]
    for g in range(1, 30):
        for i, r in enumerate(ranks):
            if r.due(g):
                due[i].append(g)
                r.polled(g, agreed[len(due[i]) % len(agreed)])
    assert due[0] == due[1] and len(due[0]) > 7
