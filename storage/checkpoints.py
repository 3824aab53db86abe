"""Checkpoints on any fsspec URL: atomic commit, verified restore with fallback, retention.

Commit protocol (works on object stores without atomic rename):

1. If step N is already committed, its ``MANIFEST.json`` is deleted first (the step stops
   existing for readers), then leftovers of the step directory are removed.
2. Every file of the local directory is uploaded under ``<run>/checkpoints/<N:012d>/`` in
   parallel (``StoreOptions.concurrency`` files at once, biggest first), while sha256 of each
   file is computed in parallel. On real local files copy and hash are one pass per file.
3. The uploaded sizes are checked against one listing of the step directory.
4. ``MANIFEST.json`` (files with size + sha256, the caller's JSON state) is written last: that
   single object write is the commit. A step without a manifest does not exist for any reader
   and is swept later by :meth:`CheckpointStore.sweep_uncommitted`.

A failure before step 4 removes what was uploaded (best effort) and raises a typed error;
nothing is ever half-committed. A process killed before step 4 leaves an uncommitted directory
that readers ignore. Durability against a power loss of the machine itself is the backend's
(local files are not fsynced; object stores acknowledge durable writes).

Restore downloads every file of the chosen step in parallel into the destination directory and
verifies size and sha256 (local files: copied and hashed in one pass). A step with a missing,
truncated or altered file (or an unreadable manifest) is skipped with a warning and a ``checkpoint_corrupt`` event, and the next older
committed step is tried; :class:`NoValidCheckpointError` if none is left. Transient faults that
outlive the retries raise :class:`TransientStorageError` instead of falling back, so a network
blip never silently rolls training back.

The store itself records ``checkpoint_commit`` (step, files, bytes, seconds) and
``checkpoint_corrupt`` (step, reason) events in the run record (``StoreOptions.record_events``);
callers need not write them.

Test hook: ``SPOTRAIN_TEST_COMMIT_PAUSE=<point>@<dir>`` makes commit stop at ``<point>``
(``after_files:<k>`` once k files are uploaded, or ``before_manifest``), create
``<dir>/<point>.reached`` and wait there (up to 10 minutes) so a test can SIGKILL it at a known
moment. Ignored when unset.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from concurrent.futures import FIRST_EXCEPTION, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from fsspec.implementations.local import LocalFileSystem
from fsspec.spec import AbstractFileSystem

from storage.constants import (
    DEFAULT_HASH_BLOCK_BYTES,
    DEFAULT_SWEEP_MIN_AGE_S,
    DEFAULT_TRANSFER_CONCURRENCY,
    MANIFEST_NAME,
    PAUSE_ENV,
)
from storage.errors import (
    CheckpointStateError,
    CorruptCheckpointError,
    NoValidCheckpointError,
    SpotrainError,
)
from storage.location import (
    RunLocation,
    parse_step_dirname,
    validate_relpath,
    validate_step,
)
from storage.manifest import FileEntry, Manifest, copy_and_hash, dumps_json, sha256_file
from storage.retry import RetryOptions, call_with_retry
from storage.run_record import RunRecord

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["CheckpointStore", "FileEntry", "Manifest", "StoreOptions"]


@dataclass(frozen=True)
class StoreOptions:
    """Options of :class:`CheckpointStore`.

    concurrency: files transferred (and hashed) at once.
    retry: retry policy of every storage call (shrink it in tests).
    sweep_min_age_s: default age below which :meth:`CheckpointStore.sweep_uncommitted` never
        deletes an uncommitted step (another writer may still be uploading it).
    hash_block_bytes: read size when hashing local files.
    record_events: write ``checkpoint_commit`` / ``checkpoint_corrupt`` events to the run record.
    """

    concurrency: int = DEFAULT_TRANSFER_CONCURRENCY
    retry: RetryOptions = field(default_factory=RetryOptions)
    sweep_min_age_s: float = DEFAULT_SWEEP_MIN_AGE_S
    hash_block_bytes: int = DEFAULT_HASH_BLOCK_BYTES
    record_events: bool = True

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ValueError(f"StoreOptions.concurrency={self.concurrency}; fix: use >= 1")


def _pause_point(point: str) -> None:
    """Test hook, see the module docstring. A no-op unless SPOTRAIN_TEST_COMMIT_PAUSE is set."""
    raw = os.environ.get(PAUSE_ENV)
    if not raw:
        return
    want, _, directory = raw.partition("@")
    if want != point or not directory:
        return
    Path(directory, f"{point}.reached").touch()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # waits to be killed by the test
        time.sleep(0.05)


def _mtime(info: Mapping[str, Any]) -> float | None:
    """Modification time (unix s) from an fsspec info dict of any backend we know."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created", "modified"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


