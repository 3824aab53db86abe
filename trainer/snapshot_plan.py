"""What a snapshot reads, found once by TensorFlow's full object-graph serialization and reused
while the checkpoint's object graph stays the same.

``Checkpoint._saver._gather_serialized_tensors`` walks the object graph, rebuilds every
variable's saveable objects and the object-graph proto on each call: ~12 ms for a 4-layer MLP
with Adam (50 trackables), the largest part of a save's blocked time after the copy. A
:class:`SnapshotPlan` keeps what that call found: each trackable that serializes tensors, with
its checkpoint keys, and the object-graph tensor. A save then walks the graph breadth-first
(~1 ms) to check that it holds the same objects in the same order, and reads the values:

- a trackable whose every value was a CPU variable's own buffer (same address, shape and dtype:
  a read shares the variable's buffer) gets one ``ReadVariableOp`` per variable (~20 us each,
  instead of the saveable's three ops and its Python);
- any other (ON_READ variables, whose saved value is an aggregate read collectively; GPU
  variables; Python state) serializes itself again: the same calls, so the same values and the
  same collective reads, in the same order on every rank, as the full call.

Anything else rebuilds the plan with the full call: another object in the graph (a new
variable, slot or layer), a trackable that now serializes other names. Both checks depend on
the model's structure only, so every rank decides the same way. A checkpoint with registered
savers is never planned (:func:`trainer.snapshot.take` does not snapshot it).

Private TF 2.21 hooks: ``_saver._gather_serialized_tensors``, ``_saver._graph_view``,
``Trackable._serialize_to_tensors`` (``tensorflow/python/checkpoint/save_util.py``),
``SaveSpec``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer import env  # noqa: F401
from trainer import state as st

import tensorflow as tf  # isort: skip

try:  # private TF 2.21 names (see the module docstring)
    from tensorflow.python.trackable import trackable_utils
    from tensorflow.python.trackable.base import OBJECT_GRAPH_PROTO_KEY
except ImportError:  # another TF: no plans, every save makes the full call
    trackable_utils = None
    OBJECT_GRAPH_PROTO_KEY = None
try:
    from tensorflow.python.training.saving.saveable_object import SaveSpec
except ImportError:  # another TF: no snapshots either (trainer.snapshot.hooks_available)
    SaveSpec = None

#: serialized tensors as TF returns them: trackable (None: the object graph) -> key -> value
Serialized = Any  # an ObjectIdentityDictionary (variables are not hashable)
#: what a snapshot reads: one {checkpoint key: value or {slice: value}} per trackable
TensorDicts = list[dict[str, Any]]


@dataclass
class _Reader:
    trackable: Any
    checkpoint_keys: list[str]
    local_names: list[str]  # what ``trackable._serialize_to_tensors()`` names them
    #: when every value is a CPU variable's own buffer: those variables (read directly)
    variables: list[Any] | None = None


@dataclass
class SnapshotPlan:
    """The trackables a checkpoint serializes, for as long as its object graph is unchanged."""

    objects: list[Any]  # the graph's objects, in breadth-first order
    readers: list[_Reader]
    graph_tensor: tf.Tensor  # the serialized object-graph proto

    @classmethod
    def build(cls, checkpoint: tf.train.Checkpoint, serialized: Serialized) -> SnapshotPlan | None:
        """The plan of what ``_gather_serialized_tensors`` just returned; None when a
        trackable's own names cannot be matched to its checkpoint keys."""
        graph = serialized.get(None, {})
        if OBJECT_GRAPH_PROTO_KEY is None or set(graph) != {OBJECT_GRAPH_PROTO_KEY}:
            return None
        objects, _ = checkpoint._saver._graph_view.breadth_first_traversal()
        by_buffer = _cpu_variables_by_buffer(objects)
        readers = []
        for trackable, tensors in serialized.items():
            if trackable is None:
                continue
            keys = list(tensors)
            fresh = trackable._serialize_to_tensors()
            names = list(fresh)
            if not _names_match(keys, names):
                return None
            found = [_variable_of(value_of(fresh[n]), by_buffer) for n in names]
            variables = found if keys and all(v is not None for v in found) else None
            readers.append(_Reader(trackable, keys, names, variables))
        return cls(list(objects), readers, graph[OBJECT_GRAPH_PROTO_KEY])

    def serialize(self, checkpoint: tf.train.Checkpoint) -> TensorDicts | None:
        """The tensors to save now, as ``_gather_serialized_tensors`` would return them; None
        when the object graph changed since the plan was made."""
        objects, _ = checkpoint._saver._graph_view.breadth_first_traversal()
        if len(objects) != len(self.objects) or any(
            a is not b for a, b in zip(objects, self.objects, strict=True)
        ):
            return None
        out: TensorDicts = []
        for reader in self.readers:
            if reader.variables is not None:  # one ReadVariableOp each: the same buffer
                out.append(
                    {
                        key: tf.raw_ops.ReadVariableOp(resource=v.handle, dtype=v.dtype)
                        for key, v in zip(reader.checkpoint_keys, reader.variables, strict=True)
                    }
                )
                continue
            fresh = reader.trackable._serialize_to_tensors()
            if list(fresh) != reader.local_names:
                return None
            out.append(
                {
                    key: fresh[name]
                    for key, name in zip(reader.checkpoint_keys, reader.local_names, strict=True)
                }
            )
        out.append({OBJECT_GRAPH_PROTO_KEY: self.graph_tensor})
        return out


