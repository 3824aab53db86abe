"""``BackupAndRestore``: a drop-in for ``tf.keras.callbacks.BackupAndRestore`` that stores
through spotrain's storage (any fsspec URL, atomic commits, background upload) and restores the
complete training state, so that an interrupted run ends bitwise equal to an uninterrupted one.

This module is the Keras hook glue only; the state it restores and saves is a
:class:`trainer.training_state.WorkerTrainingState` (the split tf-keras makes between its
``BackupAndRestore`` and ``WorkerTrainingState``).

Save points are step boundaries, taken when everything of the previous step has run: right
after every callback's ``on_train_batch_end`` / ``on_epoch_end`` returned (spotrain wraps fit's
CallbackList for that, :func:`trainer.keras_hooks.guard_hooks`; without it, at the next
``on_train_batch_begin`` / ``on_epoch_begin``), the last one in ``on_train_end``. So the order
of callbacks in the list does not matter. When a callback raises in one of those end hooks,
the boundary the step reached is saved (as far as the callbacks ran) and the commit awaited
before the exception goes on: a retry continues after that step or epoch, as with tf-keras.
A notice (SIGTERM, Ray's drain notice) is seen at any moment by a watcher thread
(:mod:`trainer.notice_watcher`); the ranks agree on it before the first step (a notice then ends
the attempt at once, with nothing to save) and at the boundaries of their poll schedule (every
``preemption_poll_steps``, sooner when steps are long); on one, they save, wait for the commit
and stop with :class:`PreemptedError`.

Restore (``restore()``, called by the trainer before it builds the input, else at train
begin; again at the start of every later ``fit`` with the same instance): see
:mod:`trainer.restore`.
"""

from __future__ import annotations

import atexit
import logging
import time
from dataclasses import fields, replace
from typing import Any

import numpy as np