class CheckpointStore:
    """Committed checkpoints of one run. Thread-safe for concurrent readers; one writer."""

    def __init__(
        self,
        run_url: str,
        storage_options: Mapping[str, Any] | None = None,
        options: StoreOptions | None = None,
        *,
        fs: AbstractFileSystem | None = None,
        record: RunRecord | None = None,
    ) -> None:
        self.options = options or StoreOptions()
        self.loc = RunLocation.from_url(run_url, storage_options, fs=fs)
        self.record = record or RunRecord(run_url, location=self.loc, retry=self.options.retry)
        self._lock = threading.Lock()
        # Real local files (not a wrapper) take a single-pass copy+hash fast path.
        self._local = isinstance(self.loc.fs, LocalFileSystem)

    def __getstate__(self) -> dict[str, Any]:
        # picklable (e.g. to hand a store to a Ray actor); the lock is per process
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return self.loc.url

    @property
    def fs(self) -> AbstractFileSystem:
        return self.loc.fs

    # -- helpers ---------------------------------------------------------------------------
    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retry(
            fn, what=what, url=self.loc.url, options=self.options.retry, redact=self.loc.redact
        )

    def _event(self, kind: str, **payload: Any) -> None:
        if not self.options.record_events:
            return
        try:
            self.record.append_event(kind, **payload)
        except SpotrainError as exc:  # the event log must never break a commit or a restore
            logger.warning("[run=%s] could not record %s event: %s", self.url, kind, exc)

    def _rm(self, path: str, recursive: bool = False) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", lambda: self.fs.rm(path, recursive=recursive))

    def _pool(self, n_jobs: int) -> ThreadPoolExecutor:
        return ThreadPoolExecutor(
            max_workers=max(1, min(self.options.concurrency, n_jobs)),
            thread_name_prefix="spotrain-transfer",
        )

    # -- reading ---------------------------------------------------------------------------
    def committed_steps(self) -> list[int]:
        """Steps whose MANIFEST.json exists, ascending (one recursive listing)."""
        d = self.loc.checkpoints_dir
        self.fs.invalidate_cache(d)
        try:
            paths = self._call("list checkpoints", lambda: self.fs.find(d))
        except FileNotFoundError:
            return []
        steps = set()
        prefix = d.rstrip("/") + "/"
        for p in paths:
            p = p.rstrip("/")
            idx = p.find(prefix)
            rel = p[idx + len(prefix) :] if idx >= 0 else p
            parts = rel.split("/")
            if len(parts) == 2 and parts[1] == MANIFEST_NAME:
                step = parse_step_dirname(parts[0])
                if step is not None:
                    steps.add(step)
        return sorted(steps)

    def manifest(self, step: int) -> Manifest:
        """The manifest of committed ``step``.

        FileNotFoundError if the step is not committed; CorruptCheckpointError if unreadable.
        """
        validate_step(step)
        path = self.loc.manifest_path(step)
        data = self._call("read manifest", lambda: self.fs.cat_file(path))
        m = Manifest.from_json(data, where=self.loc.display(path))
        if m.step != step:
            raise CorruptCheckpointError(
                f"manifest {self.loc.display(path)} says step {m.step}", self.url
            )
        return m

    def latest(self) -> Manifest | None:
        """Manifest of the newest committed step whose manifest parses, or None."""
        for step in reversed(self.committed_steps()):
            try:
                return self.manifest(step)
            except (CorruptCheckpointError, FileNotFoundError) as exc:
                logger.warning("[run=%s step=%d] skipping step: %s", self.url, step, exc)
        return None

    # -- commit ----------------------------------------------------------------------------
    def commit(
        self, step: int, local_dir: str | os.PathLike[str], state: Mapping[str, Any]
    ) -> Manifest:
        """Upload ``local_dir`` as step ``step`` and commit it (manifest last); see module doc."""
        validate_step(step)
        root = Path(local_dir)
        if not root.is_dir():
            raise CheckpointStateError(
                f"local_dir={str(local_dir)!r} is not a directory; fix: pass the directory the "
                "checkpoint was written to"
            )
        state_json = dumps_json(dict(state), what="checkpoint state")
        rels = []
        for p in sorted(root.rglob("*")):
            if p.is_file():
                rel = validate_relpath(p.relative_to(root).as_posix())
                if rel == MANIFEST_NAME:
                    raise CheckpointStateError(
                        f"{p} uses the reserved name {MANIFEST_NAME}; fix: rename that file"
                    )
                rels.append(rel)
        if not rels:
            raise CheckpointStateError(
                f"local_dir={str(local_dir)!r} holds no files; fix: write the checkpoint first"
            )
        with self._lock:
            return self._commit(step, root, rels, state_json)

    def _commit(self, step: int, root: Path, rels: list[str], state_json: str) -> Manifest:
        t0 = time.monotonic()
        step_dir = self.loc.step_dir(step)
        manifest_path = self.loc.manifest_path(step)
        # 1. un-commit an existing step and clear leftovers of a torn attempt.
        self._rm(manifest_path)
        self.fs.invalidate_cache(step_dir)
        if self._call("check step dir", lambda: self.fs.exists(step_dir)):
            self._rm(step_dir, recursive=True)
        # 2. upload + hash in parallel.
        hashes: dict[str, tuple[int, str]] = {}
        done_count = [0]
        count_lock = threading.Lock()

        def upload(rel: str) -> None:
            src = str(root / rel)
            dst = f"{step_dir}/{rel}"
            if self._local:  # one pass: copy and hash together
                os.makedirs(os.path.dirname(dst), exist_ok=True)
                hashes[rel] = self._call(
                    f"upload {rel}",
                    lambda: copy_and_hash(src, dst, self.options.hash_block_bytes),
                )
            else:
                self._call(f"upload {rel}", lambda: self.fs.put_file(src, dst))
            with count_lock:
                done_count[0] += 1
                n = done_count[0]
            _pause_point(f"after_files:{n}")

        def hash_one(rel: str) -> None:
            hashes[rel] = sha256_file(root / rel, self.options.hash_block_bytes)

        try:
            with self._pool(2 * len(rels)) as pool:
                futures: list[Future[None]] = []
                # biggest first, so the pool stays busy to the end
                for rel in sorted(rels, key=lambda r: -(root / r).stat().st_size):
                    if not self._local:
                        futures.append(pool.submit(hash_one, rel))
                    futures.append(pool.submit(upload, rel))
                _done, pending = wait(futures, return_when=FIRST_EXCEPTION)
                for f in pending:
                    f.cancel()
                for f in futures:
                    if f.done() and not f.cancelled() and f.exception() is not None:
                        raise f.exception()  # type: ignore[misc]
            files = tuple(FileEntry(rel, *hashes[rel]) for rel in rels)
            # 3. verify what landed (one listing).
            self.fs.invalidate_cache(step_dir)
            listing = self._call("list uploaded files", lambda: self.fs.find(step_dir, detail=True))
            sizes = {}
            for p, info in listing.items():
                rel = p.rstrip("/").split(step_dir.rstrip("/") + "/", 1)[-1]
                sizes[rel] = info.get("size")
            for entry in files:
                if sizes.get(entry.path) != entry.size:
                    raise CorruptCheckpointError(
                        f"uploaded {entry.path} has size {sizes.get(entry.path)} on "
                        f"{self.url}, expected {entry.size}; the commit was abandoned",
                        self.url,
                    )
            # 4. the manifest, last.
            manifest = Manifest(step=step, files=files, state=json.loads(state_json))
            data = manifest.to_json()
            manifest = Manifest.from_json(data)  # exactly what readers will see
            _pause_point("before_manifest")
            self._call("write manifest", lambda: self.fs.pipe_file(manifest_path, data))
        except BaseException as exc:
            logger.warning(
                "[run=%s step=%d] commit failed, removing the uncommitted upload: %s",
                self.url,
                step,
                self.loc.redact(str(exc)),
            )
            try:
                self._rm(manifest_path)
                self._rm(step_dir, recursive=True)
            except SpotrainError as cleanup_exc:  # keep the original error; sweep will clean up
                logger.warning("[run=%s step=%d] cleanup failed: %s", self.url, step, cleanup_exc)
            raise
        elapsed = time.monotonic() - t0
        mib = manifest.total_bytes / 2**20
        logger.info(
            "[run=%s step=%d] committed %d files, %.1f MiB in %.2fs (%.0f MiB/s)",
            self.url,
            step,
            len(files),
            mib,
            elapsed,
            mib / elapsed if elapsed > 0 else 0.0,
        )
        self._event(
            "checkpoint_commit",
            step=step,
            files=len(files),
            bytes=manifest.total_bytes,
            seconds=round(elapsed, 3),
        )
        return manifest

    # -- restore ---------------------------------------------------------------------------
    def restore(self, dest_dir: str | os.PathLike[str], step: int | None = None) -> Manifest:
        """Download and verify ``step`` (default: latest) into ``dest_dir``; fall back to older
        committed steps when it is corrupt. Returns the manifest of the step restored."""
        committed = self.committed_steps()
        if step is not None:
            validate_step(step)
            candidates = [s for s in reversed(committed) if s <= step]
        else:
            candidates = list(reversed(committed))
        if not candidates:
            raise NoValidCheckpointError(
                f"no committed checkpoint{'' if step is None else f' at or below step {step}'} "
                f"in {self.url}; fix: check the run URL, or start the run from scratch",
                self.url,
            )
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        tried = []
        for s in candidates:
            tried.append(s)
            try:
                return self._restore_step(s, dest)
            except (CorruptCheckpointError, FileNotFoundError) as exc:
                reason = self.loc.redact(str(exc))
                logger.warning(
                    "[run=%s step=%d] checkpoint is corrupt (%s); falling back to an older step",
                    self.url,
                    s,
                    reason,
                )
                self._event("checkpoint_corrupt", step=s, reason=reason)
        raise NoValidCheckpointError(
            f"no valid checkpoint in {self.url}: steps {tried} are all corrupt; fix: inspect "
            "the checkpoints (spotrain checkpoints RUN_URL) or start the run from scratch",
            self.url,
            tried,
        )

    def _restore_step(self, step: int, dest: Path) -> Manifest:
        t0 = time.monotonic()
        manifest = self.manifest(step)
        step_dir = self.loc.step_dir(step)
        written: list[Path] = []

        def fetch(entry: FileEntry) -> None:
            local = dest / entry.path
            local.parent.mkdir(parents=True, exist_ok=True)
            written.append(local)
            remote = f"{step_dir}/{entry.path}"
            try:
                if self._local:  # one pass: copy and hash together
                    size, digest = self._call(
                        f"download {entry.path}",
                        lambda: copy_and_hash(remote, local, self.options.hash_block_bytes),
                    )
                else:
                    self._call(
                        f"download {entry.path}", lambda: self.fs.get_file(remote, str(local))
                    )
                    size, digest = sha256_file(local, self.options.hash_block_bytes)
            except FileNotFoundError as exc:
                raise CorruptCheckpointError(
                    f"step {step}: file {entry.path} is missing", self.url
                ) from exc
            if size != entry.size or digest != entry.sha256:
                raise CorruptCheckpointError(
                    f"step {step}: file {entry.path} has size {size} sha256 {digest[:12]}..., "
                    f"manifest says size {entry.size} sha256 {entry.sha256[:12]}...",
                    self.url,
                )

        try:
            with self._pool(len(manifest.files)) as pool:
                futures = [pool.submit(fetch, e) for e in manifest.files]
                wait(futures, return_when=FIRST_EXCEPTION)
                for f in futures:
                    f.cancel()
                for f in futures:
                    if f.done() and not f.cancelled() and f.exception() is not None:
                        raise f.exception()  # type: ignore[misc]
        except BaseException:
            for p in written:
                with contextlib.suppress(OSError):
                    p.unlink()
            raise
        elapsed = time.monotonic() - t0
        logger.info(
            "[run=%s step=%d] restored %d files, %.1f MiB in %.2fs",
            self.url,
            step,
            len(manifest.files),
            manifest.total_bytes / 2**20,
            elapsed,
        )
        return manifest

    # -- retention and sweeping --------------------------------------------------------------
    def delete_step(self, step: int) -> None:
        """Un-commit (manifest first) and delete ``step``."""
        validate_step(step)
        self._rm(self.loc.manifest_path(step))
        self._rm(self.loc.step_dir(step), recursive=True)

    def apply_retention(self, keep_last: int, keep_every: int = 0) -> list[int]:
        """Delete committed steps except the newest ``keep_last`` and, when ``keep_every`` > 0,
        every step divisible by ``keep_every``. Returns the deleted steps."""
        if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
            raise CheckpointStateError(
                f"keep_last={keep_last!r}; fix: keep at least 1 committed checkpoint"
            )
        if isinstance(keep_every, bool) or not isinstance(keep_every, int) or keep_every < 0:
            raise CheckpointStateError(f"keep_every={keep_every!r}; fix: use 0 (off) or > 0")
        steps = self.committed_steps()
        keep = set(steps[-keep_last:])
        if keep_every:
            keep |= {s for s in steps if s % keep_every == 0}
        deleted = [s for s in steps if s not in keep]
        for s in deleted:
            self.delete_step(s)
        if deleted:
            logger.info("[run=%s] retention deleted steps %s", self.url, deleted)
        return deleted

    def sweep_uncommitted(self, min_age_s: float | None = None) -> list[int]:
        """Delete step directories that have no manifest and whose newest file is older than
        ``min_age_s`` (default ``StoreOptions.sweep_min_age_s``, 6 h).

        The age threshold is what keeps this safe: a directory without a manifest may belong to
        a writer that is still uploading it, so it is only removed once nothing in it changed
        for longer than any commit takes. Directories with no readable modification time are
        left alone. Returns the swept steps.
        """
        min_age = self.options.sweep_min_age_s if min_age_s is None else float(min_age_s)
        d = self.loc.checkpoints_dir
        self.fs.invalidate_cache(d)
        try:
            listing = self._call("list checkpoints", lambda: self.fs.find(d, detail=True))
        except FileNotFoundError:
            return []
        prefix = d.rstrip("/") + "/"
        newest: dict[int, float | None] = {}
        committed = set()
        for p, info in listing.items():
            rel = p.rstrip("/").split(prefix, 1)[-1]
            parts = rel.split("/")
            step = parse_step_dirname(parts[0])
            if step is None or info.get("type") == "directory":
                continue
            if len(parts) == 2 and parts[1] == MANIFEST_NAME:
                committed.add(step)
            t = _mtime(info)
            if t is None:
                try:
                    t = self.fs.modified(p).timestamp()
                except (NotImplementedError, OSError, ValueError, AttributeError):
                    t = None
            prev = newest.get(step, 0.0)
            newest[step] = None if t is None or prev is None else max(prev, t)
        now = time.time()
        swept = []
        for step, t in sorted(newest.items()):
            if step in committed or t is None or now - t < min_age:
                continue
            self._rm(self.loc.step_dir(step), recursive=True)
            swept.append(step)
        if swept:
            logger.info("[run=%s] swept uncommitted steps %s", self.url, swept)
        return swept
