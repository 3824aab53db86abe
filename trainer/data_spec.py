"""The job spec's file sources (``data:`` / ``val_data:`` as a mapping), declared once (pydantic,
no TensorFlow): Parquet or TFRecord files on any fsspec URL that spotrain reads itself::

    data:     {parquet: s3://bucket/train/, features: [f0, f1, f2], label: y}
    val_data: {parquet: s3://bucket/val/,   features: [f0, f1, f2], label: y}
    data:     {tfrecord: gs://bucket/train-*.tfrecord, features: [image], label: y,
               map: examples/decode.py:decode}

The URL is a file, a folder (every ``.parquet`` / ``.tfrecord`` file below it) or a glob.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, StrictInt, StrictStr, field_validator, model_validator
from pydantic.dataclasses import dataclass

from trainer.entry_points import ENTRY_POINT_FORMS, parse_entry_point
from trainer.job_schema import SCHEMA_CONFIG, Rule, invalid

#: The formats a file source may name (exactly one key of them).
FORMATS = ("parquet", "tfrecord")
_MAP_HINT = f"expected {ENTRY_POINT_FORMS}; fn(features: dict, label) returns (x, y[, w])"


@dataclass(frozen=True, kw_only=True, config=SCHEMA_CONFIG)
class FileSource:
    """Parquet or TFRecord files spotrain reads itself: row counts from metadata (Parquet
    footers, a TFRecord index written once), each worker reads and maps only its own rows."""

    parquet: StrictStr | None = None
    """URL of Parquet files: a file, a folder (every ``*.parquet`` below it) or a glob."""
    tfrecord: StrictStr | None = None
    """URL of TFRecord files of ``tf.train.Example`` (uncompressed): a file, folder or glob."""
    features: Annotated[
        tuple[StrictStr, ...], Field(min_length=1), Rule("a non-empty list of column names")
    ]
    """Columns (features of a tf.train.Example) that make ``x``: numeric scalar columns are
    stacked into a float32 vector; a single list/tensor column is ``x`` as is."""
    label: StrictStr | None = None
    """Column of ``y`` (numeric). Required unless ``map`` returns ``(x, y)``."""
    weight: StrictStr | None = None
    """Optional column of per-example sample weights."""
    map: StrictStr | None = None
    """``file.py:fn`` run per example on the worker's own rows (decode, augment):
    ``fn(features: dict[str, tf.Tensor], label) -> (x, y[, w])``, traced by tf.data."""
    storage_options: dict[Any, Any] = Field(default_factory=dict)
    """fsspec options of the data's filesystem (endpoint, region...); secrets: environment."""
    block_size: Annotated[
        StrictInt | None, Field(ge=1), Rule("an integer >= 1 (examples) or null")
    ] = None
    """Examples per shuffle block (default: one block per Parquet row group, or per run of 1024
    records of a TFRecord file: a block is the I/O unit)."""
    window_blocks: Annotated[StrictInt, Field(ge=0), Rule("0 (all) or an integer >= 1")] = 8
    """Blocks shuffled together (a worker caches one window's blocks); 0 = the whole epoch."""

    @field_validator("map")
    @classmethod
    def _map_entry(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            parse_entry_point(value)
        except ValueError:
            raise invalid(_MAP_HINT, value) from None
        return value.strip()

    @model_validator(mode="after")
    def _one_format(self) -> FileSource:
        given = [f for f in FORMATS if getattr(self, f) is not None]
        if len(given) != 1:
            raise invalid(
                "give exactly one of " + ", ".join(FORMATS) + " (the URL of the files)",
                given or None,
                FORMATS[0],
            )
        url = getattr(self, given[0])
        if not url.strip():
            raise invalid("a URL: a file, a folder or a glob", url, given[0])
        if self.label is None and self.map is None:
            raise invalid("a column name (or a map that returns (x, y))", None, "label")
        return self

    @property
    def format(self) -> str:
        return "parquet" if self.parquet is not None else "tfrecord"

    @property
    def url(self) -> str:
        return self.parquet if self.parquet is not None else str(self.tfrecord)

    @property
    def columns(self) -> tuple[str, ...]:
        """Every column read: features, then label and weight (in that order, once each)."""
        out = list(self.features)
        for extra in (self.label, self.weight):
            if extra is not None and extra not in out:
                out.append(extra)
        return tuple(out)
