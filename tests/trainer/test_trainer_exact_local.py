"""Exactness, single worker, in process: an interrupted run ends bitwise equal to the
uninterrupted one (weights, optimizer slots and iterations, RNG state, per-rank metric and
batch-norm copies) with the same per-epoch history."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fsspec
import pytest

from storage.checkpoints import CheckpointStore, StoreOptions
from storage.retry import RetryOptions
from tests.fakes import FaultyFileSystem, corrupt_file
from tests.trainer.helpers import (
    assert_bitwise_equal,
    events,
    final_checkpoint,
    history_of,
    interrupt_spec,
    job_dict,
    run_dir,
)
from trainer.local import run_local

FAST = StoreOptions(retry=RetryOptions(attempts=1, initial_backoff_s=0.001, max_backoff_s=0.001))


def _attempts(job: dict[str, Any], store_for_attempt: Any = None, limit: int = 10) -> list[str]:
    """Run attempts until one finishes; return the failure of each failed attempt."""
    failures: list[str] = []
    for attempt in range(limit):
        store = store_for_attempt(attempt) if store_for_attempt else None
        try:
            result = run_local(job, store=store)
        except Exception as exc:  # each failure is one interrupted attempt
            failures.append(repr(exc))
            continue
        assert result.finished
        return failures
    raise AssertionError(f"no attempt finished: {failures}")


@pytest.mark.parametrize(
    ("mode", "kills"),
    [
        # saves at every 5 steps and every epoch end (6, 12, 18): 5 = raised at the save step
        # 5 (saved before the error goes on), 7 = right after the save of 6, 11 = after the
        # save at 10, 16 = mid-epoch
        ("plateau", [5, 7, 11, 16, 20]),
        ("schedule", [3, 6, 13, 17]),
    ],
)
def test_exception_interruptions_are_exact(
    tmp_path: Path, reference: Any, mode: str, kills: list[int]
) -> None:
    ref_tensors, ref_manifest, _ = reference(mode)
    job = job_dict(tmp_path, f"int-{mode}", mode)
    job["callbacks"] = [*job["callbacks"], interrupt_spec(kills, tmp_path / "markers")]
    failures = _attempts(job)
    expected = [k for k in kills if k <= ref_manifest["step"]]
    assert len(failures) == len(expected) >= 3, failures
    tensors, manifest = final_checkpoint(job["run_url"])
    assert manifest["step"] == ref_manifest["step"]
    assert manifest["state"]["finished"] is True
    assert_bitwise_equal(ref_tensors, tensors)
    assert history_of(manifest) == history_of(ref_manifest)
    # a first kill before any save step leaves nothing to restore; one at a save step (a
    # multiple of every_steps=5) is saved before its exception goes on
    first_saved = expected[0] % job["checkpoint"]["every_steps"] == 0
    assert len(events(job["run_url"], "restore")) == len(expected) - (0 if first_saved else 1)


def test_reference_runs_exercise_the_callbacks(reference: Any) -> None:
    """The configurations must make the stateful callbacks act, else the test proves little."""
    _, plateau, _ = reference("plateau")
    lrs = [e["logs"]["lr"] for e in history_of(plateau)]
    assert len(set(lrs)) > 1, f"ReduceLROnPlateau never fired: {lrs}"
    _, schedule, _ = reference("schedule")
    assert schedule["state"]["callbacks"]["EarlyStopping#0"]["stopped_epoch"] > 0
    assert schedule["step"] < 4 * 6  # stopped early


def test_failed_upload_and_corrupt_checkpoint_resume_exactly(
    tmp_path: Path, reference: Any
) -> None:
    """Attempt 0 dies because an upload fails midway (the last file of the step-6 commit;
    synchronous upload so the failing step is deterministic); attempt 1 is killed at 16 and its
    newest checkpoint then corrupted, so attempt 2 falls back; both resume exactly."""
    ref_tensors, ref_manifest, _ = reference("plateau")
    job = job_dict(tmp_path, "upload", "plateau")
    local_fs = fsspec.filesystem("file", auto_mkdir=True)

    def store_for(attempt: int) -> CheckpointStore:
        fs = FaultyFileSystem(local_fs)
        if attempt == 0:
            # each commit uploads 4 files (ckpt + ranks, index + data): the 8th put fails
            fs.fail("put_file", PermissionError("injected: upload failed"), times=1, after=7)
        return CheckpointStore(job["run_url"], fs=fs, options=FAST)

    job["callbacks"] = [*job["callbacks"], interrupt_spec([16], tmp_path / "markers")]
    failures: list[str] = []
    try:
        run_local(job, store=store_for(0), backup_overrides={"async_upload": False})
    except Exception as exc:  # the upload failure surfaces in the training loop
        failures.append(repr(exc))
    assert failures and "injected: upload failed" in failures[0]
    steps = sorted(int(p.name) for p in (run_dir(job["run_url"]) / "checkpoints").iterdir())
    committed = [
        s
        for s in steps
        if (run_dir(job["run_url"]) / "checkpoints" / f"{s:012d}" / "MANIFEST.json").exists()
    ]
    assert committed == [5], committed
    # attempt 1: runs to the kill at 16; then corrupt the newest checkpoint (15)
    with pytest.raises(RuntimeError, match="injected failure"):
        run_local(job, store=store_for(1))
    newest = run_dir(job["run_url"]) / "checkpoints" / f"{15:012d}"
    prefix = json.loads((newest / "MANIFEST.json").read_text()).get("prefix", "")
    corrupt_file(local_fs, str(newest / prefix / "ckpt.data-00000-of-00001"))
    result = run_local(job, store=store_for(2))
    assert result.restored_step == 12  # 15 is corrupt: fell back to the epoch end
    tensors, manifest = final_checkpoint(job["run_url"])
    assert_bitwise_equal(ref_tensors, tensors)
    assert history_of(manifest) == history_of(ref_manifest)
    assert events(job["run_url"], "checkpoint_corrupt")


def test_finished_run_does_not_train_again(tmp_path: Path) -> None:
    job = job_dict(tmp_path, "done", "schedule", epochs=1)
    first = run_local(job)
    assert first.finished and first.global_step == 6
    again = run_local(job)
    assert again.finished and again.restored_step == 6 and again.global_step == 6


def test_each_commit_records_when_its_step_ended(tmp_path: Path) -> None:
    """``trained_at`` (what the cold-start bench times a first step by): the wall time the
    saved step's training ended, before the save blocked and before the commit."""
    import time

    started = time.time()
    job = job_dict(tmp_path, "trained-at")
    assert run_local(job).finished
    commits = events(job["run_url"], "checkpoint_commit")
    assert len(commits) >= 3
    ended = [c["payload"]["trained_at"] for c in commits]
    assert ended == sorted(ended) and started < ended[0]
    for commit in commits:
        payload = commit["payload"]
        assert payload["trained_at"] + payload["blocked_s"] <= commit["time"] + 0.01
