"""What a checkpoint holds of a model, and a model built from a committed checkpoint.

A committed step directory holds ``CKPT_PREFIX.*``: a ``tf.train.Checkpoint`` of the model,
its optimizer (slots, iterations, LR variable) and the ``tf.random.Generator`` of every random
layer (tf-keras leaves those out of model checkpoints); and ``RANKS_PREFIX.*``: every rank's
own copy of the ON_READ variables (a TF checkpoint bundle of one row per rank).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from storage.checkpoints import CheckpointStore
from storage.errors import NoValidCheckpointError
from storage.manifest import Manifest
from trainer import env
from trainer import state as st
from trainer.errors import ExportStepError, ModelMismatchError, TrainerError
from trainer.user_code import user_code

import tensorflow as tf  # isort: skip

CKPT_PREFIX = "ckpt"  # tf.train.Checkpoint of model + optimizer + random generators
RANKS_PREFIX = "ranks"  # per-rank copies of ON_READ variables (TF checkpoint bundle)


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


def train_counter(model: Any) -> int | None:
    """``model._train_counter``: steps run by fit (TensorBoard's batch-summary step). tf-keras
    zeroes it at each fit start; spotrain saves it in the manifest state."""
    counter = getattr(model, "_train_counter", None)
    return None if counter is None else int(counter.numpy())


def set_train_counter(model: Any, value: int | None) -> None:
    counter = getattr(model, "_train_counter", None)
    if counter is not None and value is not None:
        counter.assign(int(value))


@dataclass(frozen=True)
class ModelParts:
    """The variables of a model a save writes and a restore fills, created ahead of training.

    on_read: the per-rank (ON_READ) variables: the model's own first (``n_model_on_read``:
    batch-norm moving statistics...), then the compiled metrics' totals and counts.
    fingerprint: (digest, detail) of layers, variables and optimizer, checked on restore.
    """

    checkpoint: tf.train.Checkpoint
    on_read: list[Any]
    n_model_on_read: int
    fingerprint: tuple[str, dict[str, Any]]


def build_from_spec(model: tf.keras.Model, element_spec: Any) -> None:
    """Build an unbuilt model (``Sequential([Dense(n)])`` without an Input) from the input's
    per-example element spec ``(x, y[, w])`` or ``x``: ``model.build`` with batch dim None."""
    if element_spec is None:
        raise TrainerError(
            "the model is not built (its variables do not exist yet) and the input's shape "
            "is unknown here; fix: give the model an Input layer or an input_shape, or call "
            "model.build(input_shape) before fit (in build_model for spotrain jobs)"
        )
    x_spec = element_spec[0] if isinstance(element_spec, tuple) else element_spec
    shapes = tf.nest.map_structure(lambda s: tf.TensorShape([None, *s.shape]), x_spec)
    try:
        model.build(shapes)
    except (ValueError, TypeError, NotImplementedError) as exc:
        raise TrainerError(
            f"the model is not built and model.build({shapes}) failed ({exc}); fix: give "
            "the model an Input layer, or build it (call it on a batch) before fit"
        ) from exc


def prepare_model(model: tf.keras.Model, element_spec: Any = None) -> ModelParts:
    """Build an unbuilt model from ``element_spec``, then create optimizer slots and compiled
    metrics now, so a restore can fill them."""
    if not getattr(model, "_is_compiled", False) or model.optimizer is None:
        raise TrainerError(
            "the model is not compiled; call model.compile(optimizer=..., loss=...) in "
            "build_model before returning it"
        )
    with model.distribute_strategy.scope():
        if not model.built:
            build_from_spec(model, element_spec)
        build_optimizer(model)
        st.build_compiled_containers(model, element_spec)
    on_read = [v for v in model.variables if st.is_on_read(v)]
    n_model_on_read = len(on_read)
    seen = {id(v) for v in on_read}
    for v in st.metric_variables(model):
        if id(v) not in seen:
            on_read.append(v)
            seen.add(id(v))
    return ModelParts(checkpoint_of(model), on_read, n_model_on_read, st.fingerprint(model))


def load_committed_model(
    store: CheckpointStore,
    build_model: Callable[[dict[str, Any]], Any],
    config: Mapping[str, Any],
    *,
    seed: int,
    deterministic: bool,
    step: int | None = None,
    exact_step: bool = False,
    include_optimizer: bool = True,
) -> tuple[Any, Manifest]:
    """Build a model with the user's ``build_model(config)`` and read committed ``step``
    (default: the latest that verifies) into it; returns (model, manifest). The download goes to
    a temp dir that is removed before returning.

    exact_step: ``step`` itself or :class:`ExportStepError` (no fallback to an older step).
    The checkpoint's model fingerprint must match the model built (as a training restore
    checks it), else :class:`ModelMismatchError`. include_optimizer=False reads the model's
    variables only (the optimizer starts fresh, as in ``spotrain export``); True also reads
    optimizer slots and random generators.
    """
    committed = store.committed_steps()
    if exact_step and step is not None and step not in committed:
        raise ExportStepError(store.url, step, committed, "it is not a committed step")
    tmp = tempfile.mkdtemp(prefix="spotrain-load-")
    try:
        try:
            manifest = store.restore(tmp, step=step)
        except NoValidCheckpointError:
            if exact_step and step is not None:
                raise ExportStepError(store.url, step, committed, "it does not verify") from None
            raise
        if exact_step and step is not None and manifest.step != step:
            raise ExportStepError(
                store.url,
                step,
                committed,
                f"it does not verify (the newest step below it that does is {manifest.step})",
            )
        env.configure(seed, deterministic)
        with user_code("build_model"):
            model = build_model(dict(config))
        _check_fingerprint(store.url, manifest, model)
        if include_optimizer:
            if model.optimizer is not None:
                build_optimizer(model)
            ckpt = checkpoint_of(model)
        else:
            ckpt = tf.train.Checkpoint(model=model)
        ckpt.read(os.path.join(tmp, CKPT_PREFIX)).expect_partial()
        return model, manifest
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_fingerprint(run_url: str, manifest: Manifest, model: Any) -> None:
    """ModelMismatchError when ``model`` is not the model the checkpoint was saved from."""
    saved = str((manifest.state or {}).get("fingerprint") or "")
    if not saved:
        return  # a checkpoint written without one (not by the trainer): nothing to compare
    current, detail = st.fingerprint(model)
    if saved != current:
        saved_detail = (manifest.state or {}).get("fingerprint_detail") or {}
        differ = [k for k in detail if saved_detail.get(k) != st.to_json_value(detail[k])]
        raise ModelMismatchError(
            run_url, saved, current, f"{', '.join(differ) or 'the model'} differ"
        )
