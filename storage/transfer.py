"""Parallel copies of whole files between local disk and one fsspec filesystem.

:func:`run_parallel` is the one thread-pool pattern of the package: jobs run on up to
``concurrency`` threads, the first failure cancels the jobs not yet started and is re-raised
once the running ones have ended. :class:`FileTransfer` puts and gets lists of files with it,
each storage call retried by the caller's retry function. On real local files (not a wrapper)
copy and sha256 are one pass per file, and an upload that may consume its source (the caller
hands the directory over) hard-links it when both sides share a filesystem, then hashes the
linked file: the committed bytes themselves. Elsewhere the local side is hashed separately;
a big download from an object store can be split into parallel ranged GETs
(``SPOTRAIN_RANGED_GET_MIN_BYTES``, off by default).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from functools import partial
from pathlib import Path
from typing import Any, Protocol, TypeVar

from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

from storage.constants import (
    DEFAULT_RANGED_GET_MIN_BYTES,
    DEFAULT_RANGED_GET_PART_BYTES,
    MANIFEST_NAME,
)
from storage.errors import CheckpointStateError, CorruptCheckpointError
from storage.location import RunLocation, validate_relpath
from storage.manifest import Manifest, copy_and_hash, sha256_file

T = TypeVar("T")

#: (size, sha256 hex) of one file.
SizeAndHash = tuple[int, str]


class RetryingCall(Protocol):
    """``call(what, fn)``: run ``fn`` with the store's retries; ``what`` names it in errors."""

    def __call__(self, what: str, fn: Callable[[], T]) -> T: ...


def run_parallel(jobs: Sequence[Callable[[], None]], concurrency: int) -> None:
    """Run ``jobs`` on up to ``concurrency`` threads; re-raise the first failure.

    After a failure, jobs not yet started are cancelled; running ones finish before the error
    propagates, so nothing is left writing behind the caller's back.
    """
    if not jobs:
        return
    with ThreadPoolExecutor(
        max_workers=max(1, min(concurrency, len(jobs))), thread_name_prefix="spotrain-transfer"
    ) as pool:
        futures = [pool.submit(job) for job in jobs]
        wait(futures, return_when=FIRST_EXCEPTION)
        for f in futures:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled():
                exc = f.exception()
                if exc is not None:
                    raise exc


