"""In-memory checkpoint snapshots: taken at a step boundary (the only part of a save that
blocks training), written to local files and committed in the background.

A :class:`Snapshot` holds what ``tf.train.Checkpoint.write`` would write for
:func:`trainer.model_io.checkpoint_of` (model, optimizer, random generators): every tensor of
the checkpoint's object graph under its checkpoint key, the serialized object graph, and the
per-rank rows (``RANKS_PREFIX``). :meth:`Snapshot.write` writes them with ``SaveV2`` as one
tensor bundle: the same files, keys and object graph as ``Checkpoint.write`` (pinned byte for
byte by ``tests/trainer/test_trainer_snapshot.py``), so every reader of a checkpoint reads it as
before.

At the boundary a snapshot only *holds* each CPU variable's current buffer (the tensor a read
returns shares it; no copy), and the writer thread writes the bundle straight from those
buffers while the next step runs. TensorFlow copies a variable's buffer before updating it
while another reference to it is alive (copy on write, in every update kernel: dense, sparse
and XLA-compiled; pinned by the tests), so the held values stay those of the boundary, and a
variable the next step updates before the write is done is copied by that step (the cost a
copy at the boundary would have had), never changed under the write. Once written, the
snapshot lets go and the optimizer updates in place again. GPU variables get the
device-to-host copy TF's own save makes, at the boundary. Every rank takes a snapshot (reading
ON_READ variables is a collective); only a rank that keeps it (the chief) holds the values;
the others write nothing. What to read is found once per object graph
(:mod:`trainer.snapshot_plan`).

Memory: nothing beyond the variables themselves, except that a variable updated while its
snapshot is being written exists twice until then (at most the checkpoint's size, ``nbytes``).

:class:`SnapshotWriter` owns the one background thread that writes a snapshot into a fresh
local directory and hands it on (to :class:`storage.committer.AsyncCommitter`, whose uploads
coalesce: a newer directory supersedes a waiting one). At most one snapshot is in flight:
:attr:`SnapshotWriter.busy` says a save coming now finds one (it waits).

Private TF hooks (TF 2.21): ``Checkpoint._saver._gather_serialized_tensors``
(``tensorflow/python/checkpoint/checkpoint.py``) and ``SaveSpec``
(``tensorflow/python/training/saving/saveable_object.py``). :func:`take` returns None where they
are missing, or for a checkpoint with registered savers or tensors on several tasks; the caller
then writes the blocking way (``Checkpoint.write``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer import env  # noqa: F401
from trainer.model_io import CKPT_PREFIX, RANKS_PREFIX
from trainer.snapshot_plan import SnapshotPlans, value_of

import tensorflow as tf  # isort: skip

logger = logging.getLogger(__name__)

try:  # private TF 2.21 hooks (see the module docstring)
    from tensorflow.python.training.saving.saveable_object import SaveSpec
except ImportError:  # another TF: take() returns None, saves block as before
    SaveSpec = None


def hooks_available(checkpoint: tf.train.Checkpoint) -> bool:
    """The private hooks :func:`take` relies on exist in this TF."""
    saver = getattr(checkpoint, "_saver", None)
    return SaveSpec is not None and callable(getattr(saver, "_gather_serialized_tensors", None))


@dataclass
class Snapshot:
    """A checkpoint's tensors, held at a step boundary (see the module docstring)."""

    step: int
    keys: list[tuple[str, str]]  # (checkpoint key, slice spec), in bundle order
    #: a CPU variable's read (sharing its buffer), or a host copy (a GPU variable's, a string)
    values: list[Any]
    rows: np.ndarray | None  # every rank's ON_READ copies, one row per rank
    nbytes: int
    taken_at: float = field(default_factory=time.monotonic)

    def write(self, local_dir: str) -> None:
        """Write ``CKPT_PREFIX.*`` (and ``RANKS_PREFIX.*``) into ``local_dir``, straight from
        the held values, then let go of them (the variables update in place again)."""
        tf.raw_ops.SaveV2(
            prefix=os.path.join(local_dir, CKPT_PREFIX),
            tensor_names=[k for k, _ in self.keys],
            shape_and_slices=[s for _, s in self.keys],
            tensors=[
                v if isinstance(v, tf.Tensor) else tf.convert_to_tensor(v) for v in self.values
            ],
        )
        if self.rows is not None:
            write_rows(local_dir, self.rows)
        self.values = []


def write_rows(local_dir: str, rows: np.ndarray) -> None:
    """The per-rank rows as a tensor bundle ``RANKS_PREFIX.*`` (key ``rank/<r>``)."""
    tf.raw_ops.SaveV2(
        prefix=os.path.join(local_dir, RANKS_PREFIX),
        tensor_names=[f"rank/{r}" for r in range(rows.shape[0])],
        shape_and_slices=[""] * rows.shape[0],
        tensors=[tf.constant(r) for r in rows],
    )


