"""The event log without clocks: order by (generation, per-writer sequence), fenced writers,
create-only and atomic writes, unreadable events skipped. Every backend unless marked."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from storage import events
from storage.errors import StaleWriterError
from storage.fencing import Fence
from storage.lease import Lease
from storage.location import RunLocation
from storage.run_record import _WRITER, RunRecord
from tests.conftest import FAST_RETRY

AHEAD_S = 120.0
FAR_FUTURE_NS = 4_102_444_800 * 10**9  # 2100-01-01


def _location(run_url: str, opts: dict[str, Any]) -> RunLocation:
    return RunLocation.from_url(run_url, opts)


def _take_lease(loc: RunLocation, holder: str) -> Fence:
    lease = Lease(loc, holder, 30.0, safety_margin_s=1.0, retry=FAST_RETRY)
    info = lease.acquire()
    lease.release()  # free for the next holder at once; the generation stays in lease.json
    return Fence(loc, info.generation)


def _names(loc: RunLocation) -> list[str]:
    loc.fs.invalidate_cache(loc.events_dir)
    try:
        return sorted(p.rsplit("/", 1)[-1] for p in loc.fs.ls(loc.events_dir, detail=False))
    except FileNotFoundError:
        return []


def test_a_clock_ahead_does_not_outrank_a_later_generation(run_url: str, storage_options: dict):
    loc = _location(run_url, storage_options)
    old = RunRecord(loc, fence=_take_lease(loc, "host-a"), clock=lambda: time.time() + AHEAD_S)
    events.write_state(old, "RUNNING", {"attempt": 1})
    new = RunRecord(loc, fence=_take_lease(loc, "host-b"))
    events.write_state(new, "SUCCEEDED", {"attempt": 1})
    reader = RunRecord(loc)
    assert events.last_state(reader) == {"state": "SUCCEEDED", "attempt": 1}
    first, second = reader.events()
    assert first.time > second.time  # the wall clocks disagree with the order, and lose
    assert (first.generation, second.generation) == (0, 1)


def test_a_clock_going_back_keeps_a_writers_order(run_url: str, storage_options: dict):
    now = [time.time()]
    rec = RunRecord(run_url, storage_options, clock=lambda: now[0])
    events.write_state(rec, "RUNNING", {})
    now[0] -= AHEAD_S  # NTP steps the clock back
    events.write_state(rec, "SUCCEEDED", {})
    assert events.last_state(RunRecord(run_url, storage_options)) == {"state": "SUCCEEDED"}


def test_old_style_names_read_as_generation_minus_one(run_url: str, storage_options: dict):
    loc = _location(run_url, storage_options)
    doc = {"seq": "x", "kind": "state", "time": 4.1e9, "payload": {"state": "FAILED"}}
    loc.fs.pipe_file(
        f"{loc.events_dir}/{FAR_FUTURE_NS:020d}-abcdef01-state.json", json.dumps(doc).encode()
    )
    rec = RunRecord(loc)
    events.write_state(rec, "SUCCEEDED", {})
    evs = rec.events()
    assert [(e.legacy, e.payload["state"]) for e in evs] == [(True, "FAILED"), (False, "SUCCEEDED")]
    assert events.last_state(rec) == {"state": "SUCCEEDED"}


def test_an_event_written_after_reading_sorts_after_what_was_read(
    run_url: str, storage_options: dict
) -> None:
    loc = _location(run_url, storage_options)
    ahead = _WRITER.seq + 500  # another writer of this generation that wrote 500 events
    doc = {"kind": "attempt_start", "time": 1.0, "payload": {"attempt": 2, "source": "ray"}}
    loc.fs.pipe_file(
        f"{loc.events_dir}/-0000001-0badc0de-{ahead:08d}-attempt_start.json",
        json.dumps(doc).encode(),
    )
    rec = RunRecord(loc)
    assert events.current_attempt(rec) == 2  # reading moves this writer's counter past it
    events.write_restore(rec, {}, step=10, attempt=2)
    assert [e.kind for e in rec.events()] == ["attempt_start", "restore"]


def test_a_stale_generation_writes_nothing(run_url: str, storage_options: dict) -> None:
    loc = _location(run_url, storage_options)
    stale = RunRecord(loc, fence=_take_lease(loc, "host-a"))
    stale.write_spec({"name": "r", "epochs": 1})
    events.write_state(stale, "RUNNING", {})
    current = RunRecord(loc, fence=_take_lease(loc, "host-b"))
    events.write_state(current, "RUNNING", {"attempt": 2})
    before, spec = _names(loc), loc.fs.cat_file(loc.run_json)
    with pytest.raises(StaleWriterError, match=r"generation 0.*generation 1"):
        events.write_state(stale, "SUCCEEDED", {})
    with pytest.raises(StaleWriterError):
        events.write_checkpoint_commit(stale, step=5, files=1, bytes=1, seconds=0.1)
    with pytest.raises(StaleWriterError):
        stale.write_spec({"name": "r", "epochs": 2})
    assert _names(loc) == before and loc.fs.cat_file(loc.run_json) == spec
    assert events.last_state(current) == {"state": "RUNNING", "attempt": 2}


def test_events_are_created_never_overwritten(run_url: str, storage_options: dict) -> None:
    loc = _location(run_url, storage_options)
    rec = RunRecord(loc)
    events.write_state(rec, "PENDING", {})
    taken = f"{loc.events_dir}/-0000001-{_WRITER.id}-{_WRITER.seq + 1:08d}-state.json"
    theirs = json.dumps({"kind": "state", "time": 1.0, "payload": {"state": "X"}}).encode()
    loc.fs.pipe_file(taken, theirs)  # e.g. another process that drew the same writer id
    mine = events.write_state(rec, "RUNNING", {})
    loc.fs.invalidate_cache(loc.events_dir)
    assert loc.fs.cat_file(taken) == theirs
    assert mine.seq == _WRITER.seq and [e.payload["state"] for e in rec.events()][-1] == "RUNNING"
    assert len(_names(loc)) == 3


def test_unreadable_events_are_skipped_with_a_warning(
    run_url: str, storage_options: dict, caplog: pytest.LogCaptureFixture
) -> None:
    loc = _location(run_url, storage_options)
    rec = RunRecord(loc)
    events.write_state(rec, "RUNNING", {})
    loc.fs.pipe_file(f"{loc.events_dir}/-0000001-0badc0de-00000001-state.json", b'{"kind": "st')
    loc.fs.pipe_file(f"{loc.events_dir}/-0000001-0badc0de-00000002-state.json", b"[1, 2]")
    wrong = {"kind": "metrics", "time": 1.0, "payload": {}}  # the name says state
    loc.fs.pipe_file(
        f"{loc.events_dir}/-0000001-0badc0de-00000003-state.json", json.dumps(wrong).encode()
    )
    loc.fs.pipe_file(f"{loc.events_dir}/not-an-event.json", b"{}")
    with caplog.at_level(logging.WARNING, logger="storage.run_record"):
        evs = rec.events()
    assert [e.payload for e in evs] == [{"state": "RUNNING"}]
    assert sum("skipping unreadable event" in r.getMessage() for r in caplog.records) == 3


_TORN_WRITER = """
import os, sys, time
from storage import events
from storage.run_record import RunRecord

