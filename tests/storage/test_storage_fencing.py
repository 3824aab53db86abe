"""Fencing and verified trust on every backend (file, memory, SeaweedFS S3).

Two writers of one run: A started under an old lease generation, B under the newer one. A's
commits, deletes, retention, sweep and events are refused with StaleWriterError and nothing of
B's changes. Commits of one step never tear it; only verified steps count for retention.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest

from storage.checkpoints import CheckpointStore, StoreOptions
from storage.committer import AsyncCommitter
from storage.errors import StaleWriterError
from storage.fencing import Fence
from storage.lease import Lease, LeaseSettingError
from storage.location import RunLocation
from storage.manifest import body_digest
from storage.run_record import RunRecord
from tests.conftest import FAST_RETRY
from tests.storage.helpers import make_checkpoint, read_tree, step_file

OPTS = StoreOptions(retry=FAST_RETRY, concurrency=4)


def _loc(run_url: str, storage_options: dict[str, Any]) -> RunLocation:
    return RunLocation.from_url(run_url, storage_options)


def _listing(loc: RunLocation) -> dict[str, Any]:
    """Every file of the run (lease excluded) with its size and content."""
    loc.fs.invalidate_cache()
    out = {}
    for p, info in loc.fs.find(loc.root, detail=True).items():
        if info.get("type") == "file" and not p.endswith("lease.json"):
            out[p] = (info.get("size"), loc.fs.cat_file(p))
    return out


def _two_generations(loc: RunLocation) -> tuple[Fence, Fence]:
    """A acquires the lease (generation g), B takes it over (g + 1)."""
    a = Lease(loc, "host-a:1", 30.0, safety_margin_s=1.0, retry=FAST_RETRY)
    gen_a = a.acquire().generation
    a.release()  # (or expired: what matters is that B acquired after A)
    b = Lease(loc, "host-b:2", 30.0, safety_margin_s=1.0, retry=FAST_RETRY)
    gen_b = b.acquire().generation
    assert gen_b == gen_a + 1
    return Fence(loc, gen_a), Fence(loc, gen_b)


def test_stale_writer_changes_nothing(run_url: str, storage_options: dict, tmp_path: Path) -> None:
    loc = _loc(run_url, storage_options)
    fence_a, fence_b = _two_generations(loc)
    b = CheckpointStore(loc, options=OPTS, fence=fence_b)
    a = CheckpointStore(loc, options=OPTS, fence=fence_a)
    make_checkpoint(tmp_path / "c", {"w.bin": 300, "sub/x": 20})
    for s in (10, 20, 30):
        m = b.commit(s, tmp_path / "c", {"s": s})
        assert m.generation == fence_b.generation and m.prefix.startswith(f"g{fence_b.generation}-")
    loc.fs.pipe_file(loc.step_dir(40) + "/torn", b"partial")  # B's upload in progress
    before = _listing(loc)

    with pytest.raises(StaleWriterError, match="generation"):
        a.commit(40, tmp_path / "c", {"s": 40})
    with pytest.raises(StaleWriterError):
        a.commit(30, tmp_path / "c", {"s": "A's 30"})  # an existing step: refused too
    with pytest.raises(StaleWriterError):
        a.apply_retention(keep_last=1)
    with pytest.raises(StaleWriterError):
        a.delete_step(10)
    with pytest.raises(StaleWriterError):
        a.sweep_uncommitted(min_age_s=-5)
    with pytest.raises(StaleWriterError):
        RunRecord(loc, fence=fence_a).append_event("lease_lost", step=30)
    committer = AsyncCommitter(CheckpointStore(loc, options=OPTS), fence=fence_a)
    make_checkpoint(tmp_path / "d")
    committer.submit(50, tmp_path / "d", {})
    with pytest.raises(StaleWriterError):
        committer.wait_until_finished(30)
    with pytest.raises(StaleWriterError):  # stale for good
        committer.submit(60, tmp_path / "d", {})
    with pytest.raises(StaleWriterError):
        committer.close(5)

    assert _listing(loc) == before  # nothing of B's changed, nothing added
    assert b.committed_steps() == [10, 20, 30]
    assert b.manifest(30).state == {"s": 30}
    # B itself goes on
    assert b.apply_retention(keep_last=2) == [10]
    RunRecord(loc, fence=fence_b).append_event("metrics", step=30)


def test_concurrent_commits_of_one_step_leave_a_whole_step(
    run_url: str, storage_options: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    loc = _loc(run_url, storage_options)
    barrier = threading.Barrier(2, timeout=30)
    write_manifest = CheckpointStore._write_manifest

    def both_uploaded_first(self: CheckpointStore, *args: Any, **kwargs: Any) -> Any:
        barrier.wait()  # both commits have uploaded their files: they race on the manifest
        return write_manifest(self, *args, **kwargs)

    monkeypatch.setattr(CheckpointStore, "_write_manifest", both_uploaded_first)
    trees = [
        make_checkpoint(tmp_path / f"c{i}", {"w.bin": 400 + i, "idx": 30}, seed=i + 1)
        for i in (0, 1)
    ]
    results: list[Any] = [None, None]

    def commit(i: int) -> None:
        results[i] = CheckpointStore(loc, options=OPTS).commit(70, tmp_path / f"c{i}", {"i": i})

    threads = [threading.Thread(target=commit, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[0] is not None and results[0] == results[1]  # both answer the winner
    store = CheckpointStore(loc, options=OPTS)
    m = store.verify_step(70, full=True)
    out = tmp_path / "out"
    store.restore(out)
    assert read_tree(out) == trees[m.state["i"]]
    # the loser removed its own folder: only the winner's is left
    loc.fs.invalidate_cache()
    tops = {p.split("/checkpoints/", 1)[1].split("/")[1] for p in loc.fs.find(loc.step_dir(70))}
    assert tops == {m.prefix, "MANIFEST.json"}


def test_sweep_removes_unreferenced_commit_folders(
    run_url: str, storage_options: dict, tmp_path: Path
) -> None:
    loc = _loc(run_url, storage_options)
    store = CheckpointStore(loc, options=OPTS)
    files = make_checkpoint(tmp_path / "c")
    m = store.commit(5, tmp_path / "c", {})
    loc.fs.pipe_file(loc.step_dir(5) + "/g9-deadbeef/w", b"a killed commit's upload")
    assert store.sweep_uncommitted(min_age_s=3600) == []
    assert loc.fs.exists(loc.step_dir(5) + "/g9-deadbeef/w")  # young: maybe still uploading
    store.sweep_uncommitted(min_age_s=-5)
    loc.fs.invalidate_cache()
    assert not loc.fs.exists(loc.step_dir(5) + "/g9-deadbeef/w")
    assert store.verify_step(5, full=True) == m
    store.restore(tmp_path / "out")
    assert read_tree(tmp_path / "out") == files


def _rewrite_manifest(store: CheckpointStore, step: int, change: Any, redigest: bool) -> None:
    path = store.loc.manifest_path(step)
    doc = json.loads(store.fs.cat_file(path))
    change(doc)
    if redigest:
        doc["digest"] = body_digest({k: v for k, v in doc.items() if k != "digest"})
    store.fs.pipe_file(path, json.dumps(doc).encode())


def test_edited_manifest_state_falls_back(
    run_url: str, storage_options: dict, tmp_path: Path
) -> None:
    store = CheckpointStore(run_url, storage_options, OPTS)
    good = make_checkpoint(tmp_path / "c1")
    store.commit(1, tmp_path / "c1", {"global_step": 1, "step_in_epoch": 1})
    make_checkpoint(tmp_path / "c2")
    store.commit(2, tmp_path / "c2", {"global_step": 2, "step_in_epoch": 2})
    _rewrite_manifest(store, 2, lambda d: d["state"].update(global_step=7), redigest=False)
    m = store.restore(tmp_path / "out")
    assert m.step == 1 and read_tree(tmp_path / "out") == good
    corrupt = RunRecord(run_url, storage_options).events(kinds=["checkpoint_corrupt"])
    assert [e.payload["step"] for e in corrupt] == [2]
    assert "digest" in corrupt[0].payload["reason"]


@pytest.mark.parametrize("damage", ["truncate", "bitflip", "dotdot", "unparseable"])
def test_retention_keeps_the_newest_verified_step(
    run_url: str, storage_options: dict, tmp_path: Path, damage: str
) -> None:
    store = CheckpointStore(run_url, storage_options, OPTS)
    make_checkpoint(tmp_path / "c", {"w.bin": 500, "idx": 40})
    for s in (10, 20, 30):
        store.commit(s, tmp_path / "c", {"s": s})
    if damage == "truncate":
        store.fs.pipe_file(step_file(store, 30, "w.bin"), b"cut")
    elif damage == "bitflip":  # same size: only the full checksum sees it
        data = bytearray(store.fs.cat_file(step_file(store, 30, "w.bin")))
        data[7] ^= 0xFF
        store.fs.pipe_file(step_file(store, 30, "w.bin"), bytes(data))
    elif damage == "dotdot":
        _rewrite_manifest(
            store, 30, lambda d: d["files"][0].update(path="../../evil"), redigest=True
        )
    else:
        store.fs.pipe_file(store.loc.manifest_path(30), b"{not json")
    fresh = CheckpointStore(run_url, storage_options, OPTS)  # has checksummed nothing itself
    assert fresh.apply_retention(keep_last=1) == [10, 30]
    assert fresh.committed_steps() == [20]
    assert fresh.restore(tmp_path / "out").step == 20


def test_retention_never_deletes_the_last_verified_step(
    run_url: str, storage_options: dict, tmp_path: Path
) -> None:
    store = CheckpointStore(run_url, storage_options, OPTS)
    make_checkpoint(tmp_path / "c", {"w.bin": 100})
    for s in (1, 2, 3):
        store.commit(s, tmp_path / "c", {})
    for s in (2, 3):
        store.fs.pipe_file(step_file(store, s, "w.bin"), b"x")
    fresh = CheckpointStore(run_url, storage_options, OPTS)
    assert fresh.apply_retention(keep_last=2) == [2, 3]
    assert fresh.committed_steps() == [1]
    store.fs.pipe_file(step_file(store, 1, "w.bin"), b"x")
    assert fresh.apply_retention(keep_last=1) == []  # nothing verifies: nothing is deleted
    assert fresh.committed_steps() == [1]


def test_lease_ttl_has_a_floor(run_url: str, storage_options: dict) -> None:
    with pytest.raises(LeaseSettingError, match=r"floor of 5\.0s"):
        Lease(run_url, "h:1", 2.0, storage_options, safety_margin_s=0.5)
    Lease(run_url, "h:1", 5.0, storage_options, safety_margin_s=2.0)
