"""The job's file sources (``data: {parquet: ...}`` / ``{tfrecord: ...}``) as managed input:
open the files (metadata only), load the optional ``map`` entry point, check everything a bad
source would break before training starts (``DataSourceError``, ``UserCodeError`` for a map
that raises: neither is retried)."""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from trainer.data import DataContext, indexed_val_input
from trainer.data_spec import FileSource
from trainer.entry_points import load_entry_point
from trainer.errors import JobSpecError
from trainer.indexed_input import IndexedInput
from trainer.input_store import InputStore
from trainer.sources import Source
from trainer.user_code import user_code


def open_source(
    spec: FileSource,
    working_dir: str | None,
    where: str = "data",
    store: InputStore | None = None,
) -> Source:
    """The index-addressable source of a file spec (footers / index only: no data pass). A
    relative local path is resolved against ``working_dir`` (where ``spotrain run`` ran)."""
    if "://" not in spec.url and not os.path.isabs(spec.url) and working_dir:
        absolute = os.path.join(working_dir, spec.url)
        if spec.format == "parquet":
            spec = dataclasses.replace(spec, parquet=absolute)
        else:
            spec = dataclasses.replace(spec, tfrecord=absolute)
    map_fn = None
    if spec.map is not None:
        with user_code(f"{where}.map"):
            map_fn = load_entry_point(spec.map, working_dir)
    if spec.format == "parquet":
        from trainer.parquet_source import ParquetSource

        source: Source = ParquetSource(spec, map_fn, where)
    else:
        from trainer.tfrecord_source import TFRecordSource

        source = TFRecordSource(spec, map_fn, where, store)
    source.element_spec()  # runs the map once: a map that raises fails here
    return source


def file_input(
    spec: Any,
    ctx: DataContext,
    epochs: int,
    working_dir: str | None,
    store: InputStore | None = None,
) -> IndexedInput:
    if not isinstance(spec, FileSource):
        raise JobSpecError("data", spec, "expected an entry point or a file source")
    source = open_source(spec, working_dir, "data", store)
    if source.examples < ctx.global_batch_size:
        raise JobSpecError(
            "global_batch_size",
            ctx.global_batch_size,
            f"{spec.url} has only {source.examples} examples, fewer than one global batch; "
            "use a smaller global_batch_size or more data",
        )
    return IndexedInput(source, ctx.global_batch_size, ctx.seed, epochs)


def file_val_input(
    spec: Any,
    ctx: DataContext,
    working_dir: str | None,
    strategy: Any,
    store: InputStore | None = None,
) -> tuple[Any, int]:
    if not isinstance(spec, FileSource):
        raise JobSpecError("val_data", spec, "expected an entry point or a file source")
    return indexed_val_input(open_source(spec, working_dir, "val_data", store), ctx, strategy)
