"""Parquet files on any fsspec URL, read by pyarrow, addressed by example index.

Opening reads every file's footer only (row counts and the schema: never a data pass); the
first row group is read too when a list/tensor column needs its shape. A worker reads a row
group (only the job's columns) the first time one of *its* rows lies in it and keeps the last
few decoded (``UnitSlab``: about two shuffle windows, one array per column, so a read is one
gather whatever the row groups its rows lie in). By default a shuffle block is one row
group, so a read of ``SPOTRAIN_READ_ROWS`` positions touches the row groups of one window
(two at its edge): write files with row groups of ~10^4-10^5 rows.

Bytes per worker: the column chunks of every row group holding one of its rows. Each global
batch is drawn from one window of ``window_blocks`` blocks, so with ``W`` workers each reads
about the window's row groups (up to ``W`` x its share of raw column bytes), but converts,
maps and hands to the model only its own ``G/W`` rows per step.
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, wait
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from trainer.data_spec import FileSource
from trainer.errors import DataSourceError
from trainer.file_source_base import (
    ColumnSource,
    list_files,
    missing_columns,
    open_filesystem,
)
from trainer.sources import ReadCounter

SUFFIXES = (".parquet", ".pq")
#: Threads that read row groups of different files at once.
READ_THREADS = 8


def column_array(arr: pa.Array | pa.ChunkedArray, name: str, url: str) -> np.ndarray:
    """A column as a NumPy array (rows, *shape); lists of equal length become a tensor axis."""
    if isinstance(arr, pa.ChunkedArray):  # one chunk (a row group's): no concatenation copy
        arr = arr.chunk(0) if arr.num_chunks == 1 else arr.combine_chunks()
    if arr.null_count:
        raise DataSourceError(url, f"column {name!r} has null values", "fill or drop them")
    shape = [len(arr)]
    while (
        pa.types.is_list(arr.type)
        or pa.types.is_large_list(arr.type)
        or (pa.types.is_fixed_size_list(arr.type))
    ):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False)
        if len(lengths) and (lengths != lengths[0]).any():
            raise DataSourceError(
                url,
                f"column {name!r} holds lists of different lengths "
                f"({int(lengths.min())}..{int(lengths.max())})",
                "pad them to one length, or give a map that handles them",
            )
        shape.append(int(lengths[0]) if len(lengths) else 0)
        arr = arr.flatten()
    if (
        pa.types.is_string(arr.type)
        or pa.types.is_binary(arr.type)
        or (pa.types.is_large_string(arr.type) or pa.types.is_large_binary(arr.type))
    ):
        values = np.array(
            [v if isinstance(v, bytes) else str(v).encode() for v in arr.to_pylist()],
            dtype=object,
        )
    else:
        values = arr.to_numpy(zero_copy_only=False)
    return values.reshape(shape)


def _numpy_dtype(t: pa.DataType) -> np.dtype:
    while pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        t = t.value_type
    if pa.types.is_string(t) or pa.types.is_binary(t) or pa.types.is_large_string(t):
        return np.dtype(object)
    try:
        return np.dtype(t.to_pandas_dtype())
    except (NotImplementedError, TypeError):
        return np.dtype(object)


class ParquetSource(ColumnSource):
    """The row groups of every file, in file order, as one index space."""

    def __init__(
        self, spec: FileSource, map_fn: Callable[..., Any] | None = None, where: str = "data"
    ) -> None:
        self.spec = spec
        self.counter = ReadCounter()  # footers count too
        fs, path = open_filesystem(spec)
        self._fs = fs
        # pyarrow's own reader: native for local files, through fsspec otherwise; pre_buffer
        # coalesces a row group's column chunks into few reads (few requests on S3)
        self._arrow_fs = (
            pafs.LocalFileSystem() if _is_local(fs) else pafs.PyFileSystem(pafs.FSSpecHandler(fs))
        )
        self._files = list_files(fs, path, spec, SUFFIXES)
        self._handles: dict[int, pq.ParquetFile] = {}
        self._units: list[tuple[int, int]] = []  # (file, row group)
        rows: list[int] = []
        schema = None
        for i, _ in enumerate(self._files):
            meta = self._file(i).metadata
            if meta.num_rows == 0:
                raise DataSourceError(
                    spec.url, f"{self._files[i]} has no rows", "remove it or write it again"
                )
            file_schema = self._file(i).schema_arrow
            if schema is None:
                schema = file_schema
                missing_columns(spec, schema.names)
            for c in spec.columns:
                if c not in file_schema.names or file_schema.field(c).type != schema.field(c).type:
                    raise DataSourceError(
                        spec.url,
                        f"{self._files[i]}: column {c!r} is missing or has another type than in "
                        f"{self._files[0]} ({schema.field(c).type})",
                        "write every file with the same schema",
                    )
            for g in range(meta.num_row_groups):
                self._units.append((i, g))
                rows.append(meta.row_group(g).num_rows)
        assert schema is not None
        first_rows = next(r for r in rows if r > 0)
        columns = {}
        needs_shape = any(_is_list(schema.field(c).type) for c in spec.columns)
        probe = self._read_unit(0) if needs_shape else {}
        for c in spec.columns:
            t = schema.field(c).type
            shape = tuple(probe[c].shape[1:]) if c in probe else ()
            columns[c] = (_numpy_dtype(t), shape)
        self.type_names = {c: str(schema.field(c).type) for c in spec.columns}
        self._probe = probe or None  # row group 0, read for the shapes: its first load
        self._pool: ThreadPoolExecutor | None = None
        super().__init__(spec, rows, columns, map_fn, where, first_rows)

    @property
    def files(self) -> list[str]:
        return list(self._files)

    def _file(self, i: int) -> pq.ParquetFile:
        if i not in self._handles:
            try:
                handle = pq.ParquetFile(
                    self._arrow_fs.open_input_file(self._files[i]), pre_buffer=True
                )
            except (pa.ArrowInvalid, OSError) as exc:
                raise DataSourceError(
                    self.spec.url,
                    f"{self._files[i]} is not a Parquet file ({exc})",
                    "point the URL at Parquet files only",
                ) from None
            # the footer: its serialized metadata, plus length and magic
            self.counter.add(nbytes=handle.metadata.serialized_size + 8)
            self._handles[i] = handle
        return self._handles[i]

    def _read_unit(self, unit: int) -> dict[str, np.ndarray]:
        i, g = self._units[unit]
        names = list(self.spec.columns)
        handle = self._file(i)
        table = handle.read_row_group(g, columns=names)
        group = handle.metadata.row_group(g)
        wanted = set(names)
        self.counter.add(
            nbytes=sum(
                group.column(c).total_compressed_size
                for c in range(group.num_columns)
                if group.column(c).path_in_schema in wanted
            )
        )
        return {c: column_array(table.column(c), c, self.spec.url) for c in names}

    def load_unit(self, unit: int) -> dict[str, np.ndarray]:
        if unit == 0 and self._probe is not None:
            probe, self._probe = self._probe, None
            return probe
        return self._read_unit(unit)

    def load_units(self, into: dict[int, list[np.ndarray]]) -> None:
        """Row groups of different files are read concurrently (``READ_THREADS``: on S3 a
        window's row groups cost about one request's latency, not one per row group); the row
        groups of one file one after another, on one thread (one ``ParquetFile`` each)."""
        by_file: dict[int, dict[int, list[np.ndarray]]] = {}
        for unit, out in into.items():
            by_file.setdefault(self._units[unit][0], {})[unit] = out
        if len(by_file) < 2:
            super().load_units(into)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(READ_THREADS, "spotrain-parquet")
        # unit 0 (the probe's, taken by load_unit) is in one file: one thread touches it
        load_file = super().load_units
        loads = [self._pool.submit(load_file, units) for units in by_file.values()]
        wait(loads)  # all done before a failure is raised: none writes into a released slot
        for done in loads:
            done.result()


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t))


def _is_local(fs: object) -> bool:
    proto = getattr(fs, "protocol", "")
    return (proto if isinstance(proto, str) else proto[0]) in ("file", "local")
