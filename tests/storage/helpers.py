"""Small helpers for storage tests (imported as tests.storage.helpers)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


def make_checkpoint(
    root: Path, sizes: dict[str, int] | None = None, seed: int = 0
) -> dict[str, bytes]:
    """Write files of the given sizes (random bytes) under ``root``; return their contents."""
    sizes = sizes or {"weights.data-00000-of-00001": 3000, "weights.index": 200, "sub/opt.bin": 50}
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, (rel, size) in enumerate(sorted(sizes.items())):
        data = os.urandom(size) if seed == 0 else bytes((seed + i + j) % 251 for j in range(size))
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        out[rel] = data
    return out


def read_tree(root: Path) -> dict[str, bytes]:
    return {
        p.relative_to(root).as_posix(): p.read_bytes()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def step_file(store: Any, step: int, rel: str) -> str:
    """Path on ``store.fs`` of file ``rel`` of committed ``step`` (below its commit folder)."""
    return store.loc.step_dir(step) + "/" + store.manifest(step).file_path(rel)
