"""Checkpoints on any fsspec URL: atomic commit, verified restore with fallback, retention.

Commit protocol (works on object stores without atomic rename), one method per step:

1. ``_uncommit``: if step N is already committed, its ``MANIFEST.json`` is deleted first (the
   step stops existing for readers), then leftovers of the step directory are removed.
2. ``FileTransfer.put_files``: every file of the local directory is uploaded under
   ``<run>/checkpoints/<N:012d>/`` in parallel (``StoreOptions.concurrency`` files at once,
   biggest first), while sha256 of each file is computed in parallel. On real local files copy
   and hash are one pass per file.
3. ``_check_uploaded``: the uploaded sizes are checked against one listing of the step.
4. ``_write_manifest``: ``MANIFEST.json`` (files with size + sha256, the caller's JSON state)
   is written last: that single object write is the commit. A step without a manifest does not
   exist for any reader and is swept later by :meth:`CheckpointStore.sweep_uncommitted`.

A failure in steps 2-4 removes what was uploaded (``_abandon``, best effort) and raises a typed
error; nothing is ever half-committed. A process killed before step 4 leaves an uncommitted
directory that readers ignore. Durability against a power loss of the machine itself is the
backend's (local files are not fsynced; object stores acknowledge durable writes).

Restore downloads every file of the chosen step in parallel into the destination directory and
verifies size and sha256 (local files: copied and hashed in one pass). A step with a missing,
truncated or altered file (or an unreadable manifest) is skipped with a warning and a
``checkpoint_corrupt`` event, and the next older committed step is tried;
:class:`NoValidCheckpointError` if none is left. Transient faults that outlive the retries
raise :class:`TransientStorageError` instead of falling back, so a network blip never silently
rolls training back.

The store itself records ``checkpoint_commit`` (step, files, bytes, seconds) and
``checkpoint_corrupt`` (step, reason) events in the run record (``StoreOptions.record_events``);
callers need not write them.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from fsspec.spec import AbstractFileSystem

from storage import events
from storage.constants import (
    DEFAULT_HASH_BLOCK_BYTES,
    DEFAULT_SWEEP_MIN_AGE_S,
    DEFAULT_TRANSFER_CONCURRENCY,
    MANIFEST_NAME,
)
from storage.errors import (
    CheckpointStateError,
    CorruptCheckpointError,
    NoValidCheckpointError,
    SpotrainError,
    StaleWriterError,
)
from storage.location import RunLocation, validate_step
from storage.manifest import FileEntry, Manifest, dumps_json
from storage.retention import steps_to_delete, uncommitted_to_sweep
from storage.retry import RetryOptions, call_with_retry
from storage.run_record import RunRecord
from storage.transfer import FileTransfer, local_files

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


class CheckpointStore:
    """Committed checkpoints of one run. Thread-safe for concurrent readers; one writer.

    ``run`` is the run's :class:`RunLocation`, or its URL (then resolved with
    ``storage_options`` and ``fs``, see :meth:`RunLocation.from_url`).
    """

    def __init__(
        self,
        run: str | RunLocation,
        storage_options: Mapping[str, Any] | None = None,
        options: StoreOptions | None = None,
        *,
        fs: AbstractFileSystem | None = None,
        record: RunRecord | None = None,
    ) -> None:
        self.options = options or StoreOptions()
        self.loc = RunLocation.resolve(run, storage_options, fs=fs)
        self.record = record or RunRecord(self.loc, retry=self.options.retry)
        self._lock = threading.Lock()

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
    @property
    def _transfer(self) -> FileTransfer:
        return FileTransfer(
            self.fs,
            concurrency=self.options.concurrency,
            hash_block_bytes=self.options.hash_block_bytes,
            call=self._call,
        )

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        return call_with_retry(
            fn, what=what, url=self.loc.url, options=self.options.retry, redact=self.loc.redact
        )

    def _event(self, write: Callable[..., Any], **payload: Any) -> None:
        if not self.options.record_events:
            return
        try:
            write(self.record, **payload)
        except StaleWriterError:  # a stale writer stops, it does not log and go on
            raise
        except SpotrainError as exc:  # the event log must never break a commit or a restore
            logger.warning("[run=%s] could not record an event (%s): %s", self.url, write, exc)

    def _rm(self, path: str, recursive: bool = False) -> None:
        with contextlib.suppress(FileNotFoundError):
            self._call("delete", lambda: self.fs.rm(path, recursive=recursive))

    def _find(self, path: str, what: str) -> Any:
        """``fs.find(path, detail=True)`` after dropping cached listings; {} when absent."""
        self.fs.invalidate_cache(path)
        try:
            return self._call(what, lambda: self.fs.find(path, detail=True))
        except FileNotFoundError:
            return {}

    # -- reading ---------------------------------------------------------------------------
    def committed_steps(self) -> list[int]:
        """Steps whose MANIFEST.json exists, ascending (one recursive listing)."""
        steps = set()
        for p in self._find(self.loc.checkpoints_dir, "list checkpoints"):
            parsed = self.loc.split_checkpoint_path(p)
            if parsed is not None and parsed[1] == MANIFEST_NAME:
                steps.add(parsed[0])
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
        rels = local_files(root)
        if not rels:
            raise CheckpointStateError(
                f"local_dir={str(local_dir)!r} holds no files; fix: write the checkpoint first"
            )
        with self._lock:
            return self._commit(step, root, rels, state_json)

    def _commit(self, step: int, root: Path, rels: list[str], state_json: str) -> Manifest:
        t0 = time.monotonic()
        self._uncommit(step)
        try:
            hashes = self._transfer.put_files(root, rels, self.loc.step_dir(step))
            files = tuple(FileEntry(rel, *hashes[rel]) for rel in rels)
            self._check_uploaded(step, files)
            manifest = self._write_manifest(step, files, state_json)
        except BaseException as exc:
            self._abandon(step, exc)
            raise
        self._report_commit(manifest, time.monotonic() - t0)
        return manifest

    def _uncommit(self, step: int) -> None:
        """Step 1: un-commit an existing ``step`` (manifest first) and clear leftovers of a
        torn attempt."""
        step_dir = self.loc.step_dir(step)
        self._rm(self.loc.manifest_path(step))
        self.fs.invalidate_cache(step_dir)
        if self._call("check step dir", lambda: self.fs.exists(step_dir)):
            self._rm(step_dir, recursive=True)

    def _check_uploaded(self, step: int, files: tuple[FileEntry, ...]) -> None:
        """Step 3: every uploaded file has its local size (one listing of the step)."""
        sizes = {}
        for p, info in self._find(self.loc.step_dir(step), "list uploaded files").items():
            parsed = self.loc.split_checkpoint_path(p)
            if parsed is not None and parsed[0] == step:
                sizes[parsed[1]] = info.get("size")
        for entry in files:
            if sizes.get(entry.path) != entry.size:
                raise CorruptCheckpointError(
                    f"uploaded {entry.path} has size {sizes.get(entry.path)} on "
                    f"{self.url}, expected {entry.size}; the commit was abandoned",
                    self.url,
                )

    def _write_manifest(self, step: int, files: tuple[FileEntry, ...], state_json: str) -> Manifest:
        """Step 4, the commit: write ``MANIFEST.json`` last; return exactly what readers see."""
        data = Manifest(step=step, files=files, state=json.loads(state_json)).to_json()
        manifest = Manifest.from_json(data)
        path = self.loc.manifest_path(step)
        self._call("write manifest", lambda: self.fs.pipe_file(path, data))
        return manifest

    def _abandon(self, step: int, exc: BaseException) -> None:
        """A failed commit: remove what was uploaded (best effort; sweep catches the rest)."""
        logger.warning(
            "[run=%s step=%d] commit failed, removing the uncommitted upload: %s",
            self.url,
            step,
            self.loc.redact(str(exc)),
        )
        try:
            self._rm(self.loc.manifest_path(step))
            self._rm(self.loc.step_dir(step), recursive=True)
        except SpotrainError as cleanup_exc:  # keep the original error; sweep will clean up
            logger.warning("[run=%s step=%d] cleanup failed: %s", self.url, step, cleanup_exc)

    def _report_commit(self, manifest: Manifest, elapsed: float) -> None:
        mib = manifest.total_bytes / 2**20
        logger.info(
            "[run=%s step=%d] committed %d files, %.1f MiB in %.2fs (%.0f MiB/s)",
            self.url,
            manifest.step,
            len(manifest.files),
            mib,
            elapsed,
            mib / elapsed if elapsed > 0 else 0.0,
        )
        self._event(
            events.write_checkpoint_commit,
            step=manifest.step,
            files=len(manifest.files),
            bytes=manifest.total_bytes,
            seconds=round(elapsed, 3),
        )

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
                self._event(events.write_checkpoint_corrupt, step=s, reason=reason)
        raise NoValidCheckpointError(
            f"no valid checkpoint in {self.url}: steps {tried} are all corrupt; fix: inspect "
            "the checkpoints (spotrain checkpoints RUN_URL) or start the run from scratch",
            self.url,
            tried,
        )

    def _restore_step(self, step: int, dest: Path) -> Manifest:
        t0 = time.monotonic()
        manifest = self.manifest(step)
        rels = [e.path for e in manifest.files]
        verify = partial(manifest.verify_file, where=self.url)
        self._transfer.get_files(self.loc.step_dir(step), rels, dest, verify)
        logger.info(
            "[run=%s step=%d] restored %d files, %.1f MiB in %.2fs",
            self.url,
            step,
            len(manifest.files),
            manifest.total_bytes / 2**20,
            time.monotonic() - t0,
        )
        return manifest

    # -- retention and sweeping (decisions in storage.retention) ----------------------------
    def delete_step(self, step: int) -> None:
        """Un-commit (manifest first) and delete ``step``."""
        validate_step(step)
        self._rm(self.loc.manifest_path(step))
        self._rm(self.loc.step_dir(step), recursive=True)

    def apply_retention(self, keep_last: int, keep_every: int = 0) -> list[int]:
        """Delete committed steps except the newest ``keep_last`` and, when ``keep_every`` > 0,
        every step divisible by ``keep_every``. Returns the deleted steps."""
        deleted = steps_to_delete(self.committed_steps(), keep_last, keep_every)
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
        listing = self._find(self.loc.checkpoints_dir, "list checkpoints")
        swept = uncommitted_to_sweep(self.loc, listing, now=time.time(), min_age_s=min_age)
        for step in swept:
            self._rm(self.loc.step_dir(step), recursive=True)
        if swept:
            logger.info("[run=%s] swept uncommitted steps %s", self.url, swept)
        return swept
