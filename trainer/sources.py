"""Index-addressable example sources: what a worker reads, by example index.

A source knows its length without a data pass and returns the rows of any set of example
indices (``read``), so a worker reads only its own rows and a resume reads nothing it skips.
``ArraySource`` holds in-memory arrays (NumPy ``(x, y[, w])`` from ``make_dataset``, or a
finite ``tf.data.Dataset`` read once into memory); ``trainer.parquet_source`` and
``trainer.tfrecord_source`` read files.

``read`` returns the *raw* rows (a flat list of arrays, first axis = rows); the optional
``map_fn`` (a traced tf function) turns one raw example into ``(x, y[, w])`` and runs in the
worker's tf.data pipeline, on the worker's rows only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer import env  # noqa: F401  (TF_USE_LEGACY_KERAS before tensorflow)
from trainer.errors import UserCodeError
from trainer.user_code import user_code

import tensorflow as tf  # isort: skip

logger = logging.getLogger(__name__)

#: Alignment of the arrays ``read`` returns: TensorFlow takes a NumPy array that a
#: ``from_generator`` yields without copying it when its data is aligned to
#: ``EIGEN_MAX_ALIGN_BYTES`` (64 at most); NumPy's own allocations are 16-byte aligned, and each
#: was copied (a chunk of 65 536 rows: ~2.5 ms, a tenth of the input's time per epoch here).
ALIGN_BYTES = 64


def aligned_empty(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """An uninitialized C-contiguous array whose data starts on an ``ALIGN_BYTES`` boundary
    (object arrays: a plain ``np.empty``; TensorFlow copies strings anyway)."""
    dtype = np.dtype(dtype)
    if dtype.hasobject:
        return np.empty(shape, dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    raw = np.empty(nbytes + ALIGN_BYTES, np.uint8)
    start = -raw.ctypes.data % ALIGN_BYTES
    return raw[start : start + nbytes].view(dtype).reshape(shape)


def take_rows(array: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """``array[rows]`` (rows along the first axis) into a new aligned array. ``rows`` must be
    in range (the callers compute them): NumPy buffers ``out`` for ``mode="raise"``, a copy
    this skips."""
    out = aligned_empty((len(rows), *array.shape[1:]), array.dtype)
    return np.take(array, rows, axis=0, out=out, mode="clip")


@dataclass
class ReadCounter:
    """Examples a worker materialized (read and, with a map, mapped) and bytes it read."""

    examples: int = 0
    bytes: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def add(self, examples: int = 0, nbytes: int = 0) -> None:
        with self._lock:
            self.examples += examples
            self.bytes += nbytes


class Source:
    """Base of the index-addressable sources (see the module docstring).

    Subclasses set ``examples``, ``raw_spec`` (per-example ``tf.TensorSpec`` structure that
    ``read`` yields), ``block`` or ``block_sizes`` and ``window_blocks`` (the I/O unit, see
    ``trainer.index_order``), ``map_fn`` and ``where`` (for messages).
    """

    examples: int = 0
    raw_spec: Any = None
    block: int = 1
    block_sizes: np.ndarray | None = None  # blocks of their own sizes (row groups), or None
    window_blocks: int = 0
    map_fn: Callable[..., Any] | None = None
    where: str = "make_dataset"

    def __init__(self) -> None:
        self.counter: ReadCounter = getattr(self, "counter", None) or ReadCounter()

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        raise NotImplementedError

    def pack(self, flat: list[Any]) -> Any:
        """A raw example (or batch) structure from ``read``'s flat list."""
        return tf.nest.pack_sequence_as(self.raw_spec, flat)

    def apply_map(self, raw: Any) -> Any:
        return self.map_fn(*raw) if self.map_fn is not None else raw

    def element_spec(self) -> Any:
        """The per-example ``(x, y[, w])`` spec after the map; runs the map on example 0 once,
        so a map that raises fails here, before training (``UserCodeError``)."""
        if self.map_fn is None:
            return self.raw_spec
        first = [a[:1] for a in self.read(np.zeros(1, np.int64))]
        self.counter.add(examples=-1)  # the probe is no step's read (its bytes still count)
        with user_code(f"{self.where} map"):
            ds = tf.data.Dataset.from_tensor_slices(tuple(self.pack(first)))
            ds = ds.map(self.apply_map)
            next(iter(ds))
        spec = ds.element_spec
        check_element_spec(spec, f"{self.where} map")
        return spec


def check_element_spec(spec: Any, where: str) -> None:
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise UserCodeError(
            where, f"elements must be unbatched (x, y) or (x, y, sample_weight) tuples; got {spec}"
        )


class ArraySource(Source):
    """In-memory arrays: row i of every array is example i."""

    def __init__(self, structure: Any, where: str = "make_dataset") -> None:
        super().__init__()
        self.where = where
        flat = [np.asarray(a) for a in tf.nest.flatten(structure)]
        lengths = {len(a) for a in flat}
        if len(lengths) != 1:
            raise UserCodeError(where, f"arrays of different lengths {sorted(lengths)}")
        self._flat = flat
        self.examples = lengths.pop()
        self.raw_spec = tf.nest.pack_sequence_as(
            structure,
            [tf.TensorSpec(a.shape[1:], tf.as_dtype(a.dtype)) for a in flat],
        )
        check_element_spec(self.raw_spec, where)

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        self.counter.add(len(indices))
        return [take_rows(a, indices) for a in self._flat]


def arrays_of(value: Any) -> Any:
    """``value`` when it is a tuple of NumPy arrays (the in-memory form of make_dataset)."""
    if isinstance(value, tuple) and value and all(isinstance(a, np.ndarray) for a in value):
        return value
    return None


def materialize(ds: tf.data.Dataset, limit_bytes: int, where: str) -> ArraySource | None:
    """Read a finite dataset once into memory (None when it holds more than ``limit_bytes``
    or elements that are not dense tensors: the caller keeps the stream)."""
    specs = tf.nest.flatten(ds.element_spec)
    if not all(isinstance(s, tf.TensorSpec) and s.shape.is_fully_defined() for s in specs):
        return None
    parts: list[list[np.ndarray]] = [[] for _ in specs]
    total = 0
    with user_code(where):
        for batch in ds.batch(8192):
            for i, t in enumerate(tf.nest.flatten(batch)):
                array = t.numpy()
                parts[i].append(array)
                total += array.nbytes
            if total > limit_bytes:
                logger.info(
                    "%s holds more than %d bytes: it streams (every worker reads it all)",
                    where,
                    limit_bytes,
                )
                return None
    flat = [
        np.concatenate(p) if p else np.zeros((0, *s.shape), s.dtype.as_numpy_dtype)
        for p, s in zip(parts, specs, strict=True)
    ]
    return ArraySource(tf.nest.pack_sequence_as(ds.element_spec, flat), where)
