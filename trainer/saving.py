"""One rank's save path: an in-memory snapshot at the step boundary, then (on the chief) the
write to local files and the commit in the background.

Blocking, at the boundary (``SaveStats.last_blocked_s``): the manifest state, the per-rank rows
(one collective, which also carries a preemption poll due at that step), and the snapshot's reads along a
plan made once per object graph (:mod:`trainer.snapshot_plan`: one read per CPU variable; a
collective for ON_READ ones), which hold the variables' buffers (no copy). In the background,
on the chief: ``SaveV2`` from those buffers into a fresh local directory
(:class:`trainer.snapshot.SnapshotWriter`), then upload, checksums and manifest
(:class:`storage.committer.AsyncCommitter`). Other ranks write no files.

When a save comes while the previous snapshot is still in flight (being written to local
files, not uploaded), it *waits* for that write to end (counted in ``SaveStats.waited``, shown by
``spotrain status``; the wait is part of its blocked time), so every save step is snapshotted as
with the blocking path. Uploads *coalesce*: a written snapshot waiting behind a running upload
is superseded by a newer one (its local directory deleted, never uploaded).
Memory: no copy of the state (see :mod:`trainer.snapshot`: a variable updated while its
snapshot is written exists twice until then), plus up to two local directories (one uploading,
one waiting) on ``local_tmp_dir``'s disk.

Without background commits (``async_upload=False``) the chief writes and commits in the call.
Where a snapshot cannot be taken (:func:`trainer.snapshot.take` returns None), every rank
writes the checkpoint to a local temp dir the blocking way and non-chiefs delete theirs.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from storage.checkpoints import CheckpointStore
from storage.committer import AsyncCommitter
from storage.manifest import Manifest
from trainer import backup_dir, snapshot
from trainer.backup_options import BackupOptions
from trainer.model_io import CKPT_PREFIX, ModelParts
from trainer.saved_state import SaveStats
from trainer.snapshot import Snapshot, SnapshotWriter
from trainer.snapshot_plan import SnapshotPlans


class Saver:
    """Saves of one rank (every rank holds one; only the chief's write files)."""

    def __init__(
        self,
        store: Callable[[], CheckpointStore],
        options: BackupOptions,
        is_chief: bool,
        stats: SaveStats,
        after_commit: Callable[[Manifest], None],
        attempt: Callable[[], Mapping[str, Any]],
    ) -> None:
        self._store = store
        self.options = options
        self.is_chief = is_chief
        self.stats = stats
        self._after_commit = after_commit
        self._attempt = attempt
        self.committer: AsyncCommitter | None = None
        self.writer: SnapshotWriter | None = None
        self.plans = SnapshotPlans()  # what the object graph holds, found at the first save

    def start_async(self) -> bool:
        """Commit in the background from now on; True when this call started it."""
        if self.committer is not None:
            return False
        self.committer = AsyncCommitter(self._store())
        backup_dir.register(self._store().url, self)
        if self.options.snapshot:
            self.writer = SnapshotWriter(self._hand_on, self.options.local_tmp_dir)
        return True

    def prepare(self, checkpoint: Any) -> None:
        """Plan what snapshots read (a collective where ON_READ variables are read: every rank
        calls it), so that the first save is as quick as the next ones."""
        if self.options.snapshot and snapshot.hooks_available(checkpoint):
            self.plans.serialize(checkpoint)

    @property
    def in_flight(self) -> bool:
        """A snapshot is still being written (a save now waits for it)."""
        return self.writer is not None and self.writer.busy

    def save(
        self,
        g: int,
        parts: ModelParts,
        state: dict[str, Any],
        rows: np.ndarray,
        started: float | None = None,
    ) -> None:
        """Save step ``g`` (a collective: every rank calls it); ``started``: the
        ``perf_counter`` at which the caller began the save (the manifest state and the
        per-rank rows count as blocked time too)."""
        t0 = time.perf_counter() if started is None else started
        if self.is_chief and self.in_flight:
            self.stats.waited += 1
            assert self.writer is not None
            self.writer.wait(self.options.commit_timeout_s)
        snap = None
        if self.options.snapshot:
            keep = self.is_chief
            snap = snapshot.take(
                parts.checkpoint,
                g,
                rows if keep else None,
                keep=keep,
                plans=self.plans,
            )
        if snap is None:
            self._save_blocking(g, parts, state, rows, t0)
            return
        if self.is_chief:
            report: dict[str, Any] = {**self._attempt(), "started": snap.taken_at}
            report.update(_timing(t0))
            report["waited"] = self.stats.waited
            if self.writer is not None:
                self.writer.submit(snap, (state, report))
            else:
                local_dir = self._mkdtemp(g)
                try:
                    snap.write(local_dir)
                    manifest = self._store().commit(
                        g, local_dir, state, report=report, consume=True
                    )
                    self._after_commit(manifest)
                finally:
                    shutil.rmtree(local_dir, ignore_errors=True)
        self._blocked(t0)

    def wait(self, timeout_s: float | None) -> None:
        """Until this rank's snapshot is written and its commit durable (no collective)."""
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if self.writer is not None:
            self.writer.wait(timeout_s)
        if self.committer is not None:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            self.committer.wait_until_finished(left)

    def wait_until_finished(self, timeout_s: float | None = None) -> None:
        """:meth:`wait` (what :mod:`trainer.backup_dir` waits on before a restore)."""
        self.wait(timeout_s)

    def close(self, wait: bool, timeout_s: float | None) -> None:
        """Finish (``wait``) or abandon the snapshot in flight and the commits. Idempotent."""
        writer, committer = self.writer, self.committer
        if committer is None:
            return
        try:
            if writer is not None and wait:  # first: it hands its snapshot on
                writer.close(timeout_s)
            elif writer is not None:
                with contextlib.suppress(Exception):  # abandoned: the caller is failing
                    writer.close(0.0)
        finally:
            self.writer = self.committer = None
            backup_dir.unregister(self._store().url, self)
            if wait:
                committer.close(timeout_s)
            else:
                with contextlib.suppress(Exception):  # abandoned: the caller is failing
                    committer.close(0.0)

    # -- internals -------------------------------------------------------------------------
    def _hand_on(self, snap: Snapshot, local_dir: str, meta: Any) -> None:
        state, report = meta
        if self.committer is None:
            raise RuntimeError(f"step {snap.step} was not committed: the saves were closed")
        self.committer.submit(
            snap.step, local_dir, state, on_done=self._after_commit, report=report
        )

    def _mkdtemp(self, g: int) -> str:
        return tempfile.mkdtemp(
            prefix=f"spotrain-{g:012d}-", dir=self.options.local_tmp_dir or None
        )

    def _blocked(self, t0: float) -> None:
        self.stats.add(time.perf_counter() - t0)

    def _save_blocking(
        self, g: int, parts: ModelParts, state: dict[str, Any], rows: np.ndarray, t0: float
    ) -> None:
        local_dir = self._mkdtemp(g)
        parts.checkpoint.write(os.path.join(local_dir, CKPT_PREFIX))  # every rank
        if not self.is_chief:
            shutil.rmtree(local_dir, ignore_errors=True)
            self._blocked(t0)
            return
        snapshot.write_rows(local_dir, rows)
        report: dict[str, Any] = {**self._attempt(), **_timing(t0)}
        if self.committer is not None:
            report["started"] = time.monotonic()
            self.committer.submit(g, local_dir, state, on_done=self._after_commit, report=report)
        else:
            try:
                manifest = self._store().commit(g, local_dir, state, report=report, consume=True)
            finally:
                shutil.rmtree(local_dir, ignore_errors=True)
            self._after_commit(manifest)
        self._blocked(t0)


def _timing(t0: float) -> dict[str, float]:
    """A save's ``blocked_s`` so far and ``trained_at``: the wall time its step's training
    ended (the save's start, ``t0`` on the ``perf_counter`` clock)."""
    blocked = time.perf_counter() - t0
    return {"blocked_s": round(blocked, 6), "trained_at": round(time.time() - blocked, 3)}
