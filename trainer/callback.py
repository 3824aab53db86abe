"""``BackupAndRestore``: a drop-in for ``tf.keras.callbacks.BackupAndRestore`` that stores
through spotrain's storage (any fsspec URL, atomic commits, background upload) and restores the
complete training state, so that an interrupted run ends bitwise equal to an uninterrupted one.

This module is the Keras hook glue only; the state it restores and saves is a
:class:`trainer.training_state.WorkerTrainingState` (the split tf-keras makes between its
``BackupAndRestore`` and ``WorkerTrainingState``).

Save points are step boundaries, taken when everything of the previous step has run (all
callbacks' ``on_train_batch_end`` / ``on_epoch_end``): mid-epoch in ``on_train_batch_begin``,
at an epoch end in the next ``on_epoch_begin``, the last one in ``on_train_end``. So the order
of callbacks in the list does not matter. At a boundary the ranks poll for a preemption notice
(SIGTERM, Ray's drain notice) every ``preemption_poll_steps``; on one, they save, wait for the
commit and stop with :class:`PreemptedError`.

Restore (``restore()``, called by the trainer before it builds the input, else at train
begin): see :mod:`trainer.restore`.
"""

from __future__ import annotations

import atexit
import logging
from dataclasses import fields, replace
from typing import Any

from storage.checkpoints import CheckpointStore
from trainer import (
    env,  # noqa: F401
    keras_hooks,
)
from trainer import state as st
from trainer.backup_options import BackupOptions
from trainer.cluster_context import WorkerContext
from trainer.errors import PreemptedError
from trainer.model_io import CKPT_PREFIX, RANKS_PREFIX, build_optimizer, checkpoint_of
from trainer.preemption import PreemptionFlag
from trainer.training_state import SaveStats, WorkerTrainingState

import tensorflow as tf  # isort: skip

__all__ = [
    "CKPT_PREFIX",
    "RANKS_PREFIX",
    "BackupAndRestore",
    "BackupOptions",
    "build_optimizer",
    "checkpoint_of",
]

logger = logging.getLogger(__name__)


