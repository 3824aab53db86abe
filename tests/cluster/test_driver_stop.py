"""A SIGTERM'd driver ends with exit 75, not with Ray's exit 1.

Ray ends a process with exit 1 ("The core worker has already been shutdown") when any thread
calls into it after ``ray.shutdown()``. A stopped ``trainer.fit()`` runs on in its thread while
the drained workers exit, so the runner waits for it inside the grace and, if it is still
running, leaves Ray up and tells the caller to end the process with ``os._exit``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.attempt import AttemptContext
from cluster.errors import DriverPreempted
from cluster.ray.runner import RayAttemptRunner

from .fakes import runner_without_ray
from .test_coordinator import make_spec


class StoppableTrainer:
    """``fit()`` raises once ``release`` is set, as Ray Train's does once the drained workers
    exit and the failure policy (asked by the driver to stop) does not restart them."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def fit(self) -> Any:
        self.release.wait(30)
        raise RuntimeError("the workers stopped")


def _stopped_runner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, winds_down_after_s: float | None
) -> tuple[RayAttemptRunner, StoppableTrainer, AttemptContext]:
    trainer = StoppableTrainer()

    def emergency_stop(ctx: AttemptContext, thread: threading.Thread) -> float:
        if winds_down_after_s is not None:
            threading.Timer(winds_down_after_s, trainer.release.set).start()
        return time.time() + 10.0  # the grace's deadline

    runner, ctx = runner_without_ray(monkeypatch, make_spec(tmp_path), trainer, emergency_stop)
    ctx.stop.set()
    return runner, trainer, ctx


def test_a_stopped_driver_waits_for_the_trainer_to_wind_down(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, _trainer, ctx = _stopped_runner(tmp_path, monkeypatch, winds_down_after_s=0.5)
    started = time.monotonic()
    with pytest.raises(DriverPreempted):
        runner.run(ctx)
    assert time.monotonic() - started < 5.0, "waited past the trainer's end"
    assert runner.close() is False, "the trainer had ended: Ray can shut down"


def test_a_trainer_still_running_at_the_deadline_leaves_ray_to_the_process_exit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    runner, trainer, ctx = _stopped_runner(tmp_path, monkeypatch, winds_down_after_s=None)
    monkeypatch.setattr("cluster.constants.STOP_EXIT_MARGIN_S", 9.5)  # 0.5 s left to wait
    try:
        with pytest.raises(DriverPreempted):
            runner.run(ctx)
        assert runner.close() is True, "fit() still runs: Ray must not be shut down under it"
    finally:
        trainer.release.set()


def test_a_sigterm_while_ray_starts_stops_the_driver_as_a_preemption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``ray.init`` puts in its own Python SIGTERM handler (``sys.exit(15)``, pinned below)
    while it runs: a SIGTERM then ended the driver with exit 15, no log, and the run left
    RUNNING. It is now a stop with nothing to save (exit 75), with spotrain's handler back."""

    def start_ray_as_ray_init_does(ray: Any, ctx: AttemptContext) -> bool:
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(signum))
        signal.raise_signal(signal.SIGTERM)
        raise AssertionError("the SIGTERM did not interrupt ray.init")

    def spotrains_handler(signum: int, frame: Any) -> None:
        raise AssertionError("spotrain's handler is not what Ray's handler interrupted")

    monkeypatch.setattr("cluster.ray.runner.set_driver_env", lambda: None)
    monkeypatch.setattr("cluster.ray.runner.start_ray", start_ray_as_ray_init_does)
    shutdowns: list[bool] = []
    monkeypatch.setattr("ray.shutdown", lambda: shutdowns.append(True))
    runner, ctx = runner_without_ray(monkeypatch, make_spec(tmp_path), None, lambda c, t: 0.0)
    previous = signal.signal(signal.SIGTERM, spotrains_handler)
    try:
        with pytest.raises(DriverPreempted, match="while Ray started"):
            RayAttemptRunner.ensure_ray(runner, ctx)
        assert signal.getsignal(signal.SIGTERM) is spotrains_handler
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert ctx.stop.is_set() and shutdowns == [True]


def test_ray_init_installs_a_sigterm_handler_that_exits_15() -> None:
    """Pins the Ray behaviour the test above stands for, on the installed Ray."""
    code = (
        "import signal, ray\n"
        "ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)\n"
        "handler = signal.getsignal(signal.SIGTERM)\n"
        "ray.shutdown()\n"
        "try:\n"
        "    handler(signal.SIGTERM, None)\n"
        "except SystemExit as exc:\n"
        "    print('exit', exc.code)\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[-2:] == ["exit", "15"], out.stdout
