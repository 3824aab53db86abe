"""AsyncCommitter: background commits, error capture, superseding."""

from __future__ import annotations

import errno
import threading
from pathlib import Path
from typing import Any

import pytest

from storage.checkpoints import CheckpointStore, StoreOptions
from storage.committer import AsyncCommitter
from storage.errors import CommitTimeoutError, PermanentStorageError
from storage.manifest import Manifest
from tests.conftest import FAST_RETRY
from tests.fakes import FaultyFileSystem
from tests.storage.helpers import make_checkpoint, read_tree

OPTS = StoreOptions(retry=FAST_RETRY, concurrency=4)


class GatedStore(CheckpointStore):
    """A real store whose commits wait for a gate, so tests control timing without sleeps."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        super().__init__(*a, **kw)
        self.gate = threading.Event()
        self.started = threading.Event()
        self.committed: list[int] = []

    def commit(self, step: int, local_dir: Any, state: Any, **kw: Any) -> Manifest:
        self.started.set()
        assert self.gate.wait(30)
        m = super().commit(step, local_dir, state, **kw)
        self.committed.append(step)
        return m


def test_background_commit_and_cleanup(run_url: str, storage_options: dict, tmp_path: Path) -> None:
    store = CheckpointStore(run_url, storage_options, OPTS)
    files = make_checkpoint(tmp_path / "c1")
    done: list[int] = []
    with AsyncCommitter(store) as c:
        c.submit(1, tmp_path / "c1", {"epoch": 0}, on_done=lambda m: done.append(m.step))
        c.wait_until_finished(timeout_s=60)
        assert c.last_committed_step == 1 and done == [1]
    assert not (tmp_path / "c1").exists()  # local copy deleted after the commit
    store.restore(tmp_path / "out")
    assert read_tree(tmp_path / "out") == files


def test_newer_submit_supersedes_waiting_one(tmp_path: Path) -> None:
    store = GatedStore("memory://committer/supersede", options=OPTS)
    for s in (1, 2, 3):
        make_checkpoint(tmp_path / f"c{s}")
    with AsyncCommitter(store) as c:
        c.submit(1, tmp_path / "c1", {})
        assert store.started.wait(30)  # step 1 is uploading
        c.submit(2, tmp_path / "c2", {})  # waits
        c.submit(3, tmp_path / "c3", {})  # supersedes 2
        assert not (tmp_path / "c2").exists()
        store.gate.set()
        c.wait_until_finished(60)
    assert store.committed == [1, 3]
    assert store.committed_steps() == [1, 3]


def test_no_supersede_mode_keeps_every_checkpoint(tmp_path: Path) -> None:
    store = GatedStore("memory://committer/keep", options=OPTS)
    for s in (1, 2, 3):
        make_checkpoint(tmp_path / f"c{s}")
    c = AsyncCommitter(store, supersede=False)
    c.submit(1, tmp_path / "c1", {})
    assert store.started.wait(30)
    c.submit(2, tmp_path / "c2", {})
    t = threading.Thread(target=c.submit, args=(3, tmp_path / "c3", {}))
    t.start()  # blocks until 2 starts uploading
    store.gate.set()
    t.join(30)
    c.close(60)
    assert store.committed == [1, 2, 3]


def test_wait_timeout(tmp_path: Path) -> None:
    store = GatedStore("memory://committer/timeout", options=OPTS)
    make_checkpoint(tmp_path / "c1")
    c = AsyncCommitter(store)
    c.submit(1, tmp_path / "c1", {})
    with pytest.raises(CommitTimeoutError, match=r"timeout_s=0\.01") as info:
        c.wait_until_finished(timeout_s=0.01)
    assert info.value.retryable
    store.gate.set()
    c.close(60)
    assert c.last_committed_step == 1


def test_upload_error_is_reraised(run_url: str, storage_options: dict, tmp_path: Path) -> None:
    base = CheckpointStore(run_url, storage_options, OPTS)
    fs = FaultyFileSystem(base.fs)
    fs.fail("put_file", lambda: PermissionError(errno.EACCES, "Access Denied"), times=1)
    store = CheckpointStore(run_url, storage_options, OPTS, fs=fs)
    make_checkpoint(tmp_path / "c1")
    make_checkpoint(tmp_path / "c2")
    c = AsyncCommitter(store)
    c.submit(1, tmp_path / "c1", {})
    with pytest.raises(PermanentStorageError):
        c.wait_until_finished(60)
    assert (tmp_path / "c1").exists()  # kept: not committed
    c.submit(2, tmp_path / "c2", {})  # error was raised once; the committer goes on
    c.close(60)
    assert c.last_committed_step == 2 and base.committed_steps() == [2]


def test_context_manager_reraises_on_exit(tmp_path: Path) -> None:
    base = CheckpointStore("memory://committer/ctx", options=OPTS)
    fs = FaultyFileSystem(base.fs)
    fs.fail("pipe_file", lambda: PermissionError(errno.EACCES, "denied"), times=None)
    store = CheckpointStore("memory://committer/ctx", options=OPTS, fs=fs)
    make_checkpoint(tmp_path / "c1")
    with pytest.raises(PermanentStorageError), AsyncCommitter(store) as c:
        c.submit(1, tmp_path / "c1", {})
    # an exception already propagating is not masked by the upload error
    make_checkpoint(tmp_path / "c2")
    with pytest.raises(KeyError), AsyncCommitter(store) as c:
        c.submit(2, tmp_path / "c2", {})
        raise KeyError("training failed")