from storage.checkpoints import CheckpointStore
from storage.errors import SpotrainError
from trainer import (
    env,  # noqa: F401
    keras_hooks,
)
from trainer.backup_options import BackupOptions
from trainer.cluster_context import WorkerContext
from trainer.errors import PreemptedError
from trainer.model_io import CKPT_PREFIX, RANKS_PREFIX, build_optimizer, checkpoint_of
from trainer.notice_watcher import NoticeWatcher, PollSchedule, agree
from trainer.preemption import PreemptionFlag
from trainer.saved_state import SaveStats
from trainer.training_state import WorkerTrainingState

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
    """Exact, preemption-safe backup to any fsspec URL; a drop-in for
    ``tf.keras.callbacks.BackupAndRestore`` in your own ``fit``.

    Args (as tf.keras.callbacks.BackupAndRestore):
      backup_dir: the run URL (``file://``, ``s3://``, ``memory://``, a local path...).
      save_freq: ``"epoch"``, an int N: save every N global steps (in addition to epoch ends
        when ``options.save_at_epoch_end``), or False with ``save_before_preemption=True``.
        Stricter than tf-keras: ``"batch"`` or a float are refused.
      delete_checkpoint: when a fit finishes, delete the backup (the dir is left empty; the
        spotrain trainer passes False: the final checkpoint is the run's result).
      save_before_preemption: poll for preemption every step (when preemption_poll_steps is 0).
    Keyword-only: ``options`` (BackupOptions) or any BackupOptions field; ``worker`` (rank,
    world size, Ray calls), ``store`` (a CheckpointStore, for tests).

    Example, plain Keras (``import trainer.callback`` before TensorFlow: it sets
    ``TF_USE_LEGACY_KERAS=1``); the retry resumes after the last saved epoch, with the same
    or a new callback, the same or a recompiled optimizer::

        import numpy as np
        from trainer.callback import BackupAndRestore
        import tensorflow as tf

        class Interrupt(tf.keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch == 4:
                    raise RuntimeError("interrupted")

        backup = BackupAndRestore(
            "s3://my-bucket/backups/run-1",  # or file://, gs://, memory://, a path
            storage_options={"endpoint_url": "http://127.0.0.1:8333"},  # fsspec (s3fs) options
        )
        model = tf.keras.Sequential([tf.keras.layers.Dense(10)])
        model.compile(tf.keras.optimizers.SGD(), loss="mse")
        x, y = np.arange(100.0).reshape(5, 20) / 100, np.zeros((5, 10))
        try:
            model.fit(x, y, epochs=10, batch_size=1, callbacks=[backup, Interrupt()])
        except RuntimeError:
            history = model.fit(x, y, epochs=10, batch_size=1, callbacks=[backup])
        assert len(history.history["loss"]) == 5  # epochs 5..9

    Differences from tf-keras: spotrain needs the steps per epoch (pass ``steps_per_epoch`` to
    ``fit`` when the input's length is unknown); a mid-epoch resume in a plain ``fit`` starts
    the epoch's data from its beginning, as tf-keras does (the spotrain trainer's managed
    input resumes at the exact example). The on-disk layout is spotrain's own:
    ``<backup_dir>/checkpoints/<step:012d>/`` holds ``ckpt.*``, a ``tf.train.Checkpoint`` of
    ``model=``, ``optimizer=`` and ``rng=`` (readable without spotrain:
    ``tf.train.Checkpoint(model=model).read(prefix).expect_partial()``), ``ranks.*`` (per-rank
    metric and batch-norm copies) and ``MANIFEST.json`` (the commit: files, checksums, state).
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
        if save_freq is False:
            if not save_before_preemption:
                raise ValueError("Either `save_freq` or `save_before_preemption` must be set.")
        elif save_freq != "epoch" and (type(save_freq) is not int or save_freq <= 0):
            raise ValueError(
                f"Invalid value for argument `save_freq`. Received: save_freq={save_freq!r}. "
                "Expected either 'epoch', an integer value > 0 (save every N steps), or False "
                "with save_before_preemption=True (spotrain refuses 'batch' and floats)"
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
        # the worker's watcher when the trainer started one at the worker's start, else our own
        shared = getattr(self.worker, "notice_watcher", None)
        self.watcher: NoticeWatcher = shared or NoticeWatcher(self.worker)
        self._owns_watcher = shared is None
        self.watcher.flag = self.flag
        self._schedule = PollSchedule(0)
        self._supports_tf_logs = True
        self._first_epoch_begin = True
        self._fits = 0  # fits begun with this instance: each later one restores again
        self._guarded: Any = None  # the CallbackList whose end hooks are wrapped
        self._epoch_logs: tuple[int, Any] = (-1, None)

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
        """Restore the newest valid committed state into the model (idempotent within one
        fit, a collective: every rank calls it). Returns the restored JSON state, or None for
        a fresh run."""
        return self.state.restore(self.model)

    # ------------------------------------------------------------------ keras hooks
    def on_train_begin(self, logs: Any = None) -> None:
        if self._fits:  # a later fit with this instance (a retry): restore again, afresh
            self.close(wait=True)
            self.state = WorkerTrainingState(
                self.backup_dir, self.options, self.worker, store=self.state.store
            )
        self._fits += 1
        owner = keras_hooks.calling_callback_list_object(depth=2)
        if owner is None:
            logger.warning(
                "BackupAndRestore could not see the other callbacks; their state is not saved"
            )
        others = list(owner.callbacks) if owner is not None else []
        self.state.track_callbacks([cb for cb in others if cb is not self])
        spec = self.options.element_spec
        self.state.restore(self.model, spec if spec is not None else keras_hooks.fit_element_spec())
        self.state.start(int(self.params.get("steps") or 0) if self.params else 0)
        keras_hooks.install_resume_point(self.model, self.initial_epoch, self.initial_step)
        if owner is not None:
            keras_hooks.guard_hooks(owner, self._after_end_hook, self._on_end_hook_error)
            self._guarded = owner
        self._first_epoch_begin = True
        self._schedule = PollSchedule(self._poll_steps)
        if self._poll_steps:
            self.flag.install()
            self.watcher.ignore((self.restored_state or {}).get("preemption_notice"))
            self.watcher.start()
            reason, _, _ = self._agree(0.0)
            self._schedule.begin(self.global_step)
            if reason:  # nothing trained in this attempt yet: nothing to save
                self.state.end_before_training(reason)
                self.close(wait=True)  # fit calls no end hook after an error here
                raise PreemptedError(self.global_step, reason)
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
        self._epoch_logs = (epoch, logs)
        self.state.record_epoch(epoch, logs)

    def _after_end_hook(self, hook: str, index: int, logs: Any) -> None:
        """Every callback's end hook ran: the step boundary, unless training ends here (then
        ``on_train_end`` saves the final state)."""
        spe = self.state.steps_per_epoch
        if self.model.stop_training:
            return
        if hook == "on_train_batch_end" and index + 1 < spe:
            epoch = self.state.epoch
            self._boundary(epoch * spe + index + 1, epoch, index + 1, epoch_end=False)
        elif hook == "on_epoch_end" and index + 1 < int(self.params.get("epochs") or 0):
            self._boundary((index + 1) * spe, index + 1, 0, epoch_end=True)

    def _on_end_hook_error(self, hook: str, exc: BaseException, index: int, logs: Any) -> None:
        """A callback raised in an end hook: save the boundary this step or epoch reached (the
        collectives are those of the normal boundary), wait for the commit; fit re-raises."""
        if isinstance(exc, tf.errors.OpError | SpotrainError) or not self.state.steps_per_epoch:
            return  # infrastructure (a lost peer: no collectives now) or spotrain's own error
        spe = self.state.steps_per_epoch
        try:
            if hook == "on_train_batch_end":
                if index + 1 >= spe:
                    return  # the epoch's last step: its validation and epoch end did not run
                self.state.end_batch(index)
                epoch = self.state.epoch
                self._boundary(epoch * spe + index + 1, epoch, index + 1, epoch_end=False)
            else:
                if self._epoch_logs[0] != index:  # this callback came after the failing one
                    self.state.record_epoch(index, logs)
                g = (index + 1) * spe
                final = self.model.stop_training or index + 1 >= int(self.params.get("epochs") or 0)
                if not final:
                    self._boundary(g, index + 1, 0, epoch_end=True)
                elif self._periodic(g) or self._save_at_epoch_end:
                    self.state.reach(g)
                    self.state.save(g, index + 1, 0, finished=True, wait=False)
            self.state.wait_for_commit()
        except Exception as save_exc:  # the callback's exception goes on; this one is logged
            logger.error(
                "%s could not save after %s in %s: %s",
                self.state.log_prefix(),
                type(exc).__name__,
                hook,
                save_exc,
            )

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
        if self._guarded is not None:
            keras_hooks.unguard_hooks(self._guarded)
            self._guarded = None
        if self.model is not None:
            keras_hooks.remove_resume_point(self.model)
        self.flag.uninstall()
        if self._owns_watcher:
            self.watcher.stop()
        atexit.unregister(self._finish_at_exit)
        self.state.close(wait)

    # ------------------------------------------------------------------ save decision
    def _boundary(self, g: int, epoch: int, step: int, epoch_end: bool) -> None:
        if not self.state.reach(g):
            return
        saving = self._periodic(g) or (epoch_end and self._save_at_epoch_end)
        started = time.perf_counter()
        # one collective: a save's per-rank rows and, when one is due here, the poll
        reason, rows = self._poll(g, own_rows=self.state.own_rows() if saving else None)
        if reason:
            self.state.emergency_save(g, epoch, step, reason, rows=rows, started=started)
            raise PreemptedError(g, reason)
        if saving:
            self.state.save(g, epoch, step, finished=False, wait=False, rows=rows, started=started)

    def _periodic(self, g: int) -> bool:
        return type(self.save_freq) is int and g % self.save_freq == 0

    def _poll(self, g: int, own_rows: np.ndarray | None = None) -> tuple[str, np.ndarray | None]:
        """At the boundaries of the poll schedule (the same on every rank): the agreed notice
        ("" for none). A save passes ``own_rows`` and gets every rank's back: one collective,
        which is also the poll when one is due at ``g``."""
        due = self._schedule.due(g)
        if own_rows is None and not due:
            return "", None
        step_s = self._schedule.step_seconds(g) if due else 0.0
        reason, slowest_step_s, rows = self._agree(step_s, own_rows, check=due)
        if due:
            self._schedule.polled(g, slowest_step_s)
        return reason, rows

    def _agree(
        self, step_s: float, own_rows: np.ndarray | None = None, check: bool = True
    ) -> tuple[str, float, np.ndarray | None]:
        """One collective: whether any rank saw a notice (this rank's reason, or
        ``"peer-notice"``; "" for none), the slowest rank's ``step_s``, and every rank's
        ``own_rows`` when given; ``check``: look at the notice watcher (else: no notice)."""
        notice = self.watcher.check() if check else None
        local = ""
        if notice is not None and (notice.text is None or self.state.note_notice(notice.text)):
            local = notice.reason
        return agree(self.model.distribute_strategy, local, step_s, own_rows)
