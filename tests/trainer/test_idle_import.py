"""A warm spare's import at idle CPU priority (``trainer.idle_import``): the markers training
workers leave, SCHED_IDLE for the block and the threads it starts, back to SCHED_OTHER at its
end or at the deadline, and the preload (``trainer.warm``, a fresh process, no Ray) importing
at idle priority only beside a live training marker."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from trainer import idle_import
from trainer.warm import MARKER_DIR_ENV, TRAIN_WORKER_ENV

ROOT = Path(__file__).resolve().parents[2]
needs_priority = pytest.mark.skipif(
    not idle_import.can_leave_idle(),
    reason="leaving SCHED_IDLE needs CAP_SYS_NICE or RLIMIT_NICE >= 20",
)


@pytest.fixture(autouse=True)
def own_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    return tmp_path


def test_a_live_marker_means_training_and_stale_ones_are_removed() -> None:
    assert not idle_import.training_on_this_host()
    idle_import.mark_training()
    assert idle_import.training_on_this_host()
    idle_import.unmark_training()
    assert not idle_import.training_on_this_host()

    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    d = idle_import.marker_dir()
    (d / dead.stdout.strip()).write_text("1")  # that process has ended
    (d / str(os.getpid())).write_text("0")  # this pid, another start time: a reused pid
    (d / "not-a-pid").write_text("0")
    assert not idle_import.training_on_this_host()
    assert list(d.iterdir()) == []


@needs_priority
def test_the_block_and_its_threads_run_idle_and_go_back_at_its_end() -> None:
    started = threading.Event()
    release = threading.Event()
    tid: list[int] = []

    def child() -> None:
        tid.append(threading.get_native_id())
        started.set()
        release.wait(10)

    with idle_import.idle_priority() as idle:
        assert idle
        assert os.sched_getscheduler(0) == os.SCHED_IDLE
        thread = threading.Thread(target=child)
        thread.start()
        started.wait(10)
        assert os.sched_getscheduler(tid[0]) == os.SCHED_IDLE
    try:
        assert os.sched_getscheduler(0) == os.SCHED_OTHER
        assert os.sched_getscheduler(tid[0]) == os.SCHED_OTHER
    finally:
        release.set()
        thread.join()


@needs_priority
def test_past_the_deadline_the_import_goes_on_at_normal_priority() -> None:
    with idle_import.idle_priority(deadline_s=0.3):
        assert os.sched_getscheduler(0) == os.SCHED_IDLE
        deadline = time.monotonic() + 10
        while os.sched_getscheduler(0) == os.SCHED_IDLE and time.monotonic() < deadline:
            time.sleep(0.05)
        assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_without_the_right_to_go_back_the_block_runs_at_normal_priority(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(idle_import, "can_leave_idle", lambda: False)
    with idle_import.idle_priority() as idle:
        assert not idle
        assert os.sched_getscheduler(0) == os.SCHED_OTHER


def test_a_helper_that_cannot_start_leaves_the_block_at_normal_priority(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_process(*args: object, **kwargs: object) -> None:
        raise OSError("no process for the helper")

    monkeypatch.setattr(idle_import, "can_leave_idle", lambda: True)
    monkeypatch.setattr(idle_import.subprocess, "Popen", no_process)
    with idle_import.idle_priority() as idle:
        assert not idle
        assert os.sched_getscheduler(0) == os.SCHED_OTHER


def _preload(tmp_path: Path) -> dict:
    markers = tmp_path / "warm-markers"
    markers.mkdir(exist_ok=True)
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TMPDIR": str(tmp_path),
        TRAIN_WORKER_ENV: "1",
        MARKER_DIR_ENV: str(markers),
    }
    code = "import os, trainer.warm; print('POLICY', os.sched_getscheduler(0))"
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    [marker] = list(markers.iterdir())
    result = json.loads(marker.read_text())
    marker.unlink()
    result["policy_after"] = int(out.stdout.split("POLICY")[1])
    return result


@needs_priority
def test_the_preload_imports_at_idle_priority_only_beside_training(tmp_path: Path) -> None:
    assert _preload(tmp_path)["idle"] is False
    idle_import.mark_training()  # this process trains on the host
    try:
        beside = _preload(tmp_path)
    finally:
        idle_import.unmark_training()
    assert beside["idle"] is True
    assert beside["imported_at"]
    assert beside["policy_after"] == os.SCHED_OTHER  # back to normal once warm
