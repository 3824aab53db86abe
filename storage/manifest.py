"""The checkpoint manifest: which files a committed step has (size + sha256) and its state.

``MANIFEST.json`` is written last; its presence is what makes a step committed. JSON only,
never pickle. ``state`` is the caller's JSON training state (epoch, step, seeds, callback
states...), stored as given.

The manifest covers itself: ``digest`` is the sha256 of the canonical JSON of every other field
(files, state, prefix, generation...), so an edited ``global_step`` or a dropped file entry fails
:meth:`Manifest.from_json` like a torn manifest does. ``prefix`` is the per-commit folder inside
the step directory that holds the files (file paths are relative to it); ``generation`` is the
lease generation of the writer that committed it. Manifests of format 1 (no digest, no prefix)
are still read.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from storage.constants import DEFAULT_HASH_BLOCK_BYTES, MANIFEST_FORMAT, SPOTRAIN_VERSION
from storage.errors import CheckpointStateError, CorruptCheckpointError
from storage.location import validate_relpath, validate_step


@dataclass(frozen=True)
class FileEntry:
    """One file of a checkpoint: ``path`` relative to the step directory ('/'-separated)."""

    path: str
    size: int
    sha256: str

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "size": self.size, "sha256": self.sha256}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> FileEntry:
        path, size, digest = d["path"], d["size"], d["sha256"]
        if not isinstance(size, int) or size < 0 or not isinstance(digest, str):
            raise ValueError(f"bad file entry {d!r}")
        return cls(path=validate_relpath(path), size=size, sha256=digest)


@dataclass(frozen=True)
class Manifest:
    """A committed checkpoint: its step, files, the caller's training state, and provenance."""

    step: int
    files: tuple[FileEntry, ...]
    state: dict[str, Any] = field(default_factory=dict)
    created: float = field(default_factory=time.time)
    spotrain_version: str = SPOTRAIN_VERSION
    format: int = MANIFEST_FORMAT
    #: the per-commit folder (inside the step directory) holding the files; "" = the step dir
    prefix: str = ""
    #: lease generation of the writer (None: written without a fence)
    generation: int | None = None
    #: sha256 of the canonical body (every field but this one); set by ``to_json``/``from_json``
    digest: str = ""

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def verify_file(self, rel: str, got: tuple[int, str] | None, where: str) -> None:
        """CorruptCheckpointError unless ``got`` (size, sha256) of file ``rel`` is as listed."""
        if got is None:
            raise CorruptCheckpointError(f"step {self.step}: file {rel} is missing", where)
        size, digest = got
        (entry,) = (e for e in self.files if e.path == rel)
        if size != entry.size or digest != entry.sha256:
            raise CorruptCheckpointError(
                f"step {self.step}: file {rel} has size {size} sha256 {digest[:12]}..., "
                f"manifest says size {entry.size} sha256 {entry.sha256[:12]}...",
                where,
            )

    def file_path(self, rel: str) -> str:
        """Path of file ``rel`` relative to the step directory (below the commit folder)."""
        return f"{self.prefix}/{rel}" if self.prefix else rel

    def body(self) -> dict[str, Any]:
        """Every field but ``digest`` (what the digest covers)."""
        d: dict[str, Any] = {
            "format": self.format,
            "step": self.step,
            "created": self.created,
            "spotrain_version": self.spotrain_version,
            "files": [f.to_dict() for f in self.files],
            "state": self.state,
        }
        if self.format >= 2:
            d["prefix"] = self.prefix
            d["generation"] = self.generation
        return d

    def to_dict(self) -> dict[str, Any]:
        d = self.body()
        if self.format >= 2:
            d["digest"] = body_digest(d)
        return d

    def to_json(self) -> bytes:
        return dumps_json(self.to_dict(), what="checkpoint state").encode()

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Manifest:
        fmt = d.get("format", 1)
        if not isinstance(fmt, int) or fmt > MANIFEST_FORMAT:
            raise ValueError(
                f"manifest format {fmt!r} is newer than this spotrain ({MANIFEST_FORMAT}); "
                "upgrade spotrain"
            )
        state = d.get("state", {})
        if not isinstance(state, dict):
            raise ValueError("manifest state is not an object")
        prefix = d.get("prefix", "") if fmt >= 2 else ""
        if not isinstance(prefix, str) or (prefix and "/" in validate_relpath(prefix)):
            raise ValueError(f"manifest prefix {prefix!r} is not one folder name")
        generation = d.get("generation") if fmt >= 2 else None
        if generation is not None and (
            isinstance(generation, bool) or not isinstance(generation, int)
        ):
            raise ValueError(f"manifest generation {generation!r} is not an integer")
        m = cls(
            step=validate_step(d["step"]),
            files=tuple(FileEntry.from_dict(f) for f in d["files"]),
            state=state,
            created=float(d["created"]),
            spotrain_version=str(d.get("spotrain_version", "unknown")),
            format=fmt,
            prefix=prefix,
            generation=generation,
        )
        if fmt >= 2:
            want = body_digest(m.body())
            if d.get("digest") != want:
                raise ValueError(
                    f"manifest digest {str(d.get('digest'))[:12]}... does not match its body "
                    f"({want[:12]}...): the manifest was edited or torn"
                )
            m = replace(m, digest=want)
        return m

    @classmethod
    def from_json(cls, data: bytes | str, where: str = "") -> Manifest:
        """Parse a manifest; CorruptCheckpointError if it is not a valid one."""
        try:
            return cls.from_dict(json.loads(data))
        except (ValueError, KeyError, TypeError) as exc:
            raise CorruptCheckpointError(f"unreadable manifest {where}: {exc}", where) from exc


def body_digest(body: Mapping[str, Any]) -> str:
    """sha256 (hex) of the canonical JSON of a manifest body."""
    return hashlib.sha256(dumps_json(dict(body), what="checkpoint state").encode()).hexdigest()


def dumps_json(obj: Any, what: str = "value") -> str:
    """Canonical JSON (sorted keys, no NaN); CheckpointStateError if ``obj`` is not JSON."""
    try:
        return json.dumps(obj, sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise CheckpointStateError(
            f"{what} is not plain JSON ({exc}); fix: pass only dict/list/str/int/float/bool/None "
            "values, finite floats, convert numpy scalars with .item() (no pickle in checkpoints)"
        ) from exc


def sha256_file(
    path: str | os.PathLike[str], block_bytes: int = DEFAULT_HASH_BLOCK_BYTES
) -> tuple[int, str]:
    """(size, sha256 hex) of a local file, read in large blocks (hashlib releases the GIL)."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(block_bytes)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            h.update(view[:n])
            size += n
    return size, h.hexdigest()


def copy_and_hash(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    block_bytes: int = DEFAULT_HASH_BLOCK_BYTES,
) -> tuple[int, str]:
    """Copy a local file to a local path and return (size, sha256 hex) in the same single pass."""
    h = hashlib.sha256()
    size = 0
    buf = bytearray(block_bytes)
    view = memoryview(buf)
    with open(src, "rb", buffering=0) as fin, open(dst, "wb", buffering=0) as fout:
        while True:
            n = fin.readinto(buf)
            if not n:
                break
            chunk = view[:n]
            h.update(chunk)
            while chunk:
                written = fout.write(chunk)
                chunk = chunk[written:]
            size += n
    return size, h.hexdigest()