rec = RunRecord(sys.argv[1])
marker, what = sys.argv[2], sys.argv[3]

def torn_fsync(fd):  # die with the temp file half written
    os.ftruncate(fd, os.fstat(fd).st_size // 2)
    open(marker, "w").close()
    time.sleep(60)

os.fsync = torn_fsync
if what == "event":
    events.write_state(rec, "SUCCEEDED", {"attempt": 1})
else:
    rec.write_spec({"name": "second", "pad": "x" * 4000})
"""


@pytest.mark.parametrize("backend", ["file"])
@pytest.mark.parametrize("what", ["event", "spec"])
def test_a_writer_killed_mid_write_leaves_nothing_visible(
    run_url: str, tmp_path: Path, what: str, caplog: pytest.LogCaptureFixture
) -> None:
    loc = RunLocation.from_url(run_url)
    rec = RunRecord(loc)
    rec.write_spec({"name": "first"})
    events.write_state(rec, "RUNNING", {"attempt": 1})
    marker = tmp_path / "torn"
    proc = subprocess.Popen(
        [sys.executable, "-c", _TORN_WRITER, run_url, str(marker), what],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    try:
        deadline = time.time() + 60
        while not marker.exists():
            assert proc.poll() is None and time.time() < deadline, "the writer never got there"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(30)
    leftovers = list(Path(loc.root).rglob("*.tmp"))
    assert len(leftovers) == 1 and leftovers[0].stat().st_size > 0  # the torn temp file
    with caplog.at_level(logging.WARNING):
        assert [e.payload["state"] for e in rec.events()] == ["RUNNING"]
        doc = rec.read_spec()
    assert doc is not None and doc["spec"] == {"name": "first"}
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
