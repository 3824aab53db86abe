"""What the file sources share: listing the files of a URL (file, folder, glob) on any fsspec
filesystem, counting the bytes read, turning columns into arrays and into ``(x, y[, w])``.

Without a ``map``, the features make ``x``: numeric scalar columns are stacked into a float32
vector (in the order given); a single list/tensor column is ``x`` as is (float64 -> float32).
``y`` (and ``w``) are numeric scalar columns. With a ``map``, the map receives a dict of every
column read (features, label, weight) and returns ``(x, y[, w])``; then string/bytes columns
are allowed (e.g. JPEG bytes to decode).
"""

from __future__ import annotations

import functools
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import fsspec
import numpy as np

from trainer.constants import DEFAULT_ROW_CACHE_BYTES
from trainer.data_spec import FileSource
from trainer.errors import DataSourceError
from trainer.sources import Source, aligned_empty, take_rows

import tensorflow as tf  # isort: skip

_GLOB = set("*?[")
_URL_FIX = "check the URL (a file, a folder of {ext} files or a glob) and its storage_options"


def open_filesystem(spec: FileSource) -> tuple[Any, str]:
    try:
        return fsspec.core.url_to_fs(spec.url, **dict(spec.storage_options))
    except (ImportError, TypeError, ValueError) as exc:
        raise DataSourceError(
            spec.url,
            f"cannot open its filesystem ({exc})",
            "install the fsspec backend of "
            "the URL's protocol (s3fs for s3://, gcsfs for gs://) and pass options it accepts",
        ) from None


def list_files(fs: Any, path: str, spec: FileSource, suffixes: Sequence[str]) -> list[str]:
    """The files of a file, folder (every file below it with one of ``suffixes``) or glob,
    sorted; DataSourceError when there is none or one is empty (0 bytes)."""
    ext = "/".join(f"*{s}" for s in suffixes)
    try:
        if _GLOB & set(path):
            files = [f for f in fs.glob(path) if not f.endswith(".idx") and not fs.isdir(f)]
        elif fs.isdir(path):
            files = [f for f in fs.find(path) if f.endswith(tuple(suffixes))]
        elif fs.exists(path):
            files = [path]
        else:
            files = []
    except (FileNotFoundError, PermissionError, OSError) as exc:
        raise DataSourceError(
            spec.url, f"cannot list it ({exc})", _URL_FIX.format(ext=ext)
        ) from None
    if not files:
        raise DataSourceError(spec.url, f"no {ext} files there", _URL_FIX.format(ext=ext))
    files = sorted(files)
    for f in files:
        if fs.size(f) == 0:
            raise DataSourceError(
                spec.url, f"{f} is empty (0 bytes)", "remove the empty file or write it again"
            )
    return files


