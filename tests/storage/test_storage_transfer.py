"""storage.transfer: the one thread-pool pattern (first error re-raised, the rest cancelled)."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from storage.transfer import FileTransfer, run_parallel
from tests.conftest import FAST_RETRY
from tests.storage.helpers import make_checkpoint, read_tree


def test_run_parallel_reraises_the_first_error_and_cancels_the_rest() -> None:
    ran: list[int] = []
    lock = threading.Lock()

    def job(i: int) -> None:
        with lock:
            ran.append(i)
        if i == 0:
            raise OSError("boom")
        time.sleep(0.05)

    with pytest.raises(OSError, match="boom"):
        run_parallel([lambda i=i: job(i) for i in range(50)], concurrency=1)
    # one thread: the job that failed ran first, and the jobs queued behind it were cancelled
    # (at most the one the thread picked up before the cancel ran)
    assert ran[0] == 0 and len(ran) < 50
    run_parallel([], concurrency=4)  # nothing to do is fine


def _transfer(fs: Any) -> FileTransfer:
    from storage.retry import call_with_retry

    def call(what: str, fn: Any) -> Any:
        return call_with_retry(fn, what=what, url="test://", options=FAST_RETRY)

    return FileTransfer(fs, concurrency=3, hash_block_bytes=2**10, call=call)


@pytest.mark.parametrize("protocol", ["file", "memory"])
def test_put_and_get_files_round_trip(protocol: str, tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem(protocol, **({"auto_mkdir": True} if protocol == "file" else {}))
    remote = str(tmp_path / "remote") if protocol == "file" else f"/xfer-{tmp_path.name}"
    files = make_checkpoint(tmp_path / "src")
    t = _transfer(fs)
    hashes = t.put_files(tmp_path / "src", sorted(files), remote)
    seen: dict[str, Any] = {}
    t.get_files(remote, sorted(files), tmp_path / "dst", lambda rel, got: seen.update({rel: got}))
    assert read_tree(tmp_path / "dst") == files
    assert seen == hashes and sorted(hashes) == sorted(files)


def test_get_files_deletes_what_it_wrote_on_failure(tmp_path: Path) -> None:
    import fsspec

    fs = fsspec.filesystem("file", auto_mkdir=True)
    files = make_checkpoint(tmp_path / "src")
    _transfer(fs).put_files(tmp_path / "src", sorted(files), str(tmp_path / "remote"))
    missing: list[str] = []

    def verify(rel: str, got: Any) -> None:
        if got is None:
            missing.append(rel)
            raise ValueError(f"{rel} is missing")

    with pytest.raises(ValueError, match="nope is missing"):
        _transfer(fs).get_files(str(tmp_path / "remote"), [*files, "nope"], tmp_path / "d", verify)
    assert missing == ["nope"]
    assert read_tree(tmp_path / "d") == {}


def test_a_handed_over_local_dir_is_linked_and_its_hash_is_of_the_committed_bytes(
    tmp_path: Path,
) -> None:
    from storage.checkpoints import CheckpointStore
    from storage.manifest import sha256_file

    store = CheckpointStore(str(tmp_path / "run"))
    for step, consume in ((1, False), (2, True)):
        src = tmp_path / f"src{step}"
        make_checkpoint(src)
        m = store.commit(step, src, {}, consume=consume)
        for entry in m.files:
            committed = tmp_path / "run" / "checkpoints" / f"{step:012d}" / m.prefix / entry.path
            assert sha256_file(committed) == (entry.size, entry.sha256)
            # a handed-over file is linked (same inode), a borrowed one copied
            assert (committed.stat().st_ino == (src / entry.path).stat().st_ino) is consume
        store.restore(tmp_path / f"out{step}", step=step)
        assert read_tree(tmp_path / f"out{step}") == read_tree(src)


@pytest.mark.parametrize("backend", ["memory", "s3"])  # object stores: local files are copied
def test_big_downloads_from_an_object_store_are_ranged_and_checked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_url: str, storage_options: dict
) -> None:
    import storage.transfer as transfer
    from storage.checkpoints import CheckpointStore
    from storage.errors import NoValidCheckpointError

    monkeypatch.setattr(transfer, "DEFAULT_RANGED_GET_MIN_BYTES", 1000)  # a shrunk setting
    monkeypatch.setattr(transfer, "DEFAULT_RANGED_GET_PART_BYTES", 777)
    src = tmp_path / "src"
    src.mkdir()
    (src / "big.data").write_bytes(bytes(range(256)) * 40 + b"end")  # 14 parts
    (src / "small.index").write_bytes(b"x" * 10)
    store = CheckpointStore(run_url, storage_options)
    m = store.commit(1, src, {})
    store.restore(tmp_path / "out", step=1)
    assert read_tree(tmp_path / "out") == read_tree(src)
    # a longer remote file (same prefix) is not taken for the committed one
    big = f"{store.loc.step_dir(1)}/{m.prefix}/big.data"
    store.fs.pipe_file(big, (src / "big.data").read_bytes() + b"more")
    store.fs.invalidate_cache()
    with pytest.raises(NoValidCheckpointError):
        store.restore(tmp_path / "out2", step=1)
