"""The backup dir beyond commits: this process's background uploads to each run, and the
clean-up of ``delete_checkpoint=True``.

A fit that ends with an exception leaves its background upload running (fit calls no hook
on an exception); a retry in the same process with a new ``BackupAndRestore`` waits for it
(:func:`wait_for_other`) so that it restores the last commit, not the one before.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Protocol

from storage.checkpoints import CheckpointStore

logger = logging.getLogger(__name__)


class Pending(Protocol):
    """Background saves of one state (``trainer.saving.Saver``: snapshot write + commit)."""

    def wait_until_finished(self, timeout_s: float | None = None) -> None: ...


_LIVE: dict[str, Pending] = {}
_LOCK = threading.Lock()


def register(url: str, committer: Pending) -> None:
    """``committer`` is the background uploader of run ``url`` in this process from now on."""
    with _LOCK:
        _LIVE[url] = committer


def unregister(url: str, committer: Pending) -> None:
    with _LOCK:
        if _LIVE.get(url) is committer:
            del _LIVE[url]


def wait_for_other(url: str, mine: Pending | None, timeout_s: float) -> None:
    """Wait until the last background upload to ``url`` started by another state finished."""
    with _LOCK:
        other = _LIVE.get(url)
    if other is None or other is mine:
        return
    try:
        other.wait_until_finished(timeout_s)
    except Exception as exc:  # its step is then not committed: the restore takes what is
        logger.warning("[run=%s] an earlier upload failed: %s", url, exc)


def delete_backup(store: CheckpointStore) -> None:
    """Delete every step, then ``checkpoints/`` and ``events/`` themselves, leaving the backup
    dir empty; a dir with ``run.json`` (a spotrain run's record) keeps its events."""
    for step in store.committed_steps():
        store.delete_step(step)
    loc = store.loc
    if loc.fs.exists(loc.run_json):
        return
    for path in (loc.checkpoints_dir, loc.events_dir):
        with contextlib.suppress(FileNotFoundError):
            loc.fs.rm(path, recursive=True)