class UnitSlab:
    """The converted rows of the last few I/O units (row groups), LRU, held in one array per
    column: unit ``u`` in slot ``k`` is rows ``[k*slot_rows, k*slot_rows + len(u))``. A read of
    rows spread over many units is then one ``np.take`` per column (no grouping by unit).

    Slots are ``slot_rows`` (the largest unit) long. The slab starts with ``capacity`` slots and
    grows when one read needs more units at once (e.g. ``window_blocks: 0``, where a read
    touches every row group), up to ``max_bytes``; a read that needs more returns None (the
    caller reads unit by unit). ``load`` writes the rows of the units a read misses straight
    into the slots it gets (no per-unit arrays to copy in)."""

    def __init__(
        self,
        unit_starts: np.ndarray,
        specs: Sequence[tf.TensorSpec],
        load: Callable[[dict[int, list[np.ndarray]]], None],
        capacity: int,
        max_bytes: int,
    ) -> None:
        self._starts = unit_starts
        units = len(unit_starts) - 1
        self.slot_rows = int(np.diff(unit_starts).max())
        self._shapes = [(tuple(s.shape), s.dtype.as_numpy_dtype) for s in specs]
        self._row_bytes = sum(
            int(np.prod(shape, dtype=np.int64)) * np.dtype(dt).itemsize
            for shape, dt in self._shapes
        )
        self._load = load
        self.max_slots = max(1, min(units, max_bytes // max(1, self._row_bytes * self.slot_rows)))
        self.capacity = max(1, min(capacity, self.max_slots))
        self._arrays: list[np.ndarray] = []
        self._slot_of = np.full(units, -1, np.int64)
        self._unit_in: list[int] = []  # the unit in each slot (-1: free)
        self._used: list[int] = []  # the read counter when each slot was last needed
        self._reads = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays)

    def take(self, indices: np.ndarray, units: np.ndarray) -> list[np.ndarray] | None:
        """The rows ``indices`` (in units ``units``), or None when their units do not fit."""
        needed = np.flatnonzero(np.bincount(units, minlength=len(self._slot_of)))
        if len(needed) > self.max_slots:
            return None
        self._reads += 1
        missing = [int(u) for u in needed if self._slot_of[u] < 0]
        slots = min(self.max_slots, max(self.capacity, len(needed)))
        if len(self._unit_in) < slots:
            self._grow(slots)
        for slot in self._slot_of[needed]:
            if slot >= 0:
                self._used[int(slot)] = self._reads
        claimed: dict[int, list[np.ndarray]] = {}
        try:
            for unit in missing:
                claimed[unit] = self._claim(self._free_slot(), unit)
            self._load(claimed)  # each unit's rows go straight into its slot
        except BaseException:
            for unit in claimed:  # half-written slots hold no unit
                self._release(unit)
            raise
        rows = self._slot_of[units] * self.slot_rows + (indices - self._starts[units])
        return [take_rows(a, rows) for a in self._arrays]

    def _grow(self, slots: int) -> None:
        old = len(self._unit_in)
        arrays = [np.empty((slots * self.slot_rows, *shape), dt) for shape, dt in self._shapes]
        for new, cur in zip(arrays, self._arrays, strict=False):
            new[: len(cur)] = cur
        self._arrays = arrays
        self._unit_in += [-1] * (slots - old)
        self._used += [0] * (slots - old)

    def _free_slot(self) -> int:
        """A slot with no unit, else the one least recently needed (never one this read needs)."""
        slot = min(range(len(self._used)), key=self._used.__getitem__)
        assert self._used[slot] < self._reads, "a read needs more units than the slab holds"
        return slot

    def _claim(self, slot: int, unit: int) -> list[np.ndarray]:
        """Give ``slot`` to ``unit`` (its previous unit leaves the slab); the slot's rows, one
        view per column, for the unit's rows to be written into."""
        if self._unit_in[slot] >= 0:
            self._slot_of[self._unit_in[slot]] = -1
        self._unit_in[slot] = unit
        self._slot_of[unit] = slot
        self._used[slot] = self._reads
        at = slot * self.slot_rows
        rows = int(self._starts[unit + 1] - self._starts[unit])
        return [a[at : at + rows] for a in self._arrays]

    def _release(self, unit: int) -> None:
        slot = int(self._slot_of[unit])
        self._slot_of[unit] = -1
        self._unit_in[slot] = -1
        self._used[slot] = 0


class UnitLookup:
    """The unit (row group, record run) holding each example index: a table over buckets of
    ``2**shift`` indices, no larger than the smallest unit, so a bucket overlaps at most two
    units and a lookup is two gathers and a compare (a binary search over the unit starts
    took ~7x longer for 64k indices over 64 row groups). Empty units, or units too small for a
    table of ``MAX_BUCKETS``, fall back to the binary search."""

    MAX_BUCKETS = 1 << 22

    def __init__(self, unit_starts: np.ndarray) -> None:
        self._starts = unit_starts
        self._first: np.ndarray | None = None
        self._shift = 0
        sizes = np.diff(unit_starts)
        if not (sizes > 0).all():
            return
        self._shift = int(sizes.min()).bit_length() - 1
        buckets = (int(unit_starts[-1]) >> self._shift) + 1
        if buckets <= self.MAX_BUCKETS:
            bucket_starts = np.arange(buckets, dtype=np.int64) << self._shift
            self._first = np.searchsorted(unit_starts, bucket_starts, side="right") - 1

    def __call__(self, indices: np.ndarray) -> np.ndarray:
        if self._first is None:
            return np.searchsorted(self._starts, indices, side="right") - 1
        units = self._first[indices >> self._shift]
        # the next unit may start inside the bucket (past the last unit: never, indices < n)
        nxt = np.minimum(units + 1, len(self._starts) - 1)
        return units + (indices >= self._starts[nxt])


class RowCache:
    """The decoded columns of the last few I/O units (row groups, record runs), LRU."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._items: OrderedDict[int, Any] = OrderedDict()

    def get(self, key: int, load: Callable[[], Any]) -> Any:
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key]
        value = load()
        self._items[key] = value
        while len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value


def _store(dst: np.ndarray | None, values: np.ndarray) -> np.ndarray:
    """``values``, written into ``dst`` when there is one."""
    if dst is None:
        return values
    dst[...] = values
    return dst


def float32(a: np.ndarray) -> np.ndarray:
    return a.astype(np.float32) if a.dtype == np.float64 else a


def numeric(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.number) or dtype == np.bool_


class ColumnSource(Source):
    """A file source once its files are known: units (row groups / record runs) with their
    global start, a loader per unit, and the per-example column specs (name -> (dtype, shape))."""

    #: The files' own type names of the columns, for messages (e.g. Arrow's ``string``).
    type_names: dict[str, str] = {}  # noqa: RUF012  (replaced per instance, never mutated)

    def __init__(
        self,
        spec: FileSource,
        unit_rows: Sequence[int],
        columns: dict[str, tuple[np.dtype, tuple[int, ...]]],
        map_fn: Callable[..., Any] | None,
        where: str,
        default_block: int,
    ) -> None:
        super().__init__()
        self.spec = spec
        self.where = where
        self.map_fn = map_fn
        self.columns = columns
        self._unit_starts = np.concatenate([[0], np.cumsum(unit_rows)]).astype(np.int64)
        self.examples = int(self._unit_starts[-1])
        self.unit_of = UnitLookup(self._unit_starts)
        self.block = spec.block_size or default_block
        # without a block_size, a block is one unit (row group / record run): no block
        # straddles two units, so a block costs one unit's read
        aligned = not spec.block_size and min(unit_rows) > 0
        self.block_sizes = np.asarray(unit_rows, np.int64) if aligned else None
        self.window_blocks = spec.window_blocks
        smallest = max(1, min(r for r in unit_rows if r > 0))
        per_block = -(-self.block // smallest) + 1
        self._cache = RowCache(2 * max(1, self.window_blocks or 8) * per_block)
        self._check_types()
        self.raw_spec = self._raw_spec()
        self._read_lock = threading.Lock()
        self._slab = UnitSlab(
            self._unit_starts,
            tf.nest.flatten(self.raw_spec),
            self.load_units,
            capacity=min(self._cache.capacity, 4 * max(1, self.window_blocks or 8)),
            max_bytes=DEFAULT_ROW_CACHE_BYTES,
        )

    # -- subclasses ------------------------------------------------------------------------
    def load_unit(self, unit: int) -> dict[str, np.ndarray]:
        raise NotImplementedError

    # -- reading ---------------------------------------------------------------------------
    def unit_raw(self, unit: int) -> list[np.ndarray]:
        """A unit's rows as ``read`` returns them (converted once, then cached)."""
        return list(tf.nest.flatten(self._raw_rows(self.load_unit(unit))))

    def load_units(self, into: dict[int, list[np.ndarray]]) -> None:
        """Write each unit's rows, as ``read`` returns them, into its arrays ``into[unit]``, one
        unit after another (a source may load them concurrently)."""
        for unit, out in into.items():
            self._raw_rows(self.load_unit(unit), out)

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        with self._read_lock:  # pipelines of one process share the slab and the cache
            return self._read(indices)

    def _read(self, indices: np.ndarray) -> list[np.ndarray]:
        indices = np.asarray(indices, np.int64)
        units = self.unit_of(indices)
        taken = self._slab.take(indices, units) if len(indices) else None
        if taken is not None:
            self.counter.add(len(indices))
            return taken
        out = [
            aligned_empty((len(indices), *s.shape), s.dtype.as_numpy_dtype)
            for s in tf.nest.flatten(self.raw_spec)
        ]
        by_unit = np.argsort(units, kind="stable")
        bounds = np.flatnonzero(np.diff(units[by_unit])) + 1
        for rows in np.split(by_unit, bounds) if len(indices) else []:
            unit = int(units[rows[0]])
            arrays = self._cache.get(unit, functools.partial(self.unit_raw, unit))
            local = indices[rows] - self._unit_starts[unit]
            for o, a in zip(out, arrays, strict=True):
                o[rows] = a[local]
        self.counter.add(len(indices))
        return out

    def _raw_rows(self, cols: dict[str, np.ndarray], out: list[np.ndarray] | None = None) -> Any:
        """A unit's columns as ``read``'s rows; written into ``out`` (one array per flat entry of
        ``raw_spec``, as long as the unit) when given."""
        if self.map_fn is not None:
            if out is not None:
                for dst, src in zip(out, tf.nest.flatten((cols,)), strict=True):
                    dst[...] = src
            return (cols,)
        spec = self.spec
        feats = [cols[f] for f in spec.features]
        into: list[np.ndarray | None] = [*out] if out is not None else [None, None, None]
        if len(feats) == 1 and feats[0].ndim > 1:
            x = _store(into[0], float32(feats[0]))
        else:  # one pass per column, cast on assignment (no float32 copies, no stack)
            x = np.empty((len(feats[0]), len(feats)), np.float32) if into[0] is None else into[0]
            for j, f in enumerate(feats):
                x[:, j] = f
        rows = [x, _store(into[1], float32(cols[str(spec.label)]))]
        if spec.weight is not None:
            rows.append(_store(into[2], cols[spec.weight].astype(np.float32)))
        return tuple(rows)

    def _raw_spec(self) -> Any:
        probe = {
            name: np.zeros((1, *shape), dtype) for name, (dtype, shape) in self.columns.items()
        }
        rows = self._raw_rows(probe)
        return tf.nest.map_structure(
            lambda a: tf.TensorSpec(a.shape[1:], tf.as_dtype(a.dtype)), rows
        )

    def apply_map(self, raw: Any) -> Any:
        assert self.map_fn is not None
        return self.map_fn(dict(raw[0]) if isinstance(raw, tuple) else dict(raw))

    def _check_types(self) -> None:
        spec = self.spec
        for name, (dtype, shape) in self.columns.items():
            if self.map_fn is not None:
                continue
            if not numeric(dtype):
                raise DataSourceError(
                    spec.url,
                    f"column {name!r} has type {self.type_names.get(name, dtype)} (not numeric)",
                    "use numeric columns, or give a map (file.py:fn) that decodes it",
                )
            if name in (spec.label, spec.weight) and shape:
                raise DataSourceError(
                    spec.url,
                    f"column {name!r} is a list/tensor of shape {shape}; label and weight must be "
                    "numeric scalars",
                    "name a scalar column, or give a map that builds (x, y)",
                )
        feats = [self.columns[f][1] for f in spec.features]
        if self.map_fn is None and len(feats) > 1 and any(feats):
            raise DataSourceError(
                spec.url,
                "features mix list/tensor columns with others "
                f"({dict(zip(spec.features, feats, strict=True))})",
                "give scalar columns only (stacked into x), one list/tensor column, or a map",
            )


def missing_columns(spec: FileSource, available: Sequence[str]) -> None:
    missing = [c for c in spec.columns if c not in available]
    if missing:
        raise DataSourceError(
            spec.url,
            f"missing column{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}",
            f"name columns the files have: {', '.join(available)}",
        )
