"""The restore prefetch: the newest checkpoint downloads while the model is built, the restore
takes it when it holds the agreed step, and restores the newest step itself otherwise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from storage.checkpoints import CheckpointStore
from tests.trainer.helpers import (
    assert_bitwise_equal,
    events,
    final_checkpoint,
    interrupt_spec,
    job_dict,
)
from trainer.cluster_context import WorkerContext
from trainer.local import run_local
from trainer.restore import download_agreed
from trainer.restore_prefetch import RestorePrefetch


def _interrupted_once(tmp_path: Path, at_step: int) -> dict[str, Any]:
    job = job_dict(tmp_path, "prefetch", "plateau")
    job["callbacks"] = [*job["callbacks"], interrupt_spec([at_step], tmp_path / "markers")]
    try:
        run_local(job)
    except Exception:  # the interruption
        pass
    else:
        raise AssertionError(f"the run was not interrupted at step {at_step}")
    return job


def test_a_resumed_run_restores_from_the_prefetch_and_ends_bitwise_equal(tmp_path, reference):
    ref_tensors, ref_manifest, _ = reference("plateau")
    job = _interrupted_once(tmp_path, 11)
    assert run_local(job).finished
    [restore] = events(job["run_url"], "restore")
    assert restore["payload"]["step"] == 10
    assert "prefetched_at" in restore["payload"], restore["payload"]
    tensors, manifest = final_checkpoint(job["run_url"])
    assert manifest["step"] == ref_manifest["step"]
    assert_bitwise_equal(ref_tensors, tensors)


def test_a_prefetch_older_than_the_newest_commit_is_not_restored(tmp_path):
    job = _interrupted_once(tmp_path, 11)
    store = CheckpointStore(job["run_url"])
    stale = RestorePrefetch(store)
    assert stale.step() == 10
    assert run_local(job).finished  # commits past step 10
    newest = store.committed_steps()[-1]
    assert newest > 10

    worker = WorkerContext(restore_prefetch=stale)
    tmp = tmp_path / "restore"
    tmp.mkdir()
    state, where = download_agreed(store, worker, str(tmp))
    assert state is not None and int(state["global_step"]) == newest
    assert where == str(tmp), "the stale prefetch was restored"
    assert "prefetched" not in worker.phase_times

    fresh = RestorePrefetch(store)
    worker = WorkerContext(restore_prefetch=fresh)
    state, where = download_agreed(store, worker, str(tmp_path / "unused"))
    assert state is not None and int(state["global_step"]) == newest
    assert where == fresh.dir and worker.phase_times["prefetched"] == fresh.finished_at
    fresh.close()
    stale.close()
    assert not Path(fresh.dir).exists()
