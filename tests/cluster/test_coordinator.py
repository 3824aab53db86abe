"""The coordinator's state machine, driven one step() at a time with a fake runner and real
(local-file) storage."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from fsspec.implementations.local import LocalFileSystem

from cluster.coordinator import Coordinator, CoordinatorOptions
from cluster.spec import absolute_run_url, parse_spec
from cluster.state import RunState, last_state
from cluster.status import collect_status
from storage.errors import LeaseHeldError, PermanentStorageError
from storage.location import RunLocation
from storage.run_record import RunRecord
from tests.fakes import FaultyFileSystem
from trainer.errors import PreemptedError, UserCodeError

from .fakes import FakeRunner, commit

ROOT = Path(__file__).resolve().parents[2]


class RayActorError(Exception):
    pass


def make_spec(tmp_path: Path, **failures: object):
    raw = {
        "name": "job",
        "model": "examples/digits.py:build_model",
        "data": "examples/digits.py:make_dataset",
        "epochs": 2,
        "storage": f"file://{tmp_path}/runs",
        "failures": {"max_failures": 1, "backoff_s": 0, **failures},
    }
    return parse_spec(raw, working_dir=str(ROOT))


def coordinator(tmp_path: Path, runner: FakeRunner, **failures: object) -> Coordinator:
    opts = CoordinatorOptions(lease_ttl_s=10, lease_renew_s=5, backoff_override_s=0)
    return Coordinator(make_spec(tmp_path, **failures), opts, runner)


def kinds(c: Coordinator) -> list[str]:
    return [e.payload["state"] for e in c.record.events(kinds=["state"])]


def test_happy_path_one_transition_per_step(tmp_path: Path) -> None:
    runner = FakeRunner([([5, 10], None)])
    c = coordinator(tmp_path, runner)
    assert c.start().kind is RunState.PENDING
    prev, nxt = c.step()
    assert (prev.kind, nxt.kind) == (RunState.PENDING, RunState.RUNNING)
    assert nxt.attempt == 1 and nxt.from_step is None
    prev, nxt = c.step()
    assert (prev.kind, nxt.kind) == (RunState.RUNNING, RunState.SUCCEEDED)
    assert nxt.global_step == 20 and c.done()
    assert c.step() == (nxt, nxt)
    c.close()
    assert kinds(c) == ["PENDING", "RUNNING", "SUCCEEDED"]
    rep = collect_status(c.location)
    assert (rep.state, rep.global_step, rep.total_steps, rep.attempts) == ("SUCCEEDED", 20, 20, 1)


def test_preemption_then_resume_then_success(tmp_path: Path) -> None:
    runner = FakeRunner([([5, 10], PreemptedError(10)), ([15], None)])
    c = coordinator(tmp_path, runner)
    c.start()
    c.step()  # PENDING -> RUNNING
    prev, nxt = c.step()
    assert prev.kind is RunState.RUNNING
    assert nxt.kind is RunState.PREEMPTED and nxt.reason == "preemption"
    assert nxt.budget == "preemptions 1/unlimited"
    prev, nxt = c.step()
    assert prev.kind is RunState.PREEMPTED
    assert nxt.kind is RunState.RESUMING and nxt.attempt == 2
    _prev, nxt = c.step()
    assert nxt.kind is RunState.RUNNING and nxt.from_step == 10
    assert c.step()[1].kind is RunState.SUCCEEDED
    c.close()
    assert kinds(c) == ["PENDING", "RUNNING", "PREEMPTED", "RESUMING", "RUNNING", "SUCCEEDED"]
    rep = collect_status(c.location)
    assert (rep.attempts, rep.preemptions, rep.state) == (2, 1, "SUCCEEDED")
    assert [m.kind for m in rep.markers] == ["preemption", "restore"]


def test_user_code_error_fails_fast_with_traceback(tmp_path: Path) -> None:
    err = UserCodeError(
        "build_model", "ZeroDivisionError", "Traceback...\n  File digits.py, line 3"
    )
    runner = FakeRunner([([], err)])
    c = coordinator(tmp_path, runner)
    c.start()
    final = c.run()
    c.close()
    assert final.kind is RunState.FAILED and final.is_user_error
    assert "digits.py, line 3" in final.user_traceback
    assert len(runner.calls) == 1
    assert collect_status(c.location).state == "FAILED"


def test_failure_budget_spent_is_an_infrastructure_failure(tmp_path: Path) -> None:
    runner = FakeRunner([([5], RayActorError()), ([], RayActorError())])
    c = coordinator(tmp_path, runner)  # max_failures 1
    c.start()
    final = c.run()
    c.close()
    assert final.kind is RunState.FAILED and not final.is_user_error
    assert final.reason == "lost" and "spent" in final.extra["budget"]
    assert len(runner.calls) == 2


def test_budgets_persist_across_coordinators(tmp_path: Path) -> None:
    c = coordinator(tmp_path, FakeRunner([([5], RayActorError())]))
    c.start()
    c.step()
    c.step()  # RUNNING -> PREEMPTED (failures 1/1)
    c.close()
    c2 = coordinator(tmp_path, FakeRunner([([], RayActorError())]))
    c2.start()
    assert c2.policy.counts["failures"] == 1
    final = c2.run()
    c2.close()
    assert final.kind is RunState.FAILED


def test_a_second_coordinator_is_refused_while_the_lease_is_held(tmp_path: Path) -> None:
    c = coordinator(tmp_path, FakeRunner([]))
    c.start()
    other = coordinator(tmp_path, FakeRunner([]))
    with pytest.raises(LeaseHeldError) as info:
        other.start()
    assert info.value.holder == c.options.holder_id and info.value.expires_at
    c.close()
    other.start()  # released: the next one may drive
    other.close()


def test_driver_lost_mid_run_counts_as_preemption_and_resumes(tmp_path: Path) -> None:
    c = coordinator(tmp_path, FakeRunner([]))
    c.start()
    c.step()  # RUNNING, then the driver "dies": lease released as if expired
    commit(c.run_url, 7)
    c._lease.release()
    c2 = coordinator(tmp_path, FakeRunner([([10], None)]))
    st = c2.start()
    assert st.kind is RunState.PREEMPTED and st.reason == "driver_lost"
    assert c2.run().kind is RunState.SUCCEEDED
    c2.close()
    assert c2.runner.calls[0].attempt == 2
    rep = collect_status(c2.location)
    assert rep.preemptions == 1 and rep.attempts == 2


def test_sigterm_stops_with_preempted_and_the_next_run_resumes(tmp_path: Path) -> None:
    runner = FakeRunner([([5], "stop")])
    c = coordinator(tmp_path, runner)
    c.start()
    c.step()
    threading.Timer(0.05, c.request_stop).start()
    final = c.run()
    c.close()
    assert final.kind is RunState.PREEMPTED and final.stop and c.done()
    assert last_state(RunRecord(c.run_url)).stop
    c2 = coordinator(tmp_path, FakeRunner([([10], None)]))
    assert c2.start().kind is RunState.PREEMPTED
    assert c2.run().kind is RunState.SUCCEEDED
    c2.close()
    assert collect_status(c2.location).preemptions == 1


def test_finished_run_succeeds_at_once_and_failed_run_is_retried(tmp_path: Path) -> None:
    c = coordinator(tmp_path, FakeRunner([([], UserCodeError("fit", "bug"))]))
    c.start()
    assert c.run().kind is RunState.FAILED
    c.close()
    runner = FakeRunner([([5], None)])
    c2 = coordinator(tmp_path, runner)  # the user fixed the bug: a new run retries
    assert c2.start().kind is RunState.FAILED and not c2.done()
    assert c2.run().kind is RunState.SUCCEEDED
    c2.close()
    c3 = coordinator(tmp_path, FakeRunner([]))
    assert c3.start().kind is RunState.SUCCEEDED and c3.done()
    c3.close()


def test_training_finished_but_outcome_unrecorded(tmp_path: Path) -> None:
    c = coordinator(tmp_path, FakeRunner([]))
    c.start()
    c.step()
    commit(c.run_url, 20, finished=True)
    c._lease.release()
    c2 = coordinator(tmp_path, FakeRunner([]))  # must not run anything (no script entries)
    c2.start()
    assert c2.run().kind is RunState.SUCCEEDED
    c2.close()


def test_backoff_doubles_without_progress_and_resets_after_progress(tmp_path: Path) -> None:
    runner = FakeRunner(
        [
            ([], RayActorError()),  # no commit: backoff 1 s
            ([], RayActorError()),  # still none: doubled, 2 s
            ([5], RayActorError()),  # committed step 5: back to the base, 1 s
            ([], None),
        ]
    )
    waits: list[float] = []

    def sleep(seconds: float) -> bool:
        waits.append(seconds)
        return False  # not stopped

    opts = CoordinatorOptions(lease_ttl_s=10, lease_renew_s=5, backoff_override_s=None)
    spec = make_spec(tmp_path, max_failures=5, backoff_s=1.0)
    c = Coordinator(spec, opts, runner, sleep=sleep)
    c.policy.options.jitter = 0.0
    c.start()
    assert c.run().kind is RunState.SUCCEEDED
    c.close()
    assert waits == [1.0, 2.0, 1.0]
    resuming = [
        e.payload["backoff_s"]
        for e in c.record.events(kinds=["state"])
        if e.payload["state"] == "RESUMING"
    ]
    assert resuming == [1.0, 2.0, 1.0]


def test_one_location_for_record_store_lease_and_attempts(tmp_path: Path) -> None:
    runner = FakeRunner([([5], None)])
    c = coordinator(tmp_path, runner)
    c.start()
    assert c.run().kind is RunState.SUCCEEDED
    c.close()
    loc = c.location
    assert loc.url == c.run_url == absolute_run_url(c.spec.run_url)
    assert c.record.loc is loc and c.store.loc is loc and c._lease.lease.loc is loc
    (ctx,) = runner.calls
    assert ctx.location is loc and ctx.run_url == c.run_url


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_storage_below_a_file_fails_at_start_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "runs").write_text("a file where the runs directory should be")
    before = _files(tmp_path)
    c = coordinator(tmp_path, FakeRunner([]))
    with pytest.raises(PermanentStorageError, match=r"write probe failed.*fix: ") as info:
        c.start()
    assert info.value.url == c.location.url
    assert c._lease is None  # failed before taking the lease
    assert _files(tmp_path) == before
    assert (tmp_path / "runs").read_text() == "a file where the runs directory should be"


@pytest.mark.skipif(
    hasattr(os, "geteuid") and os.geteuid() == 0, reason="root writes into read-only directories"
)
def test_read_only_directory_fails_at_start_and_writes_nothing(tmp_path: Path) -> None:
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs").chmod(0o555)
    try:
        c = coordinator(tmp_path, FakeRunner([]))
        with pytest.raises(PermanentStorageError, match="fix: "):
            c.start()
        assert c._lease is None
        assert _files(tmp_path) == ["runs"]
    finally:
        (tmp_path / "runs").chmod(0o755)


def test_refused_writes_fail_at_start_and_write_nothing(tmp_path: Path) -> None:
    """A read-only storage (access denied) as a fault, so that it also fails as root."""
    spec = make_spec(tmp_path)
    fs = FaultyFileSystem(LocalFileSystem(auto_mkdir=True))
    fs.fail("pipe_file", PermissionError(13, "Permission denied"), times=None)
    loc = RunLocation.from_url(absolute_run_url(spec.run_url), fs=fs)  # type: ignore[arg-type]
    opts = CoordinatorOptions(lease_ttl_s=10, lease_renew_s=5, backoff_override_s=0)
    c = Coordinator(spec, opts, FakeRunner([]), location=loc)
    assert c.record.loc is loc and c.store.loc is loc
    with pytest.raises(PermanentStorageError, match="fix: check the credentials"):
        c.start()
    assert c._lease is None and fs.raised("pipe_file") == 1
    assert _files(tmp_path) == []
