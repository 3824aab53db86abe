"""TFRecord files of ``tf.train.Example`` (uncompressed) on any fsspec URL, addressed by index.

Record counts and offsets come from an index per file, built by one pass over the file once
and never again: ``<file>.idx`` beside the data when it exists (DALI's ``tfrecord2idx`` text
format: one ``offset length`` line per record; ``python -m trainer.tfrecord_source URL``
writes them), else ``<run>/input/tfrecord/<key>.idx`` in the run, written by the first attempt.

Resume scheme: full random access, no replay. A block of ``block_size`` consecutive records
of one file is read with one ranged read; a worker keeps the serialized records of the last
few blocks and parses (``tf.io.parse_example``) and maps only its own rows. The feature
spec (dtype, length of each feature) is taken from the first record.
"""

from __future__ import annotations

import functools
import struct
import sys
from collections.abc import Callable
from typing import Any

import numpy as np

from trainer import env  # noqa: F401  (TF_USE_LEGACY_KERAS before tensorflow)
from trainer.data_spec import FileSource
from trainer.errors import DataSourceError
from trainer.file_source_base import ColumnSource, list_files, missing_columns, open_filesystem
from trainer.input_store import InputStore, stable_key
from trainer.sources import ReadCounter

import tensorflow as tf  # isort: skip

SUFFIXES = (".tfrecord", ".tfrecords")
DEFAULT_BLOCK = 1024
_HEADER = 12  # u64 length + u32 crc of the length; the data is followed by a u32 crc


def scan_offsets(data: bytes, name: str, url: str) -> np.ndarray:
    """(offset, length) of every record frame in a TFRecord file's bytes."""
    out = []
    pos, end = 0, len(data)
    while pos < end:
        if pos + _HEADER > end:
            raise DataSourceError(url, f"{name} ends inside a record header", "write it again")
        (length,) = struct.unpack_from("<Q", data, pos)
        frame = _HEADER + length + 4
        if pos + frame > end:
            raise DataSourceError(url, f"{name} ends inside a record", "write it again")
        out.append((pos, frame))
        pos += frame
    return np.array(out, dtype=np.int64).reshape(-1, 2)


def index_text(offsets: np.ndarray) -> bytes:
    return "".join(f"{o} {n}\n" for o, n in offsets).encode()


def parse_index(text: bytes) -> np.ndarray:
    values = np.array(text.split(), dtype=np.int64)
    return values.reshape(-1, 2)


def frames_to_records(data: bytes, offsets: np.ndarray, base: int) -> list[bytes]:
    return [data[o - base + _HEADER : o - base + n - 4] for o, n in offsets]


class TFRecordSource(ColumnSource):
    """The records of every file, in file order, as one index space."""

    def __init__(
        self,
        spec: FileSource,
        map_fn: Callable[..., Any] | None = None,
        where: str = "data",
        store: InputStore | None = None,
    ) -> None:
        self.spec = spec
        self.counter = ReadCounter()
        self._fs, path = open_filesystem(spec)
        self._files = list_files(self._fs, path, spec, SUFFIXES)
        self._offsets = [self._index(f, store) for f in self._files]
        block = spec.block_size or DEFAULT_BLOCK
        self._units: list[tuple[int, int, int]] = []  # (file, first record, end record)
        for i, off in enumerate(self._offsets):
            if len(off) == 0:
                raise DataSourceError(spec.url, f"{self._files[i]} has no records", "remove it")
            for a in range(0, len(off), block):
                self._units.append((i, a, min(a + block, len(off))))
        self._feature_spec = self._infer_features()
        columns = {
            c: (np.dtype(f.dtype.as_numpy_dtype), tuple(f.shape))
            for c, f in self._feature_spec.items()
        }
        super().__init__(spec, [b - a for _, a, b in self._units], columns, map_fn, where, block)

    def _index(self, file: str, store: InputStore | None) -> np.ndarray:
        beside = f"{file}.idx"
        if self._fs.exists(beside):
            return parse_index(self._fs.cat_file(beside))
        key = stable_key(self._fs.protocol, file, int(self._fs.size(file)))
        if store is not None:
            stored = store.blob("tfrecord", f"{key}.idx")
            if stored is not None:
                return parse_index(stored)
        offsets = scan_offsets(self._fs.cat_file(file), file, self.spec.url)
        if store is not None:
            store.put_blob("tfrecord", f"{key}.idx", index_text(offsets))
        return offsets

    def _records(self, file: int, first: int, end: int) -> list[bytes]:
        off = self._offsets[file][first:end]
        start, stop = int(off[0][0]), int(off[-1][0] + off[-1][1])
        data = self._fs.cat_file(self._files[file], start=start, end=stop)
        self.counter.add(nbytes=len(data))
        return frames_to_records(data, off, start)

    def _infer_features(self) -> dict[str, Any]:
        (first,) = self._records(0, 0, 1)
        try:
            example = tf.train.Example.FromString(first)
        except Exception as exc:
            raise DataSourceError(
                self.spec.url,
                f"{self._files[0]}: the first record is not a tf.train.Example ({exc})",
                "write tf.train.Example records (uncompressed)",
            ) from None
        feats = example.features.feature
        missing_columns(self.spec, sorted(feats))
        out = {}
        for c in self.spec.columns:
            kind = feats[c].WhichOneof("kind")
            values = getattr(feats[c], kind).value if kind else []
            dtype = {"float_list": tf.float32, "int64_list": tf.int64}.get(kind or "", tf.string)
            shape = [] if len(values) == 1 else [len(values)]
            out[c] = tf.io.FixedLenFeature(shape, dtype)
        return out

    def load_unit(self, unit: int) -> dict[str, np.ndarray]:
        i, a, b = self._units[unit]
        return {"__records__": np.array(self._records(i, a, b), dtype=object)}

    def read(self, indices: np.ndarray) -> list[np.ndarray]:
        indices = np.asarray(indices, np.int64)
        units = self.unit_of(indices)
        serialized = np.empty(len(indices), dtype=object)
        for unit in np.unique(units):
            at = units == unit
            cols = self._cache.get(int(unit), functools.partial(self.load_unit, int(unit)))
            serialized[at] = cols["__records__"][indices[at] - self._unit_starts[unit]]
        try:
            parsed = tf.io.parse_example(tf.constant(list(serialized)), self._feature_spec)
        except tf.errors.InvalidArgumentError as exc:
            raise DataSourceError(
                self.spec.url,
                f"records do not match the first record's features ({exc.message[:200]})",
                "write every record with the same features and lengths",
            ) from None
        self.counter.add(len(indices))
        return tf.nest.flatten(self._raw_rows({k: v.numpy() for k, v in parsed.items()}))


def write_indexes(url: str, storage_options: dict[str, Any] | None = None) -> list[str]:
    """Write ``<file>.idx`` beside every TFRecord file of ``url`` (one pass per file)."""
    spec = FileSource(
        tfrecord=url, features=("_",), label="_", storage_options=storage_options or {}
    )
    fs, path = open_filesystem(spec)
    written = []
    for f in list_files(fs, path, spec, SUFFIXES):
        fs.pipe_file(f"{f}.idx", index_text(scan_offsets(fs.cat_file(f), f, url)))
        written.append(f"{f}.idx")
    return written


if __name__ == "__main__":  # python -m trainer.tfrecord_source URL: indexes beside the data
    for line in write_indexes(sys.argv[1]):
        print(line)