class FileTransfer:
    """Puts and gets whole files on ``fs``, ``concurrency`` at once, every call through ``call``."""

    def __init__(
        self,
        fs: AbstractFileSystem,
        *,
        concurrency: int,
        hash_block_bytes: int,
        call: RetryingCall,
    ) -> None:
        self.fs = fs
        self.concurrency = concurrency
        self.hash_block_bytes = hash_block_bytes
        self.call = call
        #: real local files (not a wrapper): single-pass copy + hash
        self.local = isinstance(fs, LocalFileSystem)

    # -- one file --------------------------------------------------------------------------
    def put_file(self, src: Path, dst: str, what: str, consume: bool = False) -> SizeAndHash | None:
        """Upload ``src`` to ``dst``; on local files also return (size, sha256) of what landed.
        ``consume``: ``src`` is the caller's no more (it will not change): link it if possible."""
        if self.local:
            os.makedirs(os.path.dirname(dst), exist_ok=True)
            if consume and _link(src, dst):
                return sha256_file(dst, self.hash_block_bytes)
            return self.call(what, lambda: copy_and_hash(src, dst, self.hash_block_bytes))
        self.call(what, lambda: self.fs.put_file(str(src), dst))
        return None

    def get_file(self, src: str, dst: Path, what: str, size: int | None = None) -> SizeAndHash:
        """Download ``src`` to ``dst``; return (size, sha256) of what landed. ``size``: the
        expected size (a big file from an object store is then fetched in parallel ranges)."""
        if self.local:
            return self.call(what, lambda: copy_and_hash(src, dst, self.hash_block_bytes))
        ranged = DEFAULT_RANGED_GET_MIN_BYTES
        if ranged and size is not None and size >= ranged and self.concurrency > 1:
            return self._get_ranged(src, dst, size, what)
        self.call(what, lambda: self.fs.get_file(src, str(dst)))
        return sha256_file(dst, self.hash_block_bytes)

    def _get_ranged(self, src: str, dst: Path, size: int, what: str) -> SizeAndHash:
        """``size`` bytes of ``src`` in parallel ranged GETs, written in place; a remote file
        of another size gives its own size back (the caller's check fails on it)."""
        part = DEFAULT_RANGED_GET_PART_BYTES
        fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        other_size: list[int] = []
        try:

            def fetch(start: int) -> None:
                last = start + part >= size
                end = size + 1 if last else start + part  # one byte more: a longer file shows
                data = self.call(what, lambda: self.fs.cat_file(src, start=start, end=end))
                if len(data) != min(end, size) - start:
                    other_size.append(start + len(data))
                os.pwrite(fd, data[: min(end, size) - start], start)

            run_parallel(
                [partial(fetch, s) for s in range(0, max(size, 1), part)], self.concurrency
            )
        finally:
            os.close(fd)
        got = sha256_file(dst, self.hash_block_bytes)
        return (other_size[0], got[1]) if other_size else got

    # -- lists of files --------------------------------------------------------------------
    def put_files(
        self, root: Path, rels: Sequence[str], dst_dir: str, consume: bool = False
    ) -> dict[str, SizeAndHash]:
        """Upload ``root/rel`` to ``dst_dir/rel`` for every ``rel``, biggest first (so the pool
        stays busy to the end), hashing the sources alongside. Returns {rel: (size, sha256)}.
        ``consume``: the files are handed over (see :meth:`put_file`)."""
        hashes: dict[str, SizeAndHash] = {}

        def upload(rel: str) -> None:
            got = self.put_file(root / rel, f"{dst_dir}/{rel}", f"upload {rel}", consume)
            if got is not None:
                hashes[rel] = got

        def hash_one(rel: str) -> None:
            hashes[rel] = sha256_file(root / rel, self.hash_block_bytes)

        jobs: list[Callable[[], None]] = []
        for rel in sorted(rels, key=lambda r: -(root / r).stat().st_size):
            if not self.local:
                jobs.append(partial(hash_one, rel))
            jobs.append(partial(upload, rel))
        run_parallel(jobs, self.concurrency)
        return hashes

    def get_files(
        self,
        src_dir: str,
        rels: Sequence[str],
        dest: Path,
        verify: Callable[[str, SizeAndHash | None], None],
        sizes: Mapping[str, int] | None = None,
    ) -> None:
        """Download ``src_dir/rel`` to ``dest/rel`` for every ``rel``.

        ``verify(rel, got)`` runs on each file as it lands (``got`` is (size, sha256), or None
        when the remote file does not exist) and raises to abort. On any failure the files this
        call wrote are deleted before the error is re-raised.
        """
        written: list[Path] = []

        def fetch(rel: str) -> None:
            local = dest / rel
            local.parent.mkdir(parents=True, exist_ok=True)
            written.append(local)
            try:
                got: SizeAndHash | None = self.get_file(
                    f"{src_dir}/{rel}", local, f"download {rel}", (sizes or {}).get(rel)
                )
            except FileNotFoundError:
                got = None
            verify(rel, got)

        try:
            run_parallel([partial(fetch, rel) for rel in rels], self.concurrency)
        except BaseException:
            for p in written:
                with contextlib.suppress(OSError):
                    p.unlink()
            raise


def _link(src: Path, dst: str) -> bool:
    """Hard-link ``src`` as ``dst``; False where the filesystem cannot (another device...)."""
    try:
        os.link(src, dst)
    except OSError:
        return False
    return True


def local_files(root: Path) -> list[str]:
    """Relative paths of the files under ``root`` (sorted); refuses the manifest's name."""
    rels = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            rel = validate_relpath(p.relative_to(root).as_posix())
            if rel == MANIFEST_NAME:
                raise CheckpointStateError(
                    f"{p} uses the reserved name {MANIFEST_NAME}; fix: rename that file"
                )
            rels.append(rel)
    return rels


def step_sizes(
    loc: RunLocation, listing: Mapping[str, Mapping[str, Any]], step: int
) -> dict[str, Any]:
    """{path inside the step directory: listed size} of ``step`` in a detailed listing."""
    sizes = {}
    for p, info in listing.items():
        parsed = loc.split_checkpoint_path(p)
        if parsed is not None and parsed[0] == step and info.get("type") != "directory":
            sizes[parsed[1]] = info.get("size")
    return sizes


def check_listed(manifest: Manifest, sizes: Mapping[str, Any], where: str) -> None:
    """CorruptCheckpointError unless every file of ``manifest`` is listed with its size."""
    for entry in manifest.files:
        got = sizes.get(manifest.file_path(entry.path))
        if got != entry.size:
            what = "is missing" if got is None else f"has size {got}"
            raise CorruptCheckpointError(
                f"step {manifest.step}: file {entry.path} {what}, manifest says {entry.size}",
                where,
            )
