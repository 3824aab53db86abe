"""The restore protocol: every rank restores the same committed step, then the ranks agree.

Rank 0 picks the newest valid committed step (the store falls back past corrupt ones) and
broadcasts it; every other rank downloads that same step (or takes it from the download a
restarted worker began while its group formed, :mod:`trainer.restore_prefetch`). Before any variable is touched the
saved model fingerprint and global batch size are checked against the current ones. Every rank
reads the model checkpoint and its own row of per-rank (ON_READ) variables; on a world-size
change metric partial sums go to rank 0 (the sample order is unchanged). Last, the ranks
compare a checksum of their variables.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from typing import Any

import numpy as np

from storage.checkpoints import CheckpointStore
from storage.errors import NoValidCheckpointError, SpotrainError, TransientStorageError
from trainer import state as st
from trainer.cluster_context import WorkerContext
from trainer.errors import JobSpecError, ModelMismatchError, ReplicaDivergenceError
from trainer.model_io import CKPT_PREFIX, RANKS_PREFIX, ModelParts
from trainer.restore_prefetch import RestorePrefetch

import tensorflow as tf  # isort: skip

logger = logging.getLogger(__name__)


def restore_committed(
    model: tf.keras.Model,
    parts: ModelParts,
    store: CheckpointStore,
    worker: WorkerContext,
    *,
    global_batch_size: int,
    local_tmp_dir: str,
    log_prefix: str,
) -> tuple[dict[str, Any] | None, np.ndarray | None]:
    """Restore the agreed step into ``model`` (a collective: every rank calls it).

    Returns (the saved JSON state, this rank's restored per-rank row), or (None, None) for a
    run without a committed step.
    """
    tmp = tempfile.mkdtemp(prefix="spotrain-restore-", dir=local_tmp_dir or None)
    row = None
    try:
        state, where = download_agreed(store, worker, tmp)
        if state is not None:
            check_compatible(store.url, state, parts.fingerprint, global_batch_size)
            row = read_checkpoint(where, state, parts, worker, log_prefix)
        check_replicas_agree(model)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if worker.restore_prefetch is not None:
            worker.restore_prefetch.close()
            worker.restore_prefetch = None
    return state, row


def download_agreed(
    store: CheckpointStore, worker: WorkerContext, tmp: str
) -> tuple[dict[str, Any] | None, str]:
    """Rank 0 chooses (and verifies) the step; the others download that same step. Returns
    the saved state and the directory holding the step's files: ``tmp``, or the worker's
    :class:`trainer.restore_prefetch.RestorePrefetch` directory when it holds the agreed step."""
    choice: dict[str, Any] = {"step": None}
    state = None
    where = tmp
    prefetch = worker.restore_prefetch if _same_run(worker, store) else None
    if worker.is_chief:
        try:
            manifest = _newest_prefetched(store, prefetch)
            if manifest is not None:
                assert prefetch is not None and prefetch.finished_at is not None
                where = prefetch.dir
                worker.phase_times["prefetched"] = prefetch.finished_at
            else:
                manifest = store.restore(tmp)
            choice["step"] = manifest.step
            state = dict(manifest.state)
        except NoValidCheckpointError as exc:
            if store.committed_steps():
                choice["error"] = str(exc)
        except SpotrainError as exc:  # told to every rank, so all stop the same way
            choice["error"] = str(exc)
            choice["retryable"] = exc.retryable
    choice = worker.broadcast_from_rank_zero(choice)
    if choice.get("error"):
        if choice.get("retryable"):
            raise TransientStorageError(choice["error"], store.url)
        raise NoValidCheckpointError(choice["error"], store.url)
    if choice["step"] is None:
        return None, tmp
    if not worker.is_chief:
        taken = prefetch.take(choice["step"]) if prefetch is not None else None
        if taken is not None:
            assert prefetch is not None and prefetch.manifest is not None
            where, manifest = taken, prefetch.manifest
        else:
            manifest = store.restore(tmp, step=choice["step"])
        if manifest.step != choice["step"]:
            raise NoValidCheckpointError(
                f"rank {worker.rank} could not read step {choice['step']} that rank 0 "
                f"restored (got {manifest.step}); check that every worker reaches the same "
                "storage",
                store.url,
            )
        state = dict(manifest.state)
    return state, where


def _same_run(worker: WorkerContext, store: CheckpointStore) -> bool:
    prefetch = worker.restore_prefetch
    return prefetch is not None and prefetch.url == store.url


def _newest_prefetched(store: CheckpointStore, prefetch: RestorePrefetch | None) -> Any:
    """The prefetched manifest when it is still the newest committed step (same digest: not
    committed again since), else None (the chief then restores as before)."""
    if prefetch is None or prefetch.step() is None:
        return None
    steps = store.committed_steps()
    if not steps or steps[-1] != prefetch.step():
        return None
    try:
        digest = store.manifest(steps[-1]).digest
    except Exception:  # unreadable now: the restore's own path decides (and falls back)
        return None
    return prefetch.manifest if prefetch.take(steps[-1], digest) is not None else None


def check_compatible(
    run_url: str,
    state: dict[str, Any],
    fingerprint: tuple[str, dict[str, Any]],
    global_batch_size: int,
) -> None:
    """Raise when the saved state was made by another model/optimizer or batch size."""
    current, detail = fingerprint
    saved = str(state.get("fingerprint", ""))
    if saved != current:
        raise ModelMismatchError(run_url, saved, current, _diff(state, detail))
    gbs = global_batch_size
    if gbs and state.get("global_batch_size") and state["global_batch_size"] != gbs:
        raise JobSpecError(
            "global_batch_size",
            gbs,
            f"the run was started with global_batch_size={state['global_batch_size']}; "
            "resume with that value, or start a fresh run (new name)",
        )


def read_checkpoint(
    tmp: str, state: dict[str, Any], parts: ModelParts, worker: WorkerContext, log_prefix: str
) -> np.ndarray:
    """Read the downloaded step into the model and this rank's per-rank variables; return the
    per-rank row assigned."""
    parts.checkpoint.read(os.path.join(tmp, CKPT_PREFIX)).assert_existing_objects_matched()
    reader = tf.train.load_checkpoint(os.path.join(tmp, RANKS_PREFIX))
    saved_world = int(state.get("world_size", 1))
    if saved_world == worker.world_size:
        row = reader.get_tensor(f"rank/{worker.rank}")
    else:
        logger.warning(
            "%s world size changed %d -> %d: per-rank metric totals are summed into rank 0 "
            "and batch-norm moving statistics averaged; the sample order is unchanged",
            log_prefix,
            saved_world,
            worker.world_size,
        )
        rows = np.stack([reader.get_tensor(f"rank/{r}") for r in range(saved_world)])
        model_part = st.flatten_locals(parts.on_read[: parts.n_model_on_read])
        n = model_part.size
        metric_part = rows[:, n:].sum(axis=0) if worker.is_chief else rows[0, n:] * 0
        row = np.concatenate([model_part, metric_part])
    model_vars = parts.on_read[: parts.n_model_on_read]
    n_model = sum(int(np.prod(v.shape)) for v in model_vars)
    n_all = n_model + sum(int(np.prod(v.shape)) for v in parts.on_read[parts.n_model_on_read :])
    if row.size != n_all and row.size >= n_model:
        # saved before the compiled metrics existed (a model first fit unbuilt): the weights
        # and moving statistics are complete; the partial epoch's metric totals restart
        logger.warning(
            "%s the checkpoint holds %d per-rank values, this model %d: its metric totals "
            "were not saved and restart from zero",
            log_prefix,
            row.size,
            n_all,
        )
        st.assign_locals(model_vars, row[:n_model])
        return np.concatenate([row[:n_model], st.flatten_locals(parts.on_read[len(model_vars) :])])
    st.assign_locals(parts.on_read, row)
    return row


def check_replicas_agree(model: tf.keras.Model) -> None:
    """Raise ReplicaDivergenceError when the ranks' variables differ (a collective)."""
    digest = st.variables_digest(model)
    rows = st.gather_rows(model.distribute_strategy, st.digest_to_row(digest))
    digests = [st.row_to_digest(r) for r in rows]
    if len(set(digests)) > 1:
        raise ReplicaDivergenceError(digests)


def _diff(state: dict[str, Any], detail: dict[str, Any]) -> str:
    saved = state.get("fingerprint_detail") or {}
    for key in ("layers", "variables", "optimizer"):
        if saved.get(key) != st.to_json_value(detail.get(key)):
            return f"{key} differ"
    return ""
