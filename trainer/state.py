"""Training state that is not a plain checkpointed variable: per-rank variable copies,
collectives on small values, callback state, and the model fingerprint.

Per-rank state: variables with ``synchronization=ON_READ`` (compiled metric totals/counts,
batch-norm moving statistics) hold a different value on every replica; reading one in
cross-replica context aggregates (sum or mean), which is not invertible bitwise. spotrain
gathers every rank's own copy at save time and gives each rank its own copy back on restore
(same world size), so metrics and moving statistics continue bitwise.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from typing import Any

import numpy as np

from trainer import env  # noqa: F401
from trainer.errors import CallbackStateError

import tensorflow as tf  # isort: skip

logger = logging.getLogger(__name__)


# ---------------------------------------------------------------- variables


def _is_distributed(v: Any) -> bool:
    return isinstance(v, tf.distribute.DistributedValues)


def local_copy(v: Any) -> Any:
    """This rank's own copy of a variable (the first local replica under a strategy)."""
    return v.values[0] if _is_distributed(v) else v


def is_on_read(v: Any) -> bool:
    return getattr(v, "synchronization", None) == tf.VariableSynchronization.ON_READ


def build_compiled_containers(model: tf.keras.Model, element_spec: Any) -> None:
    """Create the compiled loss/metric objects now (Keras creates them in the first step), so
    their per-rank state can be restored before the first resumed step. Call in the scope."""
    if not getattr(model, "_is_compiled", False):
        return
    y_spec = element_spec[1] if isinstance(element_spec, tuple) and len(element_spec) > 1 else None
    outputs = getattr(model, "outputs", None)
    if outputs is None or y_spec is None:
        return
    y_pred = tf.nest.map_structure(
        lambda t: tf.zeros([1, *[d or 1 for d in t.shape[1:]]], t.dtype), outputs
    )
    if isinstance(y_pred, list) and len(y_pred) == 1:
        y_pred = y_pred[0]
    y_true = tf.nest.map_structure(
        lambda s: tf.zeros([1, *[d or 1 for d in s.shape]], s.dtype), y_spec
    )
    if model.compiled_loss is not None and not model.compiled_loss.built:
        model.compiled_loss.build(y_pred)
    if model.compiled_metrics is not None and not model.compiled_metrics.built:
        model.compiled_metrics.build(y_pred, y_true)


def random_generators(model: tf.keras.Model) -> list[Any]:
    """The ``tf.random.Generator`` of every random layer (Dropout, GaussianNoise...), in layer
    order. tf-keras leaves them out of model checkpoints on purpose (BaseRandomLayer), so
    spotrain checkpoints them itself: without them a resumed run draws other dropout masks."""
    out = []
    for layer in model._flatten_layers(include_self=False):
        gen = getattr(getattr(layer, "_random_generator", None), "_generator", None)
        if isinstance(gen, tf.random.Generator):
            out.append(gen)
    return out


def on_read_variables(model: tf.keras.Model) -> list[Any]:
    """Per-rank variables in a fixed order: the model's, then the metrics'."""
    out = [v for v in model.variables if is_on_read(v)]
    seen = {id(v) for v in out}
    for metric in model.metrics:
        for v in metric.variables:
            if id(v) not in seen:
                out.append(v)
                seen.add(id(v))
    return out


def metric_variables(model: tf.keras.Model) -> list[Any]:
    out = []
    for metric in model.metrics:
        out.extend(metric.variables)
    return out


def flatten_locals(variables: list[Any]) -> np.ndarray:
    """This rank's copies of ``variables`` as one float64 vector (exact for float32/int32)."""
    parts = [np.asarray(local_copy(v).numpy(), dtype=np.float64).ravel() for v in variables]
    return np.concatenate(parts) if parts else np.zeros(0, np.float64)


def assign_locals(variables: list[Any], flat: np.ndarray) -> None:
    """Give this rank's copies the values of ``flat`` (inverse of flatten_locals)."""
    offset = 0
    for v in variables:
        n = int(np.prod(v.shape))
        value = flat[offset : offset + n].reshape(v.shape).astype(v.dtype.as_numpy_dtype)
        local_copy(v).assign(value)
        offset += n
    if offset != flat.size:
        raise ValueError(f"per-rank state has {flat.size} values, the model needs {offset}")


