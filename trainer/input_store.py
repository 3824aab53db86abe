"""What spotrain keeps in the run about its input, so that no attempt reads the data to learn
its size: ``<run>/input/counts/<key>.json`` (the length of a dataset whose cardinality
tf.data does not know, counted once) and ``<run>/input/tfrecord/<key>.idx`` (the record
offsets of a TFRecord file whose index is not beside it).

Entries are written whole, once, and never change (the same key always gets the same
content: every rank may write it, the last write wins with equal bytes), so they need no
commit protocol. A key names what was measured (``stable_key``).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from typing import Any

from storage.location import RunLocation


def stable_key(*parts: Any) -> str:
    """A short, stable hex key of JSON-able parts."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


class InputStore:
    """The run's ``input/`` folder; ``None``-safe helpers for tests without a run."""

    def __init__(self, run_url: str, storage_options: dict[str, Any] | None = None) -> None:
        self.location = RunLocation.from_url(run_url, storage_options)

    def _path(self, kind: str, name: str) -> str:
        return self.location.path("input", kind, name)

    def count(self, key: str) -> int | None:
        path = self._path("counts", f"{key}.json")
        try:
            with self.location.fs.open(path, "rb") as f:
                return int(json.loads(f.read())["examples"])
        except (FileNotFoundError, KeyError, ValueError, TypeError):
            return None

    def put_count(self, key: str, examples: int, what: str) -> None:
        self._write(
            self._path("counts", f"{key}.json"),
            json.dumps({"examples": int(examples), "what": what}).encode(),
        )

    def blob(self, kind: str, name: str) -> bytes | None:
        try:
            with self.location.fs.open(self._path(kind, name), "rb") as f:
                data: bytes = f.read()
                return data
        except FileNotFoundError:
            return None

    def put_blob(self, kind: str, name: str, data: bytes) -> None:
        self._write(self._path(kind, name), data)

    def _write(self, path: str, data: bytes) -> None:
        fs = self.location.fs
        parent = path.rsplit("/", 1)[0]
        if self.location.is_local:
            fs.makedirs(parent, exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        with fs.open(tmp, "wb") as f:
            f.write(data)
        fs.mv(tmp, path)
