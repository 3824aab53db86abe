"""CheckpointStore on every backend (file, memory, SeaweedFS S3)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import Any

import pytest

from storage.checkpoints import CheckpointStore, StoreOptions
from storage.errors import (
    CheckpointStateError,
    InvalidNameError,
    NoValidCheckpointError,
    PermanentStorageError,
    TransientStorageError,
)
from storage.run_record import RunRecord
from tests.conftest import FAST_RETRY
from tests.fakes import FaultyFileSystem, corrupt_file
from tests.storage.helpers import make_checkpoint, read_tree, sha256_bytes, step_file

OPTS = StoreOptions(retry=FAST_RETRY, concurrency=4)


def _files(fs: Any, path: str) -> list[str]:
    """Files (not directory entries) under ``path``."""
    fs.invalidate_cache()
    return [p for p, i in fs.find(path, detail=True).items() if i.get("type") == "file"]


def _store(run_url: str, storage_options: dict[str, Any], **kw: Any) -> CheckpointStore:
    return CheckpointStore(run_url, storage_options, OPTS, **kw)


def test_commit_list_latest_restore(run_url: str, storage_options: dict, tmp_path: Path) -> None:
    store = _store(run_url, storage_options)
    assert store.committed_steps() == [] and store.latest() is None
    files1 = make_checkpoint(tmp_path / "c1")
    m1 = store.commit(
        10, tmp_path / "c1", {"epoch": 0, "seeds": [1, 2], "history": {"loss": [0.5]}}
    )
    assert m1.step == 10 and m1.total_bytes == sum(len(b) for b in files1.values())
    assert {f.path: f.sha256 for f in m1.files} == {k: sha256_bytes(v) for k, v in files1.items()}
    files2 = make_checkpoint(tmp_path / "c2")
    store.commit(20, tmp_path / "c2", {"epoch": 1})
    assert store.committed_steps() == [10, 20]
    latest = store.latest()
    assert latest is not None and latest.step == 20 and latest.state == {"epoch": 1}
    assert store.manifest(10).state["history"] == {"loss": [0.5]}

    out = tmp_path / "restored"
    m = store.restore(out)
    assert m.step == 20 and read_tree(out) == files2
    out10 = tmp_path / "restored10"
    assert store.restore(out10, step=10).step == 10 and read_tree(out10) == files1
    # step=15 restores the newest committed step at or below it
    assert store.restore(tmp_path / "r15", step=15).step == 10
    kinds = [e.kind for e in RunRecord(run_url, storage_options).events()]
    assert kinds == ["checkpoint_commit", "checkpoint_commit"]


def test_recommit_of_a_committed_step_is_a_noop(
    run_url: str, storage_options: dict, tmp_path: Path
) -> None:
    store = _store(run_url, storage_options)
    first = make_checkpoint(tmp_path / "a", {"x.bin": 100, "old.bin": 10})
    m1 = store.commit(5, tmp_path / "a", {"finished": False})
    listing = sorted(_files(store.fs, store.loc.step_dir(5)))
    make_checkpoint(tmp_path / "b", {"x.bin": 120})
    m2 = store.commit(5, tmp_path / "b", {"finished": True})
    assert m2 == m1  # the existing manifest, unchanged
    assert sorted(_files(store.fs, store.loc.step_dir(5))) == listing  # nothing deleted/added
    out = tmp_path / "out"
    store.restore(out)
    assert read_tree(out) == first


def test_recommit_replaces_a_step_that_does_not_verify(
    run_url: str, storage_options: dict, tmp_path: Path
) -> None:
    store = _store(run_url, storage_options)
    make_checkpoint(tmp_path / "a", {"x.bin": 100})
    store.commit(5, tmp_path / "a", {"n": 1})
    store.fs.pipe_file(step_file(store, 5, "x.bin"), b"short")  # truncated
    new = make_checkpoint(tmp_path / "b", {"x.bin": 120})
    m = store.commit(5, tmp_path / "b", {"n": 2})
    assert m.state == {"n": 2}
    store.restore(tmp_path / "out")
    assert read_tree(tmp_path / "out") == new


def test_bare_local_path(tmp_path: Path) -> None:
    store = CheckpointStore(str(tmp_path / "runs" / "bare"), options=OPTS)
    files = make_checkpoint(tmp_path / "c")
    store.commit(1, tmp_path / "c", {})
    assert (tmp_path / "runs/bare/checkpoints/000000000001/MANIFEST.json").exists()
    store.restore(tmp_path / "o")
    assert read_tree(tmp_path / "o") == files


def test_bad_inputs_are_refused_before_any_upload(
    run_url: str, storage_options: dict, tmp_path: Path
) -> None:
    store = _store(run_url, storage_options)
    make_checkpoint(tmp_path / "c")
    with pytest.raises(CheckpointStateError, match="not plain JSON"):
        store.commit(1, tmp_path / "c", {"x": object()})
    with pytest.raises(CheckpointStateError):
        store.commit(1, tmp_path / "c", {"x": float("nan")})
    with pytest.raises(InvalidNameError):
        store.commit(-1, tmp_path / "c", {})
    with pytest.raises(CheckpointStateError, match="not a directory"):
        store.commit(1, tmp_path / "missing", {})
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointStateError, match="no files"):
        store.commit(1, tmp_path / "empty", {})
    (tmp_path / "c" / "MANIFEST.json").write_text("{}")
    with pytest.raises(CheckpointStateError, match="reserved"):
        store.commit(1, tmp_path / "c", {})
    assert store.committed_steps() == []


def test_corrupt_latest_falls_back_with_event(
    run_url: str, storage_options: dict, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _store(run_url, storage_options)
    good = make_checkpoint(tmp_path / "c1")
    store.commit(1, tmp_path / "c1", {"n": 1})
    make_checkpoint(tmp_path / "c2")
    store.commit(2, tmp_path / "c2", {"n": 2})
    corrupt_file(store.fs, step_file(store, 2, "weights.index"))

    out = tmp_path / "out"
    m = store.restore(out)
    assert m.step == 1 and read_tree(out) == good
    assert "checkpoint is corrupt" in caplog.text
    corrupt = RunRecord(run_url, storage_options).events(kinds=["checkpoint_corrupt"])
    assert [e.payload["step"] for e in corrupt] == [2]
    assert "weights.index" in corrupt[0].payload["reason"]


def test_missing_file_and_bad_manifest_fall_back(
    run_url: str, storage_options: dict, tmp_path: Path
) -> None:
    store = _store(run_url, storage_options)
    for s in (1, 2, 3):
        make_checkpoint(tmp_path / f"c{s}")
        store.commit(s, tmp_path / f"c{s}", {"s": s})
    store.fs.rm(step_file(store, 3, "sub/opt.bin"))
    store.fs.pipe_file(store.loc.manifest_path(2), b"{not json")
    assert store.restore(tmp_path / "out").step == 1
    steps = [
        e.payload["step"]
        for e in RunRecord(run_url, storage_options).events(["checkpoint_corrupt"])
    ]
    assert steps == [3, 2]


def test_no_valid_checkpoint(run_url: str, storage_options: dict, tmp_path: Path) -> None:
    store = _store(run_url, storage_options)
    with pytest.raises(NoValidCheckpointError, match="no committed checkpoint"):
        store.restore(tmp_path / "o")
    make_checkpoint(tmp_path / "c")
    store.commit(7, tmp_path / "c", {})
    corrupt_file(store.fs, step_file(store, 7, "weights.index"))
    with pytest.raises(NoValidCheckpointError) as info:
        store.restore(tmp_path / "o")
    assert info.value.tried == (7,)
    assert not (tmp_path / "o" / "weights.index").exists()  # bad bytes never left behind


def test_retention(run_url: str, storage_options: dict, tmp_path: Path) -> None:
    store = _store(run_url, storage_options)
    make_checkpoint(tmp_path / "c", {"w": 10})
    for s in (100, 200, 300, 400, 500, 600):
        store.commit(s, tmp_path / "c", {})
    assert store.apply_retention(keep_last=2, keep_every=300) == [100, 200, 400]
    assert store.committed_steps() == [300, 500, 600]
    assert store.apply_retention(keep_last=1) == [300, 500]
    assert store.committed_steps() == [600]
    assert _files(store.fs, store.loc.step_dir(100)) == []
    with pytest.raises(CheckpointStateError):
        store.apply_retention(keep_last=0)


def test_sweep_respects_age_threshold(run_url: str, storage_options: dict, tmp_path: Path) -> None:
    store = _store(run_url, storage_options)
    make_checkpoint(tmp_path / "c", {"w": 10})
    store.commit(1, tmp_path / "c", {})
    # a torn step: files, no manifest
    store.fs.pipe_file(store.loc.step_dir(2) + "/w", b"partial")
    store.fs.pipe_file(store.loc.checkpoints_dir + "/not-a-step/x", b"ignored")
    assert store.sweep_uncommitted(min_age_s=3600) == []  # young: a writer may still be at it
    assert store.fs.exists(store.loc.step_dir(2) + "/w")
    # the server's clock may be coarse (s3 LastModified has 1 s resolution): a negative
    # threshold means "any age", with no sleep.
    assert store.sweep_uncommitted(min_age_s=-5) == [2]
    assert store.committed_steps() == [1]
    store.fs.invalidate_cache()
    assert _files(store.fs, store.loc.step_dir(2)) == []
    assert store.fs.exists(store.loc.checkpoints_dir + "/not-a-step/x")


def test_transient_faults_are_retried(run_url: str, storage_options: dict, tmp_path: Path) -> None:
    base = _store(run_url, storage_options)
    fs = FaultyFileSystem(base.fs)
    fs.fail("put_file", lambda: ConnectionResetError(errno.ECONNRESET, "reset by peer"), times=2)
    fs.fail("pipe_file", lambda: TimeoutError("timed out"), times=1)
    fs.fail("get_file", lambda: OSError(errno.EBUSY, "SlowDown"), times=2)
    fs.fail("cat_file", lambda: OSError(errno.ETIMEDOUT, "read timeout"), times=1)
    store = _store(run_url, storage_options, fs=fs)
    files = make_checkpoint(tmp_path / "c")
    store.commit(3, tmp_path / "c", {"ok": True})
    assert store.restore(tmp_path / "out").step == 3
    assert read_tree(tmp_path / "out") == files
    for method, n in (("put_file", 2), ("pipe_file", 1), ("get_file", 2), ("cat_file", 1)):
        assert fs.raised(method) == n


def test_transient_faults_exhausted(run_url: str, storage_options: dict, tmp_path: Path) -> None:
    base = _store(run_url, storage_options)
    make_checkpoint(tmp_path / "c")
    base.commit(1, tmp_path / "c", {})
    base.commit(2, tmp_path / "c", {})
    fs = FaultyFileSystem(base.fs)
    fs.fail("get_file", lambda: ConnectionError("connection refused"), times=None)
    store = _store(run_url, storage_options, fs=fs)
    # a network fault is not corruption: no silent fallback to step 1
    with pytest.raises(TransientStorageError, match="after 4 attempts") as info:
        store.restore(tmp_path / "out")
    assert info.value.retryable
    assert RunRecord(run_url, storage_options).events(["checkpoint_corrupt"]) == []


def test_permanent_fault_commits_nothing(
    run_url: str, storage_options: dict, tmp_path: Path
) -> None:
    base = _store(run_url, storage_options)
    fs = FaultyFileSystem(base.fs)
    # the second upload is refused for good: access denied
    fs.fail("put_file", lambda: PermissionError(errno.EACCES, "Access Denied"), times=None, after=1)
    store = _store(
        run_url,
        storage_options,
        fs=fs,
    )
    make_checkpoint(tmp_path / "c")
    with pytest.raises(PermanentStorageError, match="fix: check the credentials") as info:
        store.commit(4, tmp_path / "c", {})
    assert not info.value.retryable
    assert store.url in str(info.value)
    assert fs.calls["put_file"] <= 3  # each of the 3 files tried at most once: not retried
    assert base.committed_steps() == []
    base.fs.invalidate_cache()
    # cleaned up (no objects left; SeaweedFS may still list the empty prefix as a directory)
    assert _files(base.fs, base.loc.step_dir(4)) == []


def test_permanent_fault_on_manifest_write(
    run_url: str, storage_options: dict, tmp_path: Path
) -> None:
    base = _store(run_url, storage_options)
    fs = FaultyFileSystem(base.fs)
    fs.fail("pipe_file", lambda: OSError(errno.ENOSPC, "No space left on device"), times=None)
    store = _store(run_url, storage_options, fs=fs)
    make_checkpoint(tmp_path / "c")
    with pytest.raises(PermanentStorageError, match="free disk space"):
        store.commit(4, tmp_path / "c", {})
    assert base.committed_steps() == []


def test_missing_bucket_is_permanent(seaweed, tmp_path: Path) -> None:
    store = CheckpointStore("s3://no-such-bucket-spotrain/run", seaweed.storage_options, OPTS)
    make_checkpoint(tmp_path / "c")
    t0 = time.monotonic()
    with pytest.raises(PermanentStorageError) as info:
        store.commit(1, tmp_path / "c", {})
    assert "bucket" in str(info.value).lower()
    assert seaweed.secret_key not in str(info.value)
    assert time.monotonic() - t0 < 30


def test_wrong_credentials_are_permanent_and_redacted(seaweed, tmp_path: Path) -> None:
    opts = dict(seaweed.storage_options, secret="wrong-secret-value-xyz")
    store = CheckpointStore(f"s3://{seaweed.bucket}/creds/run", opts, OPTS)
    make_checkpoint(tmp_path / "c")
    with pytest.raises(PermanentStorageError) as info:
        store.commit(1, tmp_path / "c", {})
    assert "wrong-secret-value-xyz" not in str(info.value)
    assert "credentials" in str(info.value)


def test_hash_uses_large_blocks(tmp_path: Path) -> None:
    from storage.manifest import sha256_file

    data = os.urandom(3 * 2**20 + 7)
    (tmp_path / "f").write_bytes(data)
    assert sha256_file(tmp_path / "f", 2**20) == (len(data), sha256_bytes(data))


def test_store_pickles(run_url: str, storage_options: dict, tmp_path: Path) -> None:
    import pickle

    store = _store(run_url, storage_options)
    make_checkpoint(tmp_path / "c")
    store.commit(1, tmp_path / "c", {"a": 1})
    clone = pickle.loads(pickle.dumps(store))
    assert clone.committed_steps() == [1] and clone.url == store.url


def test_empty_and_nested_files(run_url: str, storage_options: dict, tmp_path: Path) -> None:
    store = _store(run_url, storage_options)
    files = make_checkpoint(tmp_path / "c", {"empty": 0, "a/b/c/deep.bin": 33, "x": 1})
    m = store.commit(0, tmp_path / "c", {})
    assert sorted(f.path for f in m.files) == sorted(files)
    store.restore(tmp_path / "out")
    assert read_tree(tmp_path / "out") == files
