"""Background checkpoint commits: training goes on while the upload runs.

:class:`AsyncCommitter` owns one daemon thread. At most one commit runs at a time, and at most
one more waits behind it. A newer :meth:`AsyncCommitter.submit` *supersedes* a waiting one (the
older local directory is deleted without being uploaded, since the newer checkpoint contains
everything it had); with ``supersede=False`` a submit instead blocks until the waiting slot is
free. A commit that is already uploading is never cancelled.

A submitted ``local_dir`` belongs to the committer until its commit ends: write each
checkpoint to a fresh directory. An upload error is captured and re-raised by the next
:meth:`submit`, :meth:`wait_until_finished` or :meth:`close` (once); the local directory of a
failed commit is kept, and a checkpoint waiting behind it is still committed. After a successful
commit the local directory is deleted (``delete_local=True``) and ``on_done(manifest)`` is
called on the background thread.

A commit refused by the store's fence (:class:`StaleWriterError`: a newer lease generation
holds the run) makes the committer stale for good: the checkpoint waiting behind it is dropped
without upload, and every later :meth:`submit`, :meth:`wait_until_finished` and :meth:`close`
raises that error again. A stale writer stops; it never writes again.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from storage.checkpoints import CheckpointStore
from storage.errors import CommitTimeoutError, StaleWriterError
from storage.fencing import Fence
from storage.location import validate_step
from storage.manifest import Manifest

logger = logging.getLogger(__name__)


@dataclass
class _Job:
    step: int
    local_dir: str
    state: dict[str, Any]
    on_done: Callable[[Manifest], None] | None
    report: Mapping[str, Any] | None = None


class AsyncCommitter:
    """Commits checkpoints on a background thread; see the module docstring."""

    def __init__(
        self,
        store: CheckpointStore,
        *,
        delete_local: bool = True,
        supersede: bool = True,
        fence: Fence | None = None,
    ) -> None:
        """``fence``: commit under this lease generation (default: the store's own fence)."""
        self.store = store if fence is None else store.with_fence(fence)
        self.delete_local = delete_local
        self.supersede = supersede
        self._cond = threading.Condition()
        self._waiting: _Job | None = None
        self._running: _Job | None = None
        self._error: BaseException | None = None
        self._stale: StaleWriterError | None = None
        self._closed = False
        self._last_committed_step: int | None = None
        self._thread = threading.Thread(target=self._loop, name="spotrain-committer", daemon=True)
        self._thread.start()

    # -- public --------------------------------------------------------------------------
    @property
    def last_committed_step(self) -> int | None:
        with self._cond:
            return self._last_committed_step

    def submit(
        self,
        step: int,
        local_dir: str | os.PathLike[str],
        state: Mapping[str, Any],
        on_done: Callable[[Manifest], None] | None = None,
        report: Mapping[str, Any] | None = None,
    ) -> None:
        """Queue ``local_dir`` for commit as ``step``; returns at once (unless
        ``supersede=False`` and a commit is already waiting). Re-raises an earlier upload error.
        ``report``: passed to :meth:`CheckpointStore.commit` (the event's saver fields)."""
        validate_step(step)
        job = _Job(step, os.fspath(local_dir), dict(state), on_done, report)
        with self._cond:
            self._raise_pending()
            if self._closed:
                raise RuntimeError("AsyncCommitter is closed; fix: create a new one")
            if not self.supersede:
                while self._waiting is not None and self._error is None:
                    self._cond.wait()
                self._raise_pending()
            old = self._waiting
            self._waiting = job
            self._cond.notify_all()
        if old is not None and os.path.realpath(old.local_dir) != os.path.realpath(job.local_dir):
            logger.info(
                "[run=%s step=%d] checkpoint superseded by step %d before upload",
                self.store.url,
                old.step,
                step,
            )
            self._delete_local(old)

    def wait_until_finished(self, timeout_s: float | None = None) -> None:
        """Block until nothing is uploading or waiting; re-raise the upload error if any.

        CommitTimeoutError after ``timeout_s`` (the commit keeps running)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while (self._running is not None or self._waiting is not None) and self._error is None:
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    step = (self._running or self._waiting).step  # type: ignore[union-attr]
                    raise CommitTimeoutError(
                        f"checkpoint commit of step {step} to {self.store.url} still running "
                        f"after timeout_s={timeout_s}; fix: allow more time or make the "
                        "checkpoint smaller"
                    )
                self._cond.wait(remaining)
            self._raise_pending()

    def close(self, timeout_s: float | None = None) -> None:
        """Finish pending commits, stop the thread, re-raise an upload error."""
        try:
            self.wait_until_finished(timeout_s)
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()
            if self._running is None:
                self._thread.join(timeout=5)

    def __enter__(self) -> AsyncCommitter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is None:
            self.close()
            return
        # An exception is already propagating: finish uploading (the checkpoint may be what a
        # preempted run resumes from) but do not mask the original error.
        try:
            self.close()
        except Exception as upload_exc:
            logger.error("[run=%s] checkpoint upload also failed: %s", self.store.url, upload_exc)

    # -- internals -------------------------------------------------------------------------
    def _raise_pending(self) -> None:
        if self._stale is not None:
            raise self._stale
        if self._error is not None:
            err, self._error = self._error, None
            raise err

    def _delete_local(self, job: _Job) -> None:
        if self.delete_local:
            shutil.rmtree(job.local_dir, ignore_errors=True)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while self._waiting is None and not self._closed:
                    self._cond.wait()
                if self._waiting is None or self._stale is not None:
                    return
                job, self._waiting = self._waiting, None
                self._running = job
                self._cond.notify_all()
            try:
                manifest = self.store.commit(
                    job.step,
                    job.local_dir,
                    job.state,
                    report=job.report,
                    consume=self.delete_local,
                )
            except BaseException as exc:  # captured for the owner: re-raised on wait/close
                logger.error(
                    "[run=%s step=%d] background commit failed: %s", self.store.url, job.step, exc
                )
                dropped = None
                with self._cond:
                    if isinstance(exc, StaleWriterError):
                        # stale for good: nothing more is uploaded
                        self._stale = exc
                        dropped, self._waiting = self._waiting, None
                    # otherwise a waiting newer checkpoint is kept and still tried
                    self._error = exc
                    self._running = None
                    self._cond.notify_all()
                if dropped is not None:
                    self._delete_local(dropped)
                continue
            self._delete_local(job)
            if job.on_done is not None:
                try:
                    job.on_done(manifest)
                except Exception as cb_exc:  # a callback bug must not kill the committer
                    logger.error("[run=%s] on_done callback failed: %s", self.store.url, cb_exc)
            with self._cond:
                self._running = None
                self._last_committed_step = job.step
                self._cond.notify_all()