class SnapshotPlans:
    """One rank's plan for one checkpoint, rebuilt when its object graph changes."""

    def __init__(self) -> None:
        self.plan: SnapshotPlan | None = None
        self.builds = 0  # full serializations that made a plan (a test reads it)

    def serialize(self, checkpoint: tf.train.Checkpoint) -> tuple[TensorDicts, bool]:
        """(the tensors to save now, whether the checkpoint has registered savers)."""
        plan = self.plan
        if plan is not None:
            serialized = plan.serialize(checkpoint)
            if serialized is not None:
                return serialized, False
            self.plan = None
        serialized, _, registered, _ = checkpoint._saver._gather_serialized_tensors(None)
        if not registered:
            self.plan = SnapshotPlan.build(checkpoint, serialized)
            self.builds += self.plan is not None
        return list(serialized.values()), bool(registered)


def value_of(value: Any) -> Any:
    """The tensor a serialized value stands for (a ``SaveSpec`` reads it when asked)."""
    if SaveSpec is not None and isinstance(value, SaveSpec):
        value = value.tensor
    return value() if callable(value) else value


def _buffer_of(value: Any) -> int | None:
    """The address of a non-empty numeric CPU tensor's buffer (a read shares it), else None."""
    if not isinstance(value, tf.Tensor) or value.dtype == tf.string or "CPU" not in value.device:
        return None
    array = np.asarray(value)
    return int(array.__array_interface__["data"][0]) if array.nbytes else None


def _variable_of(value: Any, by_buffer: dict[int | None, Any]) -> Any:
    """The CPU variable whose own buffer ``value`` is (same address, shape and dtype)."""
    variable = by_buffer.get(_buffer_of(value))
    if variable is None or variable.dtype != value.dtype or variable.shape != value.shape:
        return None
    return variable


def _cpu_variables_by_buffer(objects: list[Any]) -> dict[int | None, Any]:
    """The graph's CPU variables (this rank's own copy; ON_READ ones left out: their saved
    value is an aggregate, read collectively) by the address of their current buffer."""
    found: dict[int | None, Any] = {}
    for obj in objects:
        if not isinstance(obj, tf.Variable) or st.is_on_read(obj):
            continue
        local = st.local_copy(obj)
        if not hasattr(local, "handle") or "CPU" not in str(local.device).upper():
            continue
        value = tf.raw_ops.ReadVariableOp(resource=local.handle, dtype=local.dtype)
        address = _buffer_of(value)
        if address is not None:
            found[address] = local
    found.pop(None, None)
    return found


def _names_match(keys: list[str], names: list[str]) -> bool:
    """``names`` (a trackable's own tensor names) are, in order, those of checkpoint ``keys``:
    the same (saveable objects carry full keys) or their ``/.ATTRIBUTES/<name>`` ends."""
    if len(keys) != len(names) or trackable_utils is None:
        return False
    attrs = "/" + trackable_utils.OBJECT_ATTRIBUTES_NAME + "/"
    return all(
        key == name or key.endswith(attrs + trackable_utils.escape_local_name(name))
        for key, name in zip(keys, names, strict=True)
    )
