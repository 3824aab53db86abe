"""RunRecord: run.json, events (one object each, ordered, unique across writers). Order without
clocks, fencing and atomic writes: test_storage_events.py."""

from __future__ import annotations

import itertools
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from storage.errors import CheckpointStateError, InvalidNameError
from storage.run_record import RunRecord, spec_fingerprint


def test_spec_roundtrip_and_fingerprint(run_url: str, storage_options: dict) -> None:
    rec = RunRecord(run_url, storage_options)
    assert rec.read_spec() is None
    fp = rec.write_spec({"name": "r", "epochs": 3, "config": {"b": 1, "a": 2}})
    assert fp == spec_fingerprint({"config": {"a": 2, "b": 1}, "epochs": 3, "name": "r"})
    doc = rec.read_spec()
    assert doc is not None and doc["fingerprint"] == fp and doc["spec"]["epochs"] == 3
    created = doc["created"]
    fp2 = rec.write_spec({"name": "r", "epochs": 4})
    assert fp2 != fp
    doc2 = rec.read_spec()
    assert doc2 is not None and doc2["created"] == created and doc2["fingerprint"] == fp2
    with pytest.raises(CheckpointStateError):
        rec.write_spec({"x": {1, 2}})


def test_events_in_order(run_url: str, storage_options: dict) -> None:
    rec = RunRecord(run_url, storage_options)
    assert rec.events() == []
    e1 = rec.append_event("attempt_start", attempt=1)
    rec.append_event("state", state="RUNNING")
    rec.append_event("preemption", node="n1", deadline_s=20)
    evs = rec.events()
    assert [e.kind for e in evs] == ["attempt_start", "state", "preemption"]
    assert evs[0] == e1 and evs[2].payload == {"node": "n1", "deadline_s": 20}
    assert [e.kind for e in rec.events(kinds=["state"])] == ["state"]
    assert all(a.seq < b.seq for a, b in itertools.pairwise(evs))
    files = rec.loc.fs.ls(rec.loc.events_dir, detail=False)
    assert len(files) == 3 and all(f.endswith(".json") for f in files)


@pytest.mark.parametrize("kind", ["", "Bad", "a-b", "x/y", "../up", "1st"])
def test_bad_event_kinds(kind: str) -> None:
    with pytest.raises(InvalidNameError):
        RunRecord("memory://rr/kinds").append_event(kind)


def test_concurrent_writers_threads(run_url: str, storage_options: dict) -> None:
    rec = RunRecord(run_url, storage_options)

    def write(i: int) -> None:
        for j in range(5):
            rec.append_event("state", writer=i, n=j)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    evs = rec.events()
    assert len(evs) == 20 and len({e.seq for e in evs}) == 20
    for i in range(4):  # each writer's own events stay in its order
        assert [e.payload["n"] for e in evs if e.payload["writer"] == i] == list(range(5))


@pytest.mark.parametrize("backend", ["file", "s3"])
def test_concurrent_writers_processes(run_url: str, storage_options: dict, tmp_path: Path) -> None:
    code = (
        "import sys, json; from storage.run_record import RunRecord; "
        "r = RunRecord(sys.argv[1], json.loads(sys.argv[2])); "
        "[r.append_event('attempt_start', p=sys.argv[3], n=n) for n in range(5)]"
    )
    import json

    procs = [
        subprocess.Popen([sys.executable, "-c", code, run_url, json.dumps(storage_options), str(p)])
        for p in range(2)
    ]
    assert [p.wait(60) for p in procs] == [0, 0]
    evs = RunRecord(run_url, storage_options).events()
    assert len(evs) == 10 and len({e.name for e in evs}) == 10 and len({e.writer for e in evs}) == 2
    for p in ("0", "1"):  # each writer's own events stay in its order (its sequence)
        assert [e.payload["n"] for e in evs if e.payload["p"] == p] == list(range(5))
