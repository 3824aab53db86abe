"""One training attempt of a TrainJob on one worker (shared by the Ray worker and run_local)."""

from __future__ import annotations

import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from storage.checkpoints import CheckpointStore
from trainer import device_iterators, env
from trainer.callback import BackupAndRestore, BackupOptions
from trainer.cluster_context import WorkerContext
from trainer.data import DataContext, build_input, build_val_input, unmanaged_input
from trainer.errors import JobSpecError, UserCodeError
from trainer.file_sources import file_input, file_val_input
from trainer.input_store import InputStore
from trainer.job import CallbackSpec, TrainJob, load_entry_point, load_job_entry
from trainer.user_code import user_code

import tensorflow as tf  # isort: skip

logger = logging.getLogger(__name__)

#: Errors of ``fit`` that are the user's (tracing the model: shapes, dtypes, bad arguments).
FIT_USER_ERRORS = (ValueError, TypeError, tf.errors.InvalidArgumentError)


@dataclass
class TrainResult:
    """What one attempt did. ``model`` is the trained model (None when nothing ran)."""

    model: Any
    history: dict[str, list[Any]] = field(default_factory=dict)
    global_step: int = 0
    restored_step: int | None = None
    last_committed_step: int | None = None
    finished: bool = False
    samples_per_s: float = 0.0
    mean_blocked_s: float = 0.0
    saves: int = 0