def take(
    checkpoint: tf.train.Checkpoint,
    step: int,
    rows: np.ndarray | None,
    keep: bool,
    plans: SnapshotPlans | None = None,
) -> Snapshot | None:
    """Read every tensor of ``checkpoint`` now (a collective: every rank calls it); ``keep``:
    hold the values in a :class:`Snapshot`, else they are read and dropped, and an empty
    snapshot returned. ``plans``: reuse what the last save found in the object graph
    (:mod:`trainer.snapshot_plan`). None: this checkpoint cannot be snapshot (see the module
    docstring), decided from its structure alone, so the same on every rank."""
    if not hooks_available(checkpoint):
        return None
    if plans is not None:
        tensor_dicts, registered = plans.serialize(checkpoint)
    else:
        serialized, _, registered, _ = checkpoint._saver._gather_serialized_tensors(None)
        tensor_dicts = list(serialized.values())
    if registered:
        return None
    keys: list[tuple[str, str]] = []
    specs: list[Any] = []
    tasks = set()
    for tensor_dict in tensor_dicts:
        for key, by_slice in tensor_dict.items():
            if not isinstance(by_slice, dict):
                by_slice = {"": by_slice}
            for slice_spec, spec in by_slice.items():
                device = getattr(spec, "device", None)
                if device is not None:
                    d = (
                        tf.DeviceSpec.from_string(str(device))
                        if isinstance(device, str)
                        else device
                    )
                    tasks.add((d.job, d.replica, d.task))
                keys.append((key, slice_spec.strip()))
                specs.append(spec)
    if len(tasks) > 1:
        return None
    values: list[Any] = []
    for spec in specs:
        value = value_of(spec)
        if not keep:
            continue
        device = getattr(spec, "device", None)
        values.append(value if _is_cpu_numeric(value, device) else _host_copy(value, device))
    if not keep:
        return Snapshot(step, [], [], None, 0)
    nbytes = 0 if rows is None else int(rows.nbytes)
    nbytes += sum(_nbytes(v) for v in values)
    order = sorted(range(len(keys)), key=lambda i: keys[i])
    return Snapshot(step, [keys[i] for i in order], [values[i] for i in order], rows, nbytes)


def _is_cpu_numeric(value: Any, device: Any) -> bool:
    """A numeric CPU tensor: held as is (it shares the variable's buffer; no copy)."""
    if not isinstance(value, tf.Tensor) or value.dtype == tf.string:
        return False
    return device is None or "GPU" not in str(device).upper()


def _nbytes(value: Any) -> int:
    if isinstance(value, tf.Tensor):
        return int(value.shape.num_elements() or 0) * (
            value.dtype.size if value.dtype != tf.string else 0
        )
    return int(getattr(value, "nbytes", 0) or 0)


def _host_copy(value: Any, device: Any) -> Any:
    """A host copy that later training steps cannot change, of a value that is not a numeric
    CPU tensor (a string or GPU tensor, a non-tensor value)."""
    if isinstance(value, tf.Tensor):
        if value.dtype == tf.string:
            return value.numpy()  # bytes objects are immutable
        if device is not None and "GPU" in str(device).upper():
            return tf.identity(value)  # TF's read already copied it to the host
    return np.array(value, copy=True)


class SnapshotWriter:
    """One background thread: write a snapshot into a fresh local directory under ``tmp_dir``
    and call ``hand_on(snapshot, local_dir, meta)``, which owns the directory from then on.

    An error (writing or handing on) is captured and re-raised by the next :meth:`submit`,
    :meth:`wait` or :meth:`close`."""

    def __init__(self, hand_on: Callable[[Snapshot, str, Any], None], tmp_dir: str):
        self._hand_on = hand_on
        self._tmp_dir = tmp_dir or None
        self._cond = threading.Condition()
        self._job: tuple[Snapshot, Any] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="spotrain-snapshot", daemon=True)
        self._thread.start()

    @property
    def busy(self) -> bool:
        """A snapshot is in flight (not yet written and handed on)."""
        with self._cond:
            return self._job is not None

    def submit(self, snapshot: Snapshot, meta: Any) -> None:
        """Queue ``snapshot`` (``meta`` goes to ``hand_on``); waits for one still in flight first (callers that must not wait
        check :attr:`busy`)."""
        with self._cond:
            while self._job is not None and self._error is None:
                self._cond.wait()
            self._raise_pending()
            if self._closed:
                raise RuntimeError("SnapshotWriter is closed; fix: create a new one")
            self._job = (snapshot, meta)
            self._cond.notify_all()

    def wait(self, timeout_s: float | None = None) -> None:
        """Until no snapshot is in flight; re-raise a captured error."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while self._job is not None and self._error is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    raise TimeoutError(
                        f"writing the snapshot of step {self._job[0].step} took over "
                        f"timeout_s={timeout_s}; fix: allow more time (commit_timeout_s)"
                    )
                self._cond.wait(remaining)
            self._raise_pending()

    def close(self, timeout_s: float | None = None) -> None:
        try:
            self.wait(timeout_s)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    def _raise_pending(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._job is None and not self._closed:
                    self._cond.wait()
                if self._job is None:
                    return
                snapshot, meta = self._job
            local_dir = ""
            try:
                local_dir = tempfile.mkdtemp(
                    prefix=f"spotrain-{snapshot.step:012d}-", dir=self._tmp_dir
                )
                snapshot.write(local_dir)
                self._hand_on(snapshot, local_dir, meta)
            except BaseException as exc:  # captured for the owner: re-raised on submit/wait
                logger.error("snapshot of step %d could not be written: %r", snapshot.step, exc)
                if local_dir:
                    shutil.rmtree(local_dir, ignore_errors=True)
                with self._cond:
                    self._error = exc
            with self._cond:
                self._job = None
                self._cond.notify_all()
