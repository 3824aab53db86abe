"""A fake attempt runner: commits checkpoints through real storage, then fails as told."""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from cluster.attempt import AttemptContext, AttemptResult, CoordinatorOptions
from cluster.errors import DriverPreempted
from storage import events
from storage.checkpoints import CheckpointStore
from storage.fencing import Fence
from storage.location import RunLocation
from storage.run_record import RunRecord

STEPS_PER_EPOCH = 10


def commit(
    run: str | RunLocation,
    step: int,
    *,
    finished: bool = False,
    epochs: int = 2,
    fence: Fence | None = None,
) -> None:
    store = CheckpointStore(run, fence=fence)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "ckpt.index").write_bytes(b"x" * (step + 1))
        store.commit(
            step,
            tmp,
            {
                "epoch": step // STEPS_PER_EPOCH,
                "global_step": step,
                "steps_per_epoch": STEPS_PER_EPOCH,
                "finished": finished,
            },
        )


def runner_without_ray(
    monkeypatch: Any,
    spec: Any,
    trainer: Any,
    emergency_stop: Callable[[AttemptContext, threading.Thread], Any],
    lease_generation: int = 1,
) -> tuple[Any, AttemptContext]:
    """A real ``RayAttemptRunner`` (polling every 0.05 s) whose Ray session is never started,
    whose ``build_trainer`` returns ``trainer`` and whose ``emergency_stop`` is the given one,
    and the context of attempt 1 of ``spec``'s run."""
    from cluster.ray.runner import RayAttemptRunner

    runner = RayAttemptRunner(poll_s=0.05)
    monkeypatch.setattr(runner, "ensure_ray", lambda ctx: None)
    monkeypatch.setattr(runner, "build_trainer", lambda ctx: trainer)
    monkeypatch.setattr(runner, "emergency_stop", emergency_stop)
    loc = RunLocation.from_url(spec.run_url)
    ctx = AttemptContext(
        spec=spec,
        run_url=loc.url,
        location=loc,
        attempt=1,
        counts={},
        stop=threading.Event(),
        options=CoordinatorOptions(),
        lease_generation=lease_generation,
    )
    return runner, ctx


class FakeRunner:
    """Each ``run`` plays one script entry: (steps to commit, outcome).

    outcome: None = success (and a final commit), an exception = raised after the commits,
    "stop" = wait for the coordinator's stop request then raise DriverPreempted.
    """

    def __init__(self, script: Iterable[tuple[list[int], Any]], epochs: int = 2) -> None:
        self.script = list(script)
        self.calls: list[AttemptContext] = []
        self.epochs = epochs
        self.closed = False

    def run(self, ctx: AttemptContext) -> AttemptResult:
        self.calls.append(ctx)
        steps, outcome = self.script.pop(0)
        # like the Ray runner's workers: they write under the attempt's lease generation
        gen = ctx.lease_generation
        fence = None if gen is None else Fence(ctx.location, gen)
        rec = RunRecord(ctx.location, fence=fence)
        if ctx.attempt > 1:
            latest = CheckpointStore(ctx.location).latest()
            if latest is not None:
                events.write_restore(rec, {}, step=latest.step, attempt=ctx.attempt)
        for s in steps:
            commit(ctx.location, s, fence=fence)
            events.write_metrics(
                rec,
                {
                    "global_step": s,
                    "epoch": s // STEPS_PER_EPOCH,
                    "loss": 1.0 / (s + 1),
                    "attempt": ctx.attempt,
                },
            )
        if outcome is None:
            total = STEPS_PER_EPOCH * self.epochs
            commit(ctx.location, total, finished=True, fence=fence)
            return AttemptResult(global_step=total)
        if outcome == "stop":
            ctx.stop.wait(5)
            raise DriverPreempted("stopped")
        raise outcome

    def close(self) -> bool:
        self.closed = True
        return False