def variables_digest(model: tf.keras.Model) -> str:
    """sha256 of this rank's copy of every replicated (not per-rank) variable."""
    h = hashlib.sha256()
    variables = list(model.variables)
    if model.optimizer is not None:
        variables += list(model.optimizer.variables())
    for v in variables:
        if is_on_read(v):
            continue
        value = np.ascontiguousarray(local_copy(v).numpy())
        h.update(str(value.shape).encode())
        h.update(value.tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------- collectives


def is_multi_worker(strategy: tf.distribute.Strategy) -> bool:
    return getattr(strategy.extended, "_num_workers", 1) > 1


_GATHER_FNS: dict[int, Any] = {}


def _gather_fn(strategy: tf.distribute.Strategy) -> Any:
    """One tf.function per strategy (``strategy.gather`` in eager mode retraced its collective
    on every call, ~0.1-0.2 s each on CPU). It all-reduces (sums) a [replicas, n] int64 matrix
    in which each replica fills only its own row with its values' bit patterns: one collective
    (an all-gather is two in MultiWorkerMirroredStrategy, the sizes first: 8 ms vs 4.5 ms per
    call with 2 CPU workers), and exact for every float64 (-0.0 and NaN payloads included:
    adding 0 to an integer changes no bit)."""
    fn = _GATHER_FNS.get(id(strategy))
    if fn is None:
        replicas = strategy.num_replicas_in_sync

        def replica_fn(bits: tf.Tensor) -> tf.Tensor:
            ctx = tf.distribute.get_replica_context()
            rid = tf.cast(ctx.replica_id_in_sync_group, tf.int32)
            # identity under the replica's device scope: a tf.function argument has no device,
            # and the collective needs one ("destinations can not be empty")
            own = tf.scatter_nd(
                tf.reshape(rid, [1, 1]), tf.identity(bits), [replicas, tf.shape(bits)[1]]
            )
            return ctx.all_reduce(tf.distribute.ReduceOp.SUM, own)

        @tf.function(reduce_retracing=True)
        def fn(bits: tf.Tensor) -> Any:
            return strategy.run(replica_fn, args=(bits,))

        _GATHER_FNS[id(strategy)] = fn
    return fn


def gather_rows(strategy: tf.distribute.Strategy, row: np.ndarray) -> np.ndarray:
    """All-gather one float64 vector per rank -> array [world, n], bit for bit (a collective:
    every rank must call it, in the same order). One replica per worker is assumed (Ray Train:
    one worker per device)."""
    if not is_multi_worker(strategy):
        return np.asarray(row, np.float64)[None]
    local = max(1, strategy.num_replicas_in_sync // strategy.extended._num_workers)
    bits = np.ascontiguousarray(row, np.float64).view(np.int64)[None]
    if bits.size == 0:  # every rank has no values (the same model): nothing to exchange
        return np.zeros((strategy.num_replicas_in_sync // local, 0), np.float64)
    out = _gather_fn(strategy)(tf.constant(bits))
    gathered = strategy.experimental_local_results(out)[0].numpy().view(np.float64)
    return gathered[::local]


def any_rank(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """True on every rank if any rank passed True (a collective)."""
    return bool(gather_rows(strategy, np.array([1.0 if flag else 0.0])).max() > 0)


def digest_to_row(digest: str) -> np.ndarray:
    # 4 x 24-bit chunks: exactly representable as float64
    return np.array([int(digest[i : i + 6], 16) for i in range(0, 24, 6)], np.float64)


def row_to_digest(row: np.ndarray) -> str:
    return "".join(f"{int(x):06x}" for x in row)


# ---------------------------------------------------------------- fingerprint


def fingerprint(model: tf.keras.Model) -> tuple[str, dict[str, Any]]:
    """Hash of what a checkpoint must match: layer classes, variable local names, shapes and
    dtypes, optimizer class and config. Layer names are left out on purpose: tf-keras makes
    them unique per process (dense, dense_1...), so they change between attempts."""
    layers = [type(layer).__name__ for layer in model._flatten_layers(include_self=False)]
    variables = [(v.name.split("/")[-1], list(v.shape), v.dtype.name) for v in model.variables]
    opt = model.optimizer
    opt_config: Any = None
    if opt is not None:
        try:
            cfg = dict(opt.get_config())
            cfg.pop("name", None)
            opt_config = json.loads(json.dumps(cfg, sort_keys=True, default=str))
        except Exception as exc:  # an exotic optimizer config: fall back to the class only
            logger.debug("optimizer config not serialisable: %s", exc)
        opt_config = {"class": type(opt).__name__, "config": opt_config}
    detail = {"layers": layers, "variables": variables, "optimizer": opt_config}
    digest = hashlib.sha256(json.dumps(detail, sort_keys=True).encode()).hexdigest()
    return digest, detail


# ---------------------------------------------------------------- JSON helpers


def to_json_value(value: Any) -> Any:
    """JSON-safe copy: numpy scalars -> Python, non-finite floats -> {"__float__": "inf"}."""
    if isinstance(value, dict):
        return {str(k): to_json_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_value(v) for v in value]
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, tf.Tensor | tf.Variable):
        value = np.asarray(value).item()
    if isinstance(value, float) and not math.isfinite(value):
        return {"__float__": repr(value)}
    if value is None or isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"{type(value).__name__} is not JSON-able")


def from_json_value(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"__float__"}:
            return float(value["__float__"])
        return {k: from_json_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [from_json_value(v) for v in value]
    return value


# ---------------------------------------------------------------- callback state

#: Attributes that make up the state of tf-keras' stateful callbacks (their config is
#: rebuilt from the job spec). LR of ReduceLROnPlateau lives in the optimizer checkpoint.
KNOWN_STATE_ATTRS: dict[str, tuple[str, ...]] = {
    "EarlyStopping": ("wait", "stopped_epoch", "best", "best_epoch"),
    "ReduceLROnPlateau": ("wait", "cooldown_counter", "best"),
    "ModelCheckpoint": (
        "best",
        "epochs_since_last_save",
        "_batches_seen_since_last_saving",
        "_last_batch_seen",
        "_current_epoch",
    ),
}
#: Callbacks with no state worth saving (History is restored from the metrics history).
STATELESS = {
    "History",
    "ProgbarLogger",
    "BaseLogger",
    "TerminateOnNaN",
    "LambdaCallback",
    "CSVLogger",
    "TensorBoard",
    "LearningRateScheduler",
    "RemoteMonitor",
}


def callback_keys(callbacks: list[Any]) -> list[str]:
    """Stable keys: class name + index among callbacks of that class."""
    counts: dict[str, int] = {}
    keys = []
    for cb in callbacks:
        name = type(cb).__name__
        keys.append(f"{name}#{counts.get(name, 0)}")
        counts[name] = counts.get(name, 0) + 1
    return keys


def get_callback_state(cb: Any, strict: bool = False) -> dict[str, Any] | None:
    """The JSON state of one callback, or None when it has none (or cannot give it)."""
    name = type(cb).__name__
    if getattr(cb, "spotrain_stateless", False):
        return None
    if hasattr(cb, "get_state") and callable(cb.get_state):
        state = cb.get_state()
        try:
            return to_json_value(dict(state))
        except (TypeError, ValueError) as exc:
            raise CallbackStateError(
                f"{name}.get_state() returned a value that is not JSON-able ({exc}); return a "
                "dict of numbers, strings, lists and dicts"
            ) from exc
    for cls in type(cb).__mro__:
        attrs = KNOWN_STATE_ATTRS.get(cls.__name__)
        if attrs is not None:
            state = {a: getattr(cb, a) for a in attrs if hasattr(cb, a)}
            if cls.__name__ == "EarlyStopping" and getattr(cb, "best_weights", None) is not None:
                state["best_weights"] = "not-saved"
            return to_json_value(state)
        if cls.__name__ in STATELESS:
            return None
    if cls_is_base_only(cb):
        return None
    message = (
        f"callback {name} has no get_state()/set_state(); its state is not saved, so it "
        "restarts from scratch after a resume. Implement get_state() -> dict and "
        "set_state(dict) to make it exact"
    )
    if strict:
        raise CallbackStateError(message)
    _warn_once(name, message)
    return None


def cls_is_base_only(cb: Any) -> bool:
    """A callback whose instance holds nothing beyond what tf.keras.callbacks.Callback sets."""
    base = {"validation_data", "model", "_chief_worker_only", "_supports_tf_logs", "params"}
    return not (set(vars(cb)) - base)


_warned: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        logger.warning(message)


def set_callback_state(cb: Any, state: dict[str, Any]) -> None:
    state = from_json_value(state)
    if hasattr(cb, "set_state") and callable(cb.set_state):
        cb.set_state(state)
        return
    if state.pop("best_weights", None) is not None:
        _warn_once(
            f"{type(cb).__name__}.best_weights",
            "EarlyStopping(restore_best_weights=True): the best weights are not part of the "
            "checkpoint; after a resume the weights restored at the end are those of the "
            "best epoch seen since the resume",
        )
    for key, value in state.items():
        setattr(cb, key, value)
