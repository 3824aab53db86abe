"""``BackupOptions``: spotrain's options of ``BackupAndRestore`` (beyond the tf.keras arguments).

Its own module so that both the hooks (``trainer.callback``) and the training state they drive
(``trainer.training_state``) read one declaration; ``trainer.callback`` re-exports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from storage.checkpoints import StoreOptions
from trainer.constants import (
    DEFAULT_COMMIT_TIMEOUT_S,
    DEFAULT_KEEP_LAST,
    DEFAULT_LOCAL_TMP_DIR,
    DEFAULT_PREEMPTION_POLL_STEPS,
)


@dataclass(frozen=True)
class BackupOptions:
    """spotrain options of :class:`trainer.callback.BackupAndRestore`.

    storage_options: fsspec options of the backup URL (credentials, endpoint).
    keep_last / keep_every: retention after each commit (keep_last=0 keeps all).
    async_upload: commit in the background; a step is blocked only for the snapshot.
    snapshot: save through an in-memory snapshot written in the background
        (:mod:`trainer.saving`); False: every rank writes its checkpoint at the boundary.
    save_at_epoch_end: also save at each epoch end (default: only when save_freq="epoch").
    preemption_poll_steps: poll SIGTERM / Ray's preemption notice every N global steps on every
        rank (0 = never; with save_before_preemption=True then every step).
    commit_timeout_s: how long a preemption / the end of training waits for the last commit.
    local_tmp_dir: where checkpoints are staged before upload ("" = system temp dir).
    strict_callback_state: raise (instead of warn) on a callback whose state cannot be saved.
    global_batch_size / seed: recorded in the state and checked on resume (0/None = unknown).
    element_spec: the per-example (x, y[, w]) spec, used to create the compiled metrics before
        training so their mid-epoch values are restored exactly.
    extra_state: more JSON put into every saved state.
    store_options: options of the CheckpointStore the callback creates (concurrency, events).
    lease_generation: the coordinator's lease generation; the store then commits, deletes and
        records events fenced by it (a stale worker writes nothing). None: unfenced.
    """

    storage_options: Mapping[str, Any] | None = None
    keep_last: int = DEFAULT_KEEP_LAST
    keep_every: int = 0
    async_upload: bool = True
    snapshot: bool = True
    save_at_epoch_end: bool | None = None
    preemption_poll_steps: int = DEFAULT_PREEMPTION_POLL_STEPS
    commit_timeout_s: float = DEFAULT_COMMIT_TIMEOUT_S
    local_tmp_dir: str = DEFAULT_LOCAL_TMP_DIR
    strict_callback_state: bool = False
    global_batch_size: int = 0
    seed: int | None = None
    element_spec: Any = None
    extra_state: Mapping[str, Any] = field(default_factory=dict)
    store_options: StoreOptions | None = None
    lease_generation: int | None = None
