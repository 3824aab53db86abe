"""Checkpoints on any fsspec URL: atomic commit, verified restore with fallback, retention.

Commit protocol (:mod:`storage.commit_protocol`): files go under a fresh per-commit folder of
the step directory, the manifest is written last and create-only; that write is the commit. A
step without a manifest does not exist for readers. A committed step is never deleted to be
rewritten: a second commit of a step that verifies is a no-op returning the existing manifest.

With a :class:`storage.fencing.Fence` (``fence=``) every commit checks the run's lease before
it uploads and right before its commit point, and every delete (retention, ``delete_step``, the
sweep) checks it before deleting: a writer of an older lease generation gets
:class:`StaleWriterError` and changes nothing of the newer generation.

Restore downloads every file of the chosen step in parallel into the destination directory and
verifies size and sha256. A step with a missing, truncated or altered file, or a manifest that
does not parse or whose digest does not match its body (an edited ``state``), is skipped with a
warning and a ``checkpoint_corrupt`` event, and the next older committed step is tried;
:class:`NoValidCheckpointError` if none is left. Transient faults that outlive the retries
raise :class:`TransientStorageError` instead of falling back.

Retention counts only verified steps (:mod:`storage.retention`): manifest parses and its digest
holds, paths valid, listed sizes match; the newest kept one fully checksummed. Unverified steps
are never counted as kept, and the last verified step is never deleted.

The store itself records ``checkpoint_commit`` (step, files, bytes, seconds) and
``checkpoint_corrupt`` (step, reason) events in the run record (``StoreOptions.record_events``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from fsspec.spec import AbstractFileSystem

from storage import commit_protocol, events
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
from storage.fencing import Fence
from storage.location import RunLocation, validate_step
from storage.manifest import FileEntry, Manifest, dumps_json
from storage.retry import RetryOptions, call_with_retry
from storage.run_record import RunRecord
from storage.transfer import FileTransfer, check_listed, local_files, step_sizes

logger = logging.getLogger(__name__)
T = TypeVar("T")

__all__ = ["CheckpointStore", "FileEntry", "Manifest", "StoreOptions"]


@dataclass(frozen=True)
class StoreOptions:
    """Options of :class:`CheckpointStore`.

    concurrency: files transferred (and hashed) at once.
    retry: retry policy of every storage call (shrink it in tests).
    sweep_min_age_s: default age below which :meth:`CheckpointStore.sweep_uncommitted` never
        deletes an uncommitted step or commit folder (another writer may still be uploading it).
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
    ``storage_options`` and ``fs``, see :meth:`RunLocation.from_url`). ``fence``: the lease
    generation this writer runs under; every commit and delete is then checked against the
    run's lease (see the module docstring). Without one, writes are not fenced.
    """

    def __init__(
        self,
        run: str | RunLocation,
        storage_options: Mapping[str, Any] | None = None,
        options: StoreOptions | None = None,
        *,
        fs: AbstractFileSystem | None = None,
        record: RunRecord | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.options = options or StoreOptions()
        self.loc = RunLocation.resolve(run, storage_options, fs=fs)
        self.fence = fence
        self.record = record or RunRecord(self.loc, retry=self.options.retry, fence=fence)
        self._lock = threading.Lock()
        #: (step, manifest digest) of steps whose every file this store checksummed itself
        self._verified: set[tuple[int, str]] = set()

    def with_fence(self, fence: Fence) -> CheckpointStore:
        """This run's store (same location and options) writing under ``fence``."""
        return CheckpointStore(self.loc, options=self.options, fence=fence)

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

    def _check_fence(self, what: str) -> None:
        """StaleWriterError when a newer lease generation holds the run (no-op unfenced)."""
        if self.fence is not None:
            self.fence.check(what)

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
        return self._committed_in(self._find(self.loc.checkpoints_dir, "list checkpoints"))

    def _committed_in(self, listing: Mapping[str, Any]) -> list[int]:
        steps = set()
        for p in listing:
            parsed = self.loc.split_checkpoint_path(p)
            if parsed is not None and parsed[1] == MANIFEST_NAME:
                steps.add(parsed[0])
        return sorted(steps)

    def manifest(self, step: int) -> Manifest:
        """The manifest of committed ``step`` (parsed, digest checked).

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

    def verify_step(
        self, step: int, *, full: bool = False, listing: Mapping[str, Any] | None = None
    ) -> Manifest:
        """The manifest of ``step`` if the step verifies, else CorruptCheckpointError.

        Always: the manifest parses, its digest holds, its paths are valid and every listed
        file has the manifest's size (``listing``: a detailed listing of the checkpoints to
        reuse). ``full``: also download and checksum every file (skipped for a step this
        store committed or restored itself). FileNotFoundError if ``step`` is not committed.
        """
        m = self.manifest(step)
        if listing is None:
            listing = self._find(self.loc.step_dir(step), "list step")
        check_listed(
            m, step_sizes(self.loc, listing, step), self.loc.display(self.loc.step_dir(step))
        )
        if full and (step, m.digest) not in self._verified:
            with tempfile.TemporaryDirectory(prefix="spotrain-verify-") as tmp:
                self._download(m, Path(tmp))
        return m

    # -- commit ----------------------------------------------------------------------------
    def commit(
        self,
        step: int,
        local_dir: str | os.PathLike[str],
        state: Mapping[str, Any],
        *,
        report: Mapping[str, Any] | None = None,
        consume: bool = False,
    ) -> Manifest:
        """Upload ``local_dir`` as step ``step`` and commit it (manifest last); see module doc.

        A step that is already committed and verifies is left as it is: its manifest is
        returned (a no-op). StaleWriterError when the fence refuses the commit. ``report``:
        the saver's fields of the ``checkpoint_commit`` event
        (:func:`storage.commit_protocol.report_commit`). ``consume``: ``local_dir`` is handed
        over (the caller deletes it after, never changes it): on a local run on the same
        filesystem its files are hard-linked into the commit instead of copied."""
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
            self._check_fence(f"commit of step {step}")  # a stale writer is refused at once
            existing = commit_protocol.existing_step(self, step)
            if existing is not None:
                return existing
            return commit_protocol.commit_new(self, step, root, rels, state_json, report, consume)

    def _write_manifest(
        self, step: int, files: tuple[FileEntry, ...], state_json: str, prefix: str = ""
    ) -> Manifest | None:
        """Step 4, the commit (see :func:`storage.commit_protocol.write_manifest`)."""
        return commit_protocol.write_manifest(self, step, files, state_json, prefix)

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

    def fetch(self, step: int, dest_dir: str | os.PathLike[str]) -> Manifest:
        """Download and verify exactly ``step`` into ``dest_dir``: no fallback and no event
        (a corrupt step raises ``CorruptCheckpointError``, a missing one ``FileNotFoundError``;
        :meth:`restore` is the call that falls back and records it)."""
        validate_step(step)
        dest = Path(dest_dir)
        dest.mkdir(parents=True, exist_ok=True)
        return self._restore_step(step, dest)

    def _restore_step(self, step: int, dest: Path) -> Manifest:
        t0 = time.monotonic()
        manifest = self.manifest(step)
        self._download(manifest, dest)
        logger.info(
            "[run=%s step=%d] restored %d files, %.1f MiB in %.2fs",
            self.url,
            step,
            len(manifest.files),
            manifest.total_bytes / 2**20,
            time.monotonic() - t0,
        )
        return manifest

    def _download(self, manifest: Manifest, dest: Path) -> None:
        """Every file of ``manifest`` into ``dest``, each checked (size + sha256) as it lands."""
        step_dir = self.loc.step_dir(manifest.step)
        src = f"{step_dir}/{manifest.prefix}" if manifest.prefix else step_dir
        rels = [e.path for e in manifest.files]
        verify = partial(manifest.verify_file, where=self.url)
        sizes = {e.path: e.size for e in manifest.files}
        self._transfer.get_files(src, rels, dest, verify, sizes)
        self._verified.add((manifest.step, manifest.digest))

    # -- retention and sweeping (storage.pruning; decisions in storage.retention) ----------
    def delete_step(self, step: int) -> None:
        """Un-commit (manifest first) and delete ``step`` (fenced)."""
        validate_step(step)
        self._check_fence(f"delete of step {step}")
        self._rm(self.loc.manifest_path(step))
        self._rm(self.loc.step_dir(step), recursive=True)

    def apply_retention(self, keep_last: int, keep_every: int = 0) -> list[int]:
        """Keep the newest ``keep_last`` verified steps (and, with ``keep_every`` > 0, every
        verified step divisible by it); delete the other committed steps. See
        :func:`storage.pruning.apply_retention`. Returns the deleted steps."""
        from storage.pruning import apply_retention

        return apply_retention(self, keep_last, keep_every)

    def sweep_uncommitted(self, min_age_s: float | None = None) -> list[int]:
        """Delete uncommitted step directories and unreferenced commit folders older than
        ``min_age_s`` (default ``StoreOptions.sweep_min_age_s``, 6 h); see
        :func:`storage.pruning.sweep_uncommitted`. Returns the swept (uncommitted) steps."""
        from storage.pruning import sweep_uncommitted

        min_age = self.options.sweep_min_age_s if min_age_s is None else float(min_age_s)
        return sweep_uncommitted(self, min_age)