def make_strategy(job: TrainJob, worker: WorkerContext) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy under Ray (NCCL on GPU, AUTO/ring on CPU); the default
    strategy for a single local worker."""
    if not worker.ray:
        return tf.distribute.get_strategy()
    if not job.use_gpu:
        device_iterators.install()  # else fit's end may wait for tf.data's autotuning thread
    impl = (
        tf.distribute.experimental.CommunicationImplementation.NCCL
        if job.use_gpu
        else tf.distribute.experimental.CommunicationImplementation.AUTO
    )
    return tf.distribute.MultiWorkerMirroredStrategy(
        communication_options=tf.distribute.experimental.CommunicationOptions(implementation=impl)
    )


def build_callbacks(job: TrainJob, specs: Sequence[CallbackSpec]) -> list[Any]:
    out: list[Any] = []
    for i, spec in enumerate(specs):
        kwargs = dict(spec.kwargs)
        with user_code(f"callbacks[{i}] {spec.kind}"):
            if spec.kind == "early_stopping":
                out.append(tf.keras.callbacks.EarlyStopping(**kwargs))
            elif spec.kind == "reduce_lr_on_plateau":
                out.append(tf.keras.callbacks.ReduceLROnPlateau(**kwargs))
            elif spec.kind == "model_checkpoint":
                kwargs.setdefault(
                    "filepath", os.path.join(tempfile.gettempdir(), job.name, "best.weights.h5")
                )
                out.append(tf.keras.callbacks.ModelCheckpoint(**kwargs))
            elif spec.kind == "tensorboard":
                kwargs.setdefault("log_dir", _tensorboard_dir(job))
                out.append(tf.keras.callbacks.TensorBoard(**kwargs))
            elif spec.kind == "custom":
                entry = kwargs.pop("entry")
                factory = load_entry_point(entry, job.working_dir)
                out.append(factory(**kwargs))
            else:  # validated in CallbackSpec
                raise JobSpecError(f"callbacks[{i}]", spec.kind, "unknown kind")
    return out


def _tensorboard_dir(job: TrainJob) -> str:
    if job.run_url.startswith("file://"):
        return os.path.join(job.run_url[len("file://") :], "tensorboard")
    if "://" not in job.run_url:
        return os.path.join(job.run_url, "tensorboard")
    return os.path.join(tempfile.gettempdir(), "spotrain-tensorboard", job.name)


class ReportCallback(tf.keras.callbacks.Callback):
    """Per-epoch metrics to Ray (every rank calls report, as Ray Train expects)."""

    spotrain_stateless = True  # nothing to save: BackupAndRestore skips it

    def __init__(
        self, worker: WorkerContext, bar: BackupAndRestore, global_batch_size: int
    ) -> None:
        super().__init__()
        self.worker = worker
        self.bar = bar
        self.global_batch_size = global_batch_size
        self.samples_per_s = 0.0
        self._t0 = 0.0
        self._steps = 0

    def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
        self._t0 = time.perf_counter()
        self._steps = 0

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self._steps += 1

    def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
        elapsed = max(time.perf_counter() - self._t0, 1e-9)
        self.samples_per_s = self._steps * self.global_batch_size / elapsed
        metrics: dict[str, Any] = {k: float(v) for k, v in (logs or {}).items()}
        metrics.update(
            epoch=epoch,
            global_step=self.bar.global_step,
            samples_per_s=self.samples_per_s,
            last_committed_step=self.bar.last_committed_step,
        )
        self.worker.report(metrics)


def train(
    job: TrainJob,
    worker: WorkerContext,
    strategy: tf.distribute.Strategy | None = None,
    *,
    extra_callbacks: Sequence[Any] = (),
    store: CheckpointStore | None = None,
    backup_overrides: dict[str, Any] | None = None,
    verbose: int = 0,
) -> TrainResult:
    """Run (or resume) one attempt of ``job``. Raises PreemptedError after a noticed
    preemption (state committed), UserCodeError for the user's mistakes."""
    strategy = strategy or make_strategy(job, worker)
    env.configure(job.seed, job.deterministic)
    if job.global_batch_size % strategy.num_replicas_in_sync:
        raise JobSpecError(
            "global_batch_size",
            job.global_batch_size,
            f"must be divisible by the number of workers ({strategy.num_replicas_in_sync})",
        )
    build_model = load_job_entry(job, "model")
    make_dataset = load_job_entry(job, "data")
    make_val = load_job_entry(job, "val_data")
    assert build_model is not None and (make_dataset is not None or job.data is not None)
    with strategy.scope(), user_code("build_model"):
        model = build_model(dict(job.config))
    worker.phase_times["model_built"] = time.time()
    if not isinstance(model, tf.keras.Model):
        raise UserCodeError("build_model", f"must return a tf.keras.Model, got {type(model)}")
    if not getattr(model, "_is_compiled", False):
        raise UserCodeError(
            "build_model", "the model is not compiled; call model.compile(...) before returning it"
        )
    ctx = DataContext(
        config=dict(job.config),
        seed=job.seed,
        world_size=worker.world_size,
        rank=worker.rank,
        global_batch_size=job.global_batch_size,
        managed_input=job.managed_input,
        entry=job.data if isinstance(job.data, str) else "",
    )
    inputs = InputStore(job.run_url, job.storage_options)
    if make_dataset is None:  # a file source (data: {parquet: ...})
        inp: Any = file_input(job.data, ctx, job.epochs, job.working_dir, inputs)
    elif job.managed_input:
        inp = build_input(make_dataset, ctx, job.epochs, job.shuffle_buffer, inputs)
    else:
        inp = None
    worker.phase_times["input_ready"] = time.time()
    overrides = dict(backup_overrides or {})
    options = BackupOptions(
        storage_options=job.storage_options,
        keep_last=job.checkpoint.keep_last,
        async_upload=job.checkpoint.async_upload,
        keep_every=job.checkpoint.keep_every,
        save_at_epoch_end=job.checkpoint.every_epoch,
        preemption_poll_steps=job.preemption_poll_steps,
        global_batch_size=job.global_batch_size,
        seed=job.seed,
        element_spec=inp.element_spec if inp is not None else None,
        extra_state={"job_name": job.name},
        lease_generation=job.lease_generation,
    )
    bar = BackupAndRestore(
        job.run_url,
        save_freq=job.checkpoint.every_steps or "epoch",
        delete_checkpoint=False,
        options=options,
        worker=worker,
        store=store,
        **overrides,
    )
    bar.set_model(model)
    try:
        state = bar.restore()
        result = TrainResult(model=model, restored_step=bar.initial_global_step if state else None)
        if state is not None and state.get("finished"):
            logger.info("[run=%s] already finished at step %s", job.name, state["global_step"])
            result.finished = True
            result.global_step = int(state["global_step"])
            result.last_committed_step = result.global_step
            result.history = _history_dict(bar.history)
            return result
        val_kwargs: dict[str, Any] = {}
        if make_val is None and job.val_data is not None:  # a file source
            val_ds, val_steps = file_val_input(job.val_data, ctx, job.working_dir, strategy, inputs)
            val_kwargs = {"validation_data": val_ds, "validation_steps": val_steps}
        elif make_val is not None:
            val_ds, val_steps = build_val_input(make_val, ctx, strategy, inputs)
            val_kwargs = {"validation_data": val_ds, "validation_steps": val_steps}
        if inp is not None:
            train_ds = inp.distribute(strategy, bar.initial_epoch, bar.initial_step)
            fit_kwargs: dict[str, Any] = {"steps_per_epoch": inp.steps_per_epoch}
        else:
            assert make_dataset is not None  # managed_input: false needs an entry point
            train_ds = unmanaged_input(make_dataset, ctx)
            fit_kwargs = {}
        reporter = ReportCallback(worker, bar, job.global_batch_size)
        callbacks = [*build_callbacks(job, job.callbacks), *extra_callbacks, reporter, bar]
        # shape/type errors while tracing the user's model are the user's; a lost peer's
        # collective errors propagate as they are (retryable)
        with user_code("model.fit", catch=FIT_USER_ERRORS):
            model.fit(
                train_ds,
                epochs=job.epochs,
                callbacks=callbacks,
                verbose=verbose,
                **fit_kwargs,
                **val_kwargs,
            )
    except BaseException:
        bar.close(wait=True)
        raise
    result.history = _history_dict(bar.history)  # fit's History holds this attempt's epochs
    result.global_step = bar.global_step
    result.last_committed_step = bar.last_committed_step
    result.finished = True
    result.samples_per_s = reporter.samples_per_s
    result.mean_blocked_s = bar.stats.mean_blocked_s
    result.saves = bar.stats.saves
    return result


def _history_dict(entries: list[dict[str, Any]]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for entry in entries:
        for k, v in entry["logs"].items():
            out.setdefault(k, []).append(v)
    return out
