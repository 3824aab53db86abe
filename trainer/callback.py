"""``BackupAndRestore``: a drop-in for ``tf.keras.callbacks.BackupAndRestore`` that stores
through spotrain's storage (any fsspec URL, atomic commits, background upload) and restores the
complete training state, so that an interrupted run ends bitwise equal to an uninterrupted one.

Save points are step boundaries, taken when everything of the previous step has run (all
callbacks' ``on_train_batch_end`` / ``on_epoch_end``): mid-epoch in ``on_train_batch_begin``,
at an epoch end in the next ``on_epoch_begin``, the last one in ``on_train_end``. So the order
of callbacks in the list does not matter.

A save: every rank gathers its per-rank variable copies (a collective) and writes a
``tf.train.Checkpoint`` (model incl. RandomGenerator state, optimizer incl. iterations) to a
local temp dir (every rank must: reading ON_READ variables is a collective); only the chief's
directory is committed, by default by a background :class:`storage.committer.AsyncCommitter`.

Restore (``restore()``, called by the trainer before it builds the input, else at train
begin): rank 0 picks the newest valid committed step (falling back past corrupt ones) and
broadcasts it; every rank restores it; the ranks then compare a checksum of their variables.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np

from storage.checkpoints import CheckpointStore, StoreOptions
from storage.committer import AsyncCommitter
from storage.errors import NoValidCheckpointError, SpotrainError, TransientStorageError
from trainer import (
    env,  # noqa: F401
    keras_hooks,
)
from trainer import state as st
from trainer.cluster_context import WorkerContext
from trainer.constants import (
    DEFAULT_COMMIT_TIMEOUT_S,
    DEFAULT_LOCAL_TMP_DIR,
    DEFAULT_PREEMPTION_POLL_STEPS,
)
from trainer.errors import (
    JobSpecError,
    ModelMismatchError,
    PreemptedError,
    ReplicaDivergenceError,
    TrainerError,
)
from trainer.preemption import PreemptionFlag

import tensorflow as tf  # isort: skip

logger = logging.getLogger(__name__)

STATE_FORMAT = 1
CKPT_PREFIX = "ckpt"  # tf.train.Checkpoint of model + optimizer
RANKS_PREFIX = "ranks"  # per-rank copies of ON_READ variables (TF checkpoint bundle)


@dataclass(frozen=True)
class BackupOptions:
    """spotrain options of :class:`BackupAndRestore` (beyond the tf.keras arguments).

    storage_options: fsspec options of the backup URL (credentials, endpoint).
    keep_last / keep_every: retention after each commit (keep_last=0 keeps all).
    async_upload: commit in the background; a step is blocked only for the local write.
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
    """

    storage_options: Mapping[str, Any] | None = None
    keep_last: int = 3
    keep_every: int = 0
    async_upload: bool = True
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


@dataclass
class SaveStats:
    saves: int = 0
    blocked_s: float = 0.0
    last_blocked_s: float = 0.0

    @property
    def mean_blocked_s(self) -> float:
        return self.blocked_s / self.saves if self.saves else 0.0


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
        self._store = store
        self._committer: AsyncCommitter | None = None
        self._supports_tf_logs = True
        self.flag = PreemptionFlag()
        self.stats = SaveStats()
        self.initial_epoch = 0
        self.initial_step = 0
        self.initial_global_step = 0
        self.restored_state: dict[str, Any] | None = None
        self._restored = False
        self._fingerprint: tuple[str, dict[str, Any]] | None = None
        self._history: list[dict[str, Any]] = []
        self._others: list[Any] = []
        self._first_epoch_begin = True
        self._epoch = 0
        self._spe = 0
        self._global_step = 0
        self._last_boundary = 0
        self._last_saved_step: int | None = None
        self._rank_rows: np.ndarray | None = None
        self._n_model_on_read = 0
        self._on_read: list[Any] = []
        self._ckpt: tf.train.Checkpoint | None = None
        self._notice: str | None = None

    # ------------------------------------------------------------------ properties
    @property
    def store(self) -> CheckpointStore:
        if self._store is None:
            self._store = CheckpointStore(
                self.backup_dir, self.options.storage_options, self.options.store_options
            )
        return self._store

    @property
    def last_committed_step(self) -> int | None:
        if self._committer is not None:
            return self._committer.last_committed_step
        return self._last_saved_step

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

    def _log_prefix(self) -> str:
        return f"[run={self.store.url} rank={self.worker.rank} step={self._global_step}]"

    @property
    def _strategy(self) -> tf.distribute.Strategy:
        return self.model.distribute_strategy

    # ------------------------------------------------------------------ restore
    def _prepare(self) -> None:
        """Create optimizer slots and compiled metrics now, so restore can fill them."""
        model = self.model
        if not getattr(model, "_is_compiled", False) or model.optimizer is None:
            raise TrainerError(
                "the model is not compiled; call model.compile(optimizer=..., loss=...) in "
                "build_model before returning it"
            )
        if not model.built:
            raise TrainerError(
                "the model is not built (its variables do not exist yet); give it an Input "
                "layer or an input_shape, or call model.build(...) in build_model"
            )
        with self._strategy.scope():
            build_optimizer(model)
            st.build_compiled_containers(model, self.options.element_spec)
        self._on_read = [v for v in model.variables if st.is_on_read(v)]
        self._n_model_on_read = len(self._on_read)
        seen = {id(v) for v in self._on_read}
        for v in st.metric_variables(model):
            if id(v) not in seen:
                self._on_read.append(v)
                seen.add(id(v))
        self._ckpt = checkpoint_of(model)
        if self._fingerprint is None:
            self._fingerprint = st.fingerprint(model)

    def restore(self) -> dict[str, Any] | None:
        """Restore the newest valid committed state into the model (idempotent, a collective:
        every rank calls it). Returns the restored JSON state, or None for a fresh run."""
        if self._restored:
            return self.restored_state
        self._prepare()
        started = time.perf_counter()
        started_at = time.time()
        tmp = tempfile.mkdtemp(prefix="spotrain-restore-", dir=self.options.local_tmp_dir or None)
        try:
            state = self._download_agreed(tmp)
            if state is not None:
                self._apply_checkpoint(tmp, state)
            self._check_replicas_agree()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        self._restored = True
        self.restored_state = state
        if state is not None:
            self.initial_epoch = int(state["epoch"])
            self.initial_step = int(state["step_in_epoch"])
            self.initial_global_step = int(state["global_step"])
            self._history = list(st.from_json_value(state.get("history", [])))
            self._last_saved_step = self.initial_global_step
            self._notice = state.get("preemption_notice")
            logger.info(
                "%s restored step %d (epoch %d, step in epoch %d)",
                self._log_prefix(),
                self.initial_global_step,
                self.initial_epoch,
                self.initial_step,
            )
            if self.worker.is_chief:
                with contextlib.suppress(SpotrainError):
                    self.store.record.append_event(
                        "restore",
                        step=self.initial_global_step,
                        epoch=self.initial_epoch,
                        step_in_epoch=self.initial_step,
                        world_size=self.worker.world_size,
                        saved_by_world_size=state.get("world_size"),
                        seconds=round(time.perf_counter() - started, 3),
                        started_at=started_at,
                        **{f"{k}_at": v for k, v in self.worker.phase_times.items()},
                    )
        self._global_step = self._last_boundary = self.initial_global_step
        return state

    def _download_agreed(self, tmp: str) -> dict[str, Any] | None:
        """Rank 0 chooses (and verifies) the step; the others download that same step."""
        choice: dict[str, Any] = {"step": None}
        state = None
        if self.worker.is_chief:
            try:
                manifest = self.store.restore(tmp)
                choice["step"] = manifest.step
                state = dict(manifest.state)
            except NoValidCheckpointError as exc:
                if self.store.committed_steps():
                    choice["error"] = str(exc)
            except SpotrainError as exc:  # told to every rank, so all stop the same way
                choice["error"] = str(exc)
                choice["retryable"] = exc.retryable
        choice = self.worker.broadcast_from_rank_zero(choice)
        if choice.get("error"):
            if choice.get("retryable"):
                raise TransientStorageError(choice["error"], self.store.url)
            raise NoValidCheckpointError(choice["error"], self.store.url)
        if choice["step"] is None:
            return None
        if not self.worker.is_chief:
            manifest = self.store.restore(tmp, step=choice["step"])
            if manifest.step != choice["step"]:
                raise NoValidCheckpointError(
                    f"rank {self.worker.rank} could not read step {choice['step']} that rank 0 "
                    f"restored (got {manifest.step}); check that every worker reaches the same "
                    "storage",
                    self.store.url,
                )
            state = dict(manifest.state)
        return state

    def _apply_checkpoint(self, tmp: str, state: dict[str, Any]) -> None:
        assert self._fingerprint is not None
        current, detail = self._fingerprint
        saved = str(state.get("fingerprint", ""))
        if saved != current:
            raise ModelMismatchError(self.store.url, saved, current, _diff(state, detail))
        gbs = self.options.global_batch_size
        if gbs and state.get("global_batch_size") and state["global_batch_size"] != gbs:
            raise JobSpecError(
                "global_batch_size",
                gbs,
                f"the run was started with global_batch_size={state['global_batch_size']}; "
                "resume with that value, or start a fresh run (new name)",
            )
        assert self._ckpt is not None
        self._ckpt.read(os.path.join(tmp, CKPT_PREFIX)).assert_existing_objects_matched()
        reader = tf.train.load_checkpoint(os.path.join(tmp, RANKS_PREFIX))
        saved_world = int(state.get("world_size", 1))
        if saved_world == self.worker.world_size:
            row = reader.get_tensor(f"rank/{self.worker.rank}")
        else:
            logger.warning(
                "%s world size changed %d -> %d: per-rank metric totals are summed into rank 0 "
                "and batch-norm moving statistics averaged; the sample order is unchanged",
                self._log_prefix(),
                saved_world,
                self.worker.world_size,
            )
            rows = np.stack([reader.get_tensor(f"rank/{r}") for r in range(saved_world)])
            model_part = st.flatten_locals(self._on_read[: self._n_model_on_read])
            n = model_part.size
            metric_part = rows[:, n:].sum(axis=0) if self.worker.is_chief else rows[0, n:] * 0
            row = np.concatenate([model_part, metric_part])
        st.assign_locals(self._on_read, row)
        self._rank_rows = row

    def _check_replicas_agree(self) -> None:
        digest = st.variables_digest(self.model)
        rows = st.gather_rows(self._strategy, st.digest_to_row(digest))
        digests = [st.row_to_digest(r) for r in rows]
        if len(set(digests)) > 1:
            raise ReplicaDivergenceError(digests)

    # ------------------------------------------------------------------ keras hooks
    def on_train_begin(self, logs: Any = None) -> None:
        others = keras_hooks.calling_callback_list(depth=2)
        if others is None:
            logger.warning(
                "BackupAndRestore could not see the other callbacks; their state is not saved"
            )
            others = []
        self._others = [cb for cb in others if cb is not self]
        self.restore()
        self._spe = int(self.params.get("steps") or 0) if self.params else 0
        if not self._spe:
            raise TrainerError(
                "steps per epoch is unknown; pass steps_per_epoch to fit (the spotrain trainer "
                "does) so the position in an epoch can be saved"
            )
        saved_spe = (self.restored_state or {}).get("steps_per_epoch")
        if saved_spe and saved_spe != self._spe:
            raise JobSpecError(
                "steps_per_epoch",
                self._spe,
                f"the run was saved with {saved_spe} steps per epoch; the dataset or the global "
                "batch size changed — restore them or start a fresh run (new name)",
            )
        keras_hooks.install_resume_point(self.model, self.initial_epoch, self.initial_step)
        self._first_epoch_begin = True
        if self._poll_steps:
            self.flag.install()
        if self.options.async_upload and self.worker.is_chief and self._committer is None:
            self._committer = AsyncCommitter(self.store)
            # fit does not call back on an exception: finish a pending upload before the
            # interpreter exits (the committer thread is a daemon)
            atexit.register(self._finish_at_exit)

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._epoch = epoch
        if self._first_epoch_begin:
            self._first_epoch_begin = False
            self._apply_callback_states()
            if epoch == self.initial_epoch and self.initial_step and self._rank_rows is not None:
                # fit reset the metrics right before this call: give back the partial epoch
                n = sum(int(np.prod(v.shape)) for v in self._on_read[: self._n_model_on_read])
                st.assign_locals(self._on_read[self._n_model_on_read :], self._rank_rows[n:])
            return
        self._boundary(epoch * self._spe, epoch, 0, epoch_end=True)

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        if batch > 0:
            self._boundary(self._epoch * self._spe + batch, self._epoch, batch, epoch_end=False)

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._global_step = self._epoch * self._spe + batch + 1

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        # Keras gives callbacks with and without tf-logs support different dicts, and others
        # (ReduceLROnPlateau adds "lr") may run later: the History callback is read at save time.
        if self._history_cb() is None:
            self._history.append(
                {"epoch": epoch, "logs": {k: _py(v) for k, v in (logs or {}).items()}}
            )

    def _history_cb(self) -> Any:
        for cb in self._others:
            if isinstance(cb, tf.keras.callbacks.History):
                return cb
        return None

    def _history_entries(self) -> list[dict[str, Any]]:
        history = self._history_cb()
        if history is None:
            return self._history
        entries = []
        for i, epoch in enumerate(getattr(history, "epoch", [])):
            logs = {k: _py(v[i]) for k, v in history.history.items() if i < len(v)}
            entries.append({"epoch": int(epoch), "logs": logs})
        return entries

    def on_train_end(self, logs: Any = None) -> None:
        try:
            g = self._global_step
            finished_before = bool((self.restored_state or {}).get("finished"))
            if g > self._last_boundary or not finished_before:
                self._save(g, g // self._spe, g % self._spe, finished=True, wait=True)
            if self.delete_checkpoint and self.worker.is_chief:
                for step in self.store.committed_steps():
                    self.store.delete_step(step)
        finally:
            self.close()

    def _finish_at_exit(self) -> None:
        try:
            self.close(wait=True)
        except Exception as exc:  # at interpreter exit: log, nothing else can be done
            logger.error("%s last upload failed at exit: %s", self._log_prefix(), exc)

    def close(self, wait: bool = True) -> None:
        """Finish (or abandon) background uploads and undo process hooks. Idempotent."""
        if self.model is not None:
            keras_hooks.remove_resume_point(self.model)
        self.flag.uninstall()
        committer, self._committer = self._committer, None
        if committer is not None:
            atexit.unregister(self._finish_at_exit)
            if wait:
                committer.close(self.options.commit_timeout_s)
            else:
                with contextlib.suppress(Exception):
                    committer.close(0.0)

    # ------------------------------------------------------------------ state
    def _apply_callback_states(self) -> None:
        state = self.restored_state or {}
        saved = state.get("callbacks") or {}
        keys = st.callback_keys(self._others)
        for key, cb in zip(keys, self._others, strict=True):
            if type(cb).__name__ == "History":
                self._prefill_history(cb)
            elif key in saved and saved[key] is not None:
                st.set_callback_state(cb, saved[key])
        for key in saved:
            if key not in keys:
                logger.warning("%s saved state of callback %s has no callback now", "", key)

    def _prefill_history(self, history: Any) -> None:
        history.epoch = []
        history.history = {}
        for entry in self._history:
            history.epoch.append(entry["epoch"])
            for k, v in entry["logs"].items():
                history.history.setdefault(k, []).append(v)

    def _collect_state(self, g: int, epoch: int, step: int, finished: bool) -> dict[str, Any]:
        assert self._fingerprint is not None
        callbacks = {}
        for key, cb in zip(st.callback_keys(self._others), self._others, strict=True):
            cb_state = st.get_callback_state(cb, strict=self.options.strict_callback_state)
            if cb_state is not None:
                callbacks[key] = cb_state
        state = {
            "format": STATE_FORMAT,
            "epoch": epoch,
            "step_in_epoch": step,
            "global_step": g,
            "steps_per_epoch": self._spe,
            "samples_seen": g * self.options.global_batch_size,
            "world_size": self.worker.world_size,
            "global_batch_size": self.options.global_batch_size,
            "seed": self.options.seed,
            "finished": finished,
            "fingerprint": self._fingerprint[0],
            "fingerprint_detail": self._fingerprint[1],
            "callbacks": callbacks,
            "history": self._history_entries(),
            "rank_state": {"n_model": self._n_model_on_read, "n_vars": len(self._on_read)},
            "saved_at": time.time(),
            "preemption_notice": self._notice,
        }
        state.update(self.options.extra_state)
        return st.to_json_value(state)

    # ------------------------------------------------------------------ saving
    def _boundary(self, g: int, epoch: int, step: int, epoch_end: bool) -> None:
        if g <= self._last_boundary:
            return
        self._last_boundary = g
        self._global_step = g
        reason = self._poll(g)
        if reason:
            self._save(g, epoch, step, finished=False, wait=True)
            if self.worker.is_chief:
                with contextlib.suppress(SpotrainError):
                    self.store.record.append_event("preemption", step=g, reason=reason)
            logger.warning(
                "%s preempted (%s): state committed, stopping", self._log_prefix(), reason
            )
            raise PreemptedError(g, reason)
        periodic = isinstance(self.save_freq, int) and g % self.save_freq == 0
        if periodic or (epoch_end and self._save_at_epoch_end):
            self._save(g, epoch, step, finished=False, wait=False)

    def _poll(self, g: int) -> str:
        k = self._poll_steps
        if not k or g % k:
            return ""
        info = self.worker.preemption_notice()  # Ray: a barrier, every rank at the same steps
        local = "SIGTERM" if self.flag.is_set() else ""
        if info is not None:
            notice = str(info)
            if notice == (self.restored_state or {}).get("preemption_notice"):
                # this attempt already resumed from the save made for this very notice
                logger.debug("%s notice already handled: %s", self._log_prefix(), notice)
            else:
                self._notice = notice
                local = local or "ray-preemption-notice"
        if st.any_rank(self._strategy, bool(local)):
            return local or "peer-notice"
        return ""

    def _save(self, g: int, epoch: int, step: int, finished: bool, wait: bool) -> None:
        t0 = time.perf_counter()
        state = self._collect_state(g, epoch, step, finished)
        rows = st.gather_rows(self._strategy, st.flatten_locals(self._on_read))
        local_dir = tempfile.mkdtemp(
            prefix=f"spotrain-{g:012d}-", dir=self.options.local_tmp_dir or None
        )
        assert self._ckpt is not None
        self._ckpt.write(os.path.join(local_dir, CKPT_PREFIX))  # every rank (collective reads)
        ok = True
        if not self.worker.is_chief:
            shutil.rmtree(local_dir, ignore_errors=True)
        else:
            tf.raw_ops.SaveV2(
                prefix=os.path.join(local_dir, RANKS_PREFIX),
                tensor_names=[f"rank/{r}" for r in range(rows.shape[0])],
                shape_and_slices=[""] * rows.shape[0],
                tensors=[tf.constant(r) for r in rows],
            )
            if self._committer is not None:
                self._committer.submit(g, local_dir, state, on_done=self._after_commit)
            else:
                try:
                    manifest = self.store.commit(g, local_dir, state)
                finally:
                    shutil.rmtree(local_dir, ignore_errors=True)
                self._after_commit(manifest)
        blocked = time.perf_counter() - t0
        self.stats.saves += 1
        self.stats.blocked_s += blocked
        self.stats.last_blocked_s = blocked
        self._last_saved_step = g
        if wait:
            error: BaseException | None = None
            if self._committer is not None:
                try:
                    self._committer.wait_until_finished(self.options.commit_timeout_s)
                except BaseException as exc:  # re-raised below, after the ranks agreed
                    error, ok = exc, False
            # every rank waits for the chief's commit; all fail together if it failed
            if not st.any_rank(self._strategy, not ok) and error is None:
                return
            if error is not None:
                raise error
            raise TrainerError(f"the chief could not commit step {g}; see the chief's log")

    def _after_commit(self, manifest: Any) -> None:
        if self.options.keep_last:
            try:
                self.store.apply_retention(self.options.keep_last, self.options.keep_every)
            except SpotrainError as exc:
                logger.warning("retention failed (will retry after the next commit): %s", exc)


def checkpoint_of(model: tf.keras.Model) -> tf.train.Checkpoint:
    """What one checkpoint holds: model, optimizer, and the random layers' generators."""
    return tf.train.Checkpoint(
        model=model, optimizer=model.optimizer, rng=st.random_generators(model)
    )


def build_optimizer(model: tf.keras.Model) -> None:
    """Create the optimizer's slot variables now (Keras creates them in the first step)."""
    opt = model.optimizer
    if isinstance(opt, tf.keras.optimizers.Optimizer):
        if not getattr(opt, "_built", False):
            opt.build(model.trainable_variables)
    elif hasattr(opt, "_create_all_weights"):  # legacy optimizer
        opt._create_all_weights(model.trainable_variables)


def _py(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return np.asarray(value).item()
    if isinstance(value, tf.Tensor):
        return value.numpy().item()
    return value


def _diff(state: dict[str, Any], detail: dict[str, Any]) -> str:
    saved = state.get("fingerprint_detail") or {}
    for key in ("layers", "variables", "optimizer"):
        if saved.get(key) != st.to_json_value(detail.get(key)):
            return f"{key} differ"
    return ""