class BackupAndRestore(tf.keras.callbacks.Callback):
    """Exact, preemption-safe backup to any fsspec URL.

    Args (as tf.keras.callbacks.BackupAndRestore):
      backup_dir: the run URL (``file://``, ``s3://``, ``memory://``, a local path...).
      save_freq: ``"epoch"`` or an int N: save every N global steps (in addition to epoch ends
        when ``options.save_at_epoch_end``).
      delete_checkpoint: delete the run's checkpoints when training finishes (the spotrain
        trainer passes False: the final checkpoint is the run's result).
      save_before_preemption: poll for preemption every step (when preemption_poll_steps is 0).
    Keyword-only: ``options`` (BackupOptions) or any BackupOptions field; ``worker`` (rank,
    world size, Ray calls), ``store`` (a CheckpointStore, for tests).
    """

    def __init__(
        self,
        backup_dir: str,
        save_freq: str | int = "epoch",
        delete_checkpoint: bool = True,
        save_before_preemption: bool = False,
        *,
        options: BackupOptions | None = None,
        worker: WorkerContext | None = None,
        store: CheckpointStore | None = None,
        **option_overrides: Any,
    ) -> None:
        super().__init__()
        if save_freq != "epoch" and (
            not isinstance(save_freq, int) or isinstance(save_freq, bool) or save_freq <= 0
        ):
            raise ValueError(
                f"Invalid value for argument `save_freq`. Received: save_freq={save_freq}. "
                "Expected either 'epoch' or an integer value > 0"
            )
        known = {f.name for f in fields(BackupOptions)}
        bad = sorted(set(option_overrides) - known)
        if bad:
            raise TypeError(f"unknown BackupAndRestore option(s) {bad}; known: {sorted(known)}")
        self.options = replace(options or BackupOptions(), **option_overrides)
        self.backup_dir = backup_dir
        self.save_freq = save_freq
        self.delete_checkpoint = delete_checkpoint
        self.save_before_preemption = save_before_preemption
        self.worker = worker or WorkerContext.detect()
        self.state = WorkerTrainingState(backup_dir, self.options, self.worker, store=store)
        self.flag = PreemptionFlag()
        self._supports_tf_logs = True
        self._first_epoch_begin = True

    # ------------------------------------------------------------------ read-only views
    @property
    def store(self) -> CheckpointStore:
        return self.state.store

    @property
    def stats(self) -> SaveStats:
        return self.state.stats

    @property
    def restored_state(self) -> dict[str, Any] | None:
        return self.state.restored_state

    @property
    def initial_epoch(self) -> int:
        return self.state.initial_epoch

    @property
    def initial_step(self) -> int:
        return self.state.initial_step

    @property
    def initial_global_step(self) -> int:
        return self.state.initial_global_step

    @property
    def global_step(self) -> int:
        """Global steps completed so far (restored ones included)."""
        return self.state.global_step

    @property
    def history(self) -> list[dict[str, Any]]:
        """The metrics history: one ``{"epoch", "logs"}`` entry per finished epoch."""
        return self.state.history

    @property
    def last_committed_step(self) -> int | None:
        return self.state.last_committed_step

    @property
    def _save_at_epoch_end(self) -> bool:
        if self.options.save_at_epoch_end is None:
            return self.save_freq == "epoch"
        return self.options.save_at_epoch_end

    @property
    def _poll_steps(self) -> int:
        if self.options.preemption_poll_steps:
            return self.options.preemption_poll_steps
        return 1 if self.save_before_preemption else 0

    def restore(self) -> dict[str, Any] | None:
        """Restore the newest valid committed state into the model (idempotent, a collective:
        every rank calls it). Returns the restored JSON state, or None for a fresh run."""
        return self.state.restore(self.model)

    # ------------------------------------------------------------------ keras hooks
    def on_train_begin(self, logs: Any = None) -> None:
        others = keras_hooks.calling_callback_list(depth=2)
        if others is None:
            logger.warning(
                "BackupAndRestore could not see the other callbacks; their state is not saved"
            )
            others = []
        self.state.track_callbacks([cb for cb in others if cb is not self])
        self.restore()
        self.state.start(int(self.params.get("steps") or 0) if self.params else 0)
        keras_hooks.install_resume_point(self.model, self.initial_epoch, self.initial_step)
        self._first_epoch_begin = True
        if self._poll_steps:
            self.flag.install()
        if self.options.async_upload and self.worker.is_chief and self.state.start_async_commits():
            # fit does not call back on an exception: finish a pending upload before the
            # interpreter exits (the committer thread is a daemon)
            atexit.register(self._finish_at_exit)

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self.state.begin_epoch(epoch)
        if self._first_epoch_begin:
            self._first_epoch_begin = False
            self.state.apply_callback_states()
            self.state.restore_epoch_metrics(epoch)
            return
        self._boundary(epoch * self.state.steps_per_epoch, epoch, 0, epoch_end=True)

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if batch > 0:
            epoch = self.state.epoch
            self._boundary(
                epoch * self.state.steps_per_epoch + batch, epoch, batch, epoch_end=False
            )

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.state.end_batch(batch)

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        self.state.record_epoch(epoch, logs)

    def on_train_end(self, logs: Any = None) -> None:
        try:
            self.state.finish(delete_checkpoints=self.delete_checkpoint)
        finally:
            self.close()

    def _finish_at_exit(self) -> None:
        try:
            self.close(wait=True)
        except Exception as exc:  # at interpreter exit: log, nothing else can be done
            logger.error("%s last upload failed at exit: %s", self.state.log_prefix(), exc)

    def close(self, wait: bool = True) -> None:
        """Finish (or abandon) background uploads and undo process hooks. Idempotent."""
        if self.model is not None:
            keras_hooks.remove_resume_point(self.model)
        self.flag.uninstall()
        atexit.unregister(self._finish_at_exit)
        self.state.close(wait)

    # ------------------------------------------------------------------ save decision
    def _boundary(self, g: int, epoch: int, step: int, epoch_end: bool) -> None:
        if not self.state.reach(g):
            return
        reason = self._poll(g)
        if reason:
            self.state.emergency_save(g, epoch, step, reason)
            raise PreemptedError(g, reason)
        periodic = isinstance(self.save_freq, int) and g % self.save_freq == 0
        if periodic or (epoch_end and self._save_at_epoch_end):
            self.state.save(g, epoch, step, finished=False, wait=False)

    def _poll(self, g: int) -> str:
        k = self._poll_steps
        if not k or g % k:
            return ""
        info = self.worker.preemption_notice()  # Ray: a barrier, every rank at the same steps
        local = "SIGTERM" if self.flag.is_set() else ""
        if info is not None and self.state.note_notice(str(info)):
            local = local or "ray-preemption-notice"
        if st.any_rank(self.model.distribute_strategy, bool(local)):
            return local or "peer-notice"
        return ""
