"""``WorkerTrainingState``: one worker's training state, restored and saved as one.

What :class:`trainer.callback.BackupAndRestore`'s Keras hooks drive (tf-keras splits its own
``BackupAndRestore`` the same way, with ``WorkerTrainingState``): the position (epoch, global
step, last step boundary), the restore (:mod:`trainer.restore`), the other callbacks' state and
the metrics history, and the save protocol: every rank gathers its per-rank variable copies and
reads the checkpoint's tensors (collectives); the chief keeps them as an in-memory snapshot that
is written and committed in the background (:mod:`trainer.saving`), followed by retention. A
save for a preemption waits until the commit is durable on every rank.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from storage import events
from storage.checkpoints import CheckpointStore
from storage.errors import SpotrainError, StaleWriterError
from storage.fencing import Fence
from storage.location import RunLocation
from trainer import backup_dir, model_io
from trainer import state as st
from trainer.backup_options import BackupOptions
from trainer.cluster_context import WorkerContext
from trainer.errors import JobSpecError, TrainerError
from trainer.model_io import ModelParts, prepare_model
from trainer.other_callbacks import OtherCallbacks
from trainer.restore import restore_committed
from trainer.saved_state import ManifestPosition, SaveStats, manifest_state
from trainer.saving import Saver

import tensorflow as tf  # isort: skip

logger = logging.getLogger(__name__)


class WorkerTrainingState:
    """Restore / save protocol and position of one worker (every rank holds one).

    ``restore(model)`` first (a collective, idempotent), then ``start(steps_per_epoch)``; the
    hooks report progress (``begin_epoch``, ``end_batch``, ``reach``) and ask for saves;
    ``close()`` finishes background commits.
    """

    def __init__(
        self,
        backup_dir: str,
        options: BackupOptions,
        worker: WorkerContext,
        store: CheckpointStore | None = None,
    ) -> None:
        self.backup_dir = backup_dir
        self.options = options
        self.worker = worker
        self.stats = SaveStats()
        self._store = store
        self._saver = Saver(
            lambda: self.store,
            options,
            worker.is_chief,
            self.stats,
            self._after_commit,
            self._attempt,
        )
        self._model: tf.keras.Model | None = None
        self._parts: ModelParts | None = None
        self._restored = False
        self._restored_state: dict[str, Any] | None = None
        self._rank_row: np.ndarray | None = None
        self._initial = (0, 0, 0)  # epoch, step in epoch, global step
        self._others = OtherCallbacks()
        self._notice: str | None = None
        self._last_saved_step: int | None = None
        self._epoch = 0
        self._spe = 0
        self._global_step = 0
        self._last_boundary = 0
        self._attempt_no: int | None = None

    # ------------------------------------------------------------------ read-only views
    @property
    def store(self) -> CheckpointStore:
        """The run's store; on first use built over the worker's one location of the run
        (``backup_dir`` + ``options.storage_options``), unless one was passed in."""
        if self._store is None:
            location = RunLocation.from_url(self.backup_dir, self.options.storage_options)
            gen = self.options.lease_generation
            self._store = CheckpointStore(
                location,
                options=self.options.store_options,
                fence=None if gen is None else Fence(location, gen),
            )
        return self._store

    @property
    def restored_state(self) -> dict[str, Any] | None:
        """The JSON state this attempt resumed from (None: a fresh run)."""
        return self._restored_state

    @property
    def initial_epoch(self) -> int:
        return self._initial[0]

    @property
    def initial_step(self) -> int:
        return self._initial[1]

    @property
    def initial_global_step(self) -> int:
        return self._initial[2]

    @property
    def epoch(self) -> int:
        return self._epoch

    @property
    def steps_per_epoch(self) -> int:
        return self._spe

    @property
    def global_step(self) -> int:
        """Global steps completed so far (restored ones included)."""
        return self._global_step

    @property
    def last_committed_step(self) -> int | None:
        if self._saver.committer is not None:
            return self._saver.committer.last_committed_step
        return self._last_saved_step

    @property
    def history(self) -> list[dict[str, Any]]:
        """The metrics history: one ``{"epoch", "logs"}`` entry per finished epoch."""
        return list(self._others.history())

    def log_prefix(self) -> str:
        return f"[run={self.store.url} rank={self.worker.rank} step={self._global_step}]"

    def _attempt(self) -> events.AttemptNumber:
        """``{"attempt": n}``: the attempt this worker runs in, as the run record has it (the
        latest ``attempt_start``, written before the workers start), read once; {} if none."""
        if self._attempt_no is None:
            self._attempt_no = 0
            with events.best_effort():
                self._attempt_no = events.current_attempt(self.store.record)
        return {"attempt": self._attempt_no} if self._attempt_no else {}

    # ------------------------------------------------------------------ restore
    def restore(self, model: tf.keras.Model, element_spec: Any = None) -> dict[str, Any] | None:
        """Restore the newest valid committed state into ``model`` (idempotent, a collective:
        every rank calls it). Returns the restored JSON state, or None for a fresh run.

        ``element_spec`` (default ``options.element_spec``): the input's per-example spec, to
        build an unbuilt model and the compiled metrics first."""
        if self._restored:
            return self._restored_state
        backup_dir.wait_for_other(self.store.url, self._saver, self.options.commit_timeout_s)
        self._model = model
        spec = self.options.element_spec if element_spec is None else element_spec
        self._parts = prepare_model(model, spec)
        self.worker.phase_times["model_prepared"] = time.time()
        started = time.perf_counter()
        started_at = time.time()
        state, self._rank_row = restore_committed(
            model,
            self._parts,
            self.store,
            self.worker,
            global_batch_size=self.options.global_batch_size,
            local_tmp_dir=self.options.local_tmp_dir,
            log_prefix=self.log_prefix(),
        )
        self._restored = True
        self._restored_state = state
        if state is not None:
            self._initial = (
                int(state["epoch"]),
                int(state["step_in_epoch"]),
                int(state["global_step"]),
            )
            self._others.restore_history(st.from_json_value(state.get("history", [])))
            self._last_saved_step = self.initial_global_step
            self._notice = state.get("preemption_notice")
            logger.info(
                "%s restored step %d (epoch %d, step in epoch %d)",
                self.log_prefix(),
                self.initial_global_step,
                self.initial_epoch,
                self.initial_step,
            )
            if self.worker.is_chief:
                with events.best_effort():
                    events.write_restore(
                        self.store.record,
                        self.worker.phase_times,
                        step=self.initial_global_step,
                        epoch=self.initial_epoch,
                        step_in_epoch=self.initial_step,
                        world_size=self.worker.world_size,
                        saved_by_world_size=state.get("world_size"),
                        seconds=round(time.perf_counter() - started, 3),
                        started_at=started_at,
                        **self._attempt(),
                    )
        if self.worker.is_chief:
            self._attempt()  # read now: an emergency save later has a deadline
        self._saver.prepare(self._parts.checkpoint)  # the first save then blocks no longer
        self._global_step = self._last_boundary = self.initial_global_step
        return state

    def start(self, steps_per_epoch: int) -> None:
        """Training begins with ``steps_per_epoch`` (fit's ``steps``); it must match the save.
        Sets the model's train counter (fit zeroed it) to the saved one."""
        self._spe = steps_per_epoch
        if not self._spe:
            raise TrainerError(
                "BackupAndRestore needs the number of steps per epoch, and fit does not know "
                "it (the input's length is unknown: a repeated or filtered tf.data.Dataset, a "
                "generator); fix: pass steps_per_epoch=N to model.fit (the spotrain trainer "
                "does)"
            )
        model_io.set_train_counter(self._model, (self._restored_state or {}).get("train_counter"))
        saved_spe = (self._restored_state or {}).get("steps_per_epoch")
        if saved_spe and saved_spe != self._spe:
            raise JobSpecError(
                "steps_per_epoch",
                self._spe,
                f"the run was saved with {saved_spe} steps per epoch; the dataset or the global "
                "batch size changed — restore them or start a fresh run (new name)",
            )

    def track_callbacks(self, callbacks: list[Any]) -> None:
        """The other callbacks of ``fit``, whose state is saved and restored with this one."""
        self._others.track(callbacks)

    def apply_callback_states(self) -> None:
        """Give the tracked callbacks their saved state (History: the saved history)."""
        self._others.apply((self._restored_state or {}).get("callbacks") or {})

    def restore_epoch_metrics(self, epoch: int) -> None:
        """Give back the partial epoch's metric totals (fit reset them right before)."""
        if epoch == self.initial_epoch and self.initial_step and self._rank_row is not None:
            assert self._parts is not None
            model_on_read = self._parts.on_read[: self._parts.n_model_on_read]
            n = sum(int(np.prod(v.shape)) for v in model_on_read)
            st.assign_locals(self._parts.on_read[self._parts.n_model_on_read :], self._rank_row[n:])

    def note_notice(self, notice: str) -> bool:
        """Record a Ray preemption notice; False when this attempt already resumed from the
        save made for this very notice."""
        if notice == (self._restored_state or {}).get("preemption_notice"):
            logger.debug("%s notice already handled: %s", self.log_prefix(), notice)
            return False
        self._notice = notice
        return True

    def end_before_training(self, reason: str) -> None:
        """A notice before this attempt trained a step: nothing to save; the chief records it."""
        if self.worker.is_chief:
            with events.best_effort():
                g, attempt = self._global_step, self._attempt()
                events.write_preemption(self.store.record, step=g, reason=reason, **attempt)
        logger.warning(
            "%s preempted (%s) before training: nothing to save", self.log_prefix(), reason
        )

    # ------------------------------------------------------------------ position
    def begin_epoch(self, epoch: int) -> None:
        self._epoch = epoch

    def end_batch(self, batch: int) -> None:
        self._global_step = self._epoch * self._spe + batch + 1

    def reach(self, g: int) -> bool:
        """Step boundary ``g`` is reached; False when it was already handled."""
        if g <= self._last_boundary:
            return False
        self._last_boundary = g
        self._global_step = g
        return True

    def record_epoch(self, epoch: int, logs: Any) -> None:
        self._others.record_epoch(epoch, logs)

    # ------------------------------------------------------------------ saving
    def start_async_commits(self) -> bool:
        """Commit in the background from now on; True when this call started the committer."""
        return self._saver.start_async()

    def wait_for_commit(self) -> None:
        """Wait (this rank only, no collective) until a background save is durable."""
        self._saver.wait(self.options.commit_timeout_s)

    def own_rows(self) -> np.ndarray:
        """This rank's copies of the ON_READ variables, as a save gathers them."""
        assert self._parts is not None, "restore() first"
        return st.flatten_locals(self._parts.on_read)

    def save(
        self,
        g: int,
        epoch: int,
        step: int,
        finished: bool,
        wait: bool,
        rows: np.ndarray | None = None,
        started: float | None = None,
    ) -> None:
        """Save step ``g`` (a collective: every rank calls it); ``wait``: until it is committed,
        on every rank, which then all fail together if the chief's commit failed. ``rows``:
        every rank's :meth:`own_rows`, when the caller gathered them already (at ``started``,
        a ``perf_counter``: the save's blocked time counts from there)."""
        assert self._model is not None and self._parts is not None, "restore() first"
        strategy = self._model.distribute_strategy
        if started is None:
            started = time.perf_counter()  # the save's blocked time starts here
        state = manifest_state(
            ManifestPosition(g, epoch, step, self._spe, finished),
            self.options,
            self.worker.world_size,
            self._parts,
            self._others,
            model_io.train_counter(self._model),
            self._notice,
        )
        if rows is None:
            rows = st.gather_rows(strategy, self.own_rows())
        ok = True
        error: BaseException | None = None
        try:
            self._saver.save(g, self._parts, state, rows, started)
            self._last_saved_step = g
            if wait:
                self._saver.wait(self.options.commit_timeout_s)
        except BaseException as exc:  # re-raised below, after the ranks agreed
            if not wait:
                raise
            error, ok = exc, False
        if not wait:
            return
        # every rank waits for the chief's commit; all fail together if it failed
        if not st.any_rank(strategy, not ok) and error is None:
            return
        if error is not None:
            raise error
        raise TrainerError(f"the chief could not commit step {g}; see the chief's log")

    def emergency_save(
        self,
        g: int,
        epoch: int,
        step: int,
        reason: str,
        rows: np.ndarray | None = None,
        started: float | None = None,
    ) -> None:
        """Save for a preemption: wait for the commit, record a ``preemption`` event."""
        self.save(g, epoch, step, finished=False, wait=True, rows=rows, started=started)
        if self.worker.is_chief:
            with events.best_effort():
                events.write_preemption(self.store.record, step=g, reason=reason, **self._attempt())
        logger.warning("%s preempted (%s): state committed, stopping", self.log_prefix(), reason)

    def finish(self, delete_checkpoints: bool) -> None:
        """The last save at the end of training (waits for its commit), unless nothing ran
        since a finished state was restored; then optionally delete the run's checkpoints."""
        g = self._global_step
        finished_before = bool((self._restored_state or {}).get("finished"))
        if g > self._last_boundary or not finished_before:
            self.save(g, g // self._spe, g % self._spe, finished=True, wait=True)
        if delete_checkpoints and self.worker.is_chief:
            backup_dir.delete_backup(self.store)

    def close(self, wait: bool = True) -> None:
        """Finish (``wait``) or abandon background saves. Idempotent."""
        self._saver.close(wait, self.options.commit_timeout_s)

    def _after_commit(self, manifest: Any) -> None:
        if self.options.keep_last:
            try:
                self.store.apply_retention(self.options.keep_last, self.options.keep_every)
            except StaleWriterError as exc:  # stale: no more deletes; the next commit stops
                logger.error("%s retention refused: %s", self.log_prefix(), exc)
            except SpotrainError as exc:
                logger.warning("retention failed (will retry after the next commit): %s", exc)
