"""Lease: exclusive, expiring ownership of a run, on every backend."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from storage.errors import LeaseHeldError, LeaseLostError
from storage.lease import Lease
from tests.conftest import FAST_RETRY

TTL = 30.0


def _lease(run_url: str, opts: dict[str, Any], holder: str, **kw: Any) -> Lease:
    return Lease(run_url, holder, TTL, opts, safety_margin_s=1.0, retry=FAST_RETRY, **kw)


class Clock:
    """A settable clock: expiry is tested by moving time, not by sleeping."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def test_acquire_renew_release(run_url: str, storage_options: dict) -> None:
    a = _lease(run_url, storage_options, "host-a:1")
    info = a.acquire()
    assert a.held and info.holder == "host-a:1"
    b = _lease(run_url, storage_options, "host-b:2")
    with pytest.raises(LeaseHeldError, match="held by host-a:1") as exc:
        b.acquire()
    assert exc.value.holder == "host-a:1" and exc.value.expires_at == pytest.approx(info.expires_at)
    assert pickle.loads(pickle.dumps(exc.value)).holder == "host-a:1"
    renewed = a.renew()
    assert renewed.expires_at >= info.expires_at and renewed.generation == info.generation
    a.release()
    assert not a.held
    read = b.read()
    assert read is not None and read.released
    with b:  # a released lease is free at once
        assert b.held
        assert b.read().holder == "host-b:2"
    assert not b.held


def test_same_holder_reacquires(run_url: str, storage_options: dict) -> None:
    _lease(run_url, storage_options, "coord").acquire()
    # a restarted coordinator with the same id takes its own lease back
    again = _lease(run_url, storage_options, "coord").acquire()
    assert again.generation == 1


def test_expiry_lets_another_take_over(run_url: str, storage_options: dict) -> None:
    clock = Clock()
    a = _lease(run_url, storage_options, "a", clock=clock)
    a.acquire()
    c = _lease(run_url, storage_options, "c", clock=clock)
    clock.offset = TTL + 0.5  # expired but inside the safety margin: still refused
    with pytest.raises(LeaseHeldError):
        c.acquire()
    clock.offset = TTL + 1.5
    info = c.acquire()
    assert info.holder == "c" and info.generation == 1
    with pytest.raises(LeaseLostError):  # a notices it lost the lease
        a.renew()


def test_a_late_renewal_keeps_a_lease_nobody_took(run_url: str, storage_options: dict) -> None:
    """A starved holder renews after its expiry: the swap against its own last write succeeds
    (nobody wrote since), same generation; once a taker wrote, the late renewal is lost."""
    clock = Clock()
    a = _lease(run_url, storage_options, "a", clock=clock)
    first = a.acquire()
    clock.offset = TTL + 5  # expired, nobody took it
    renewed = a.renew()
    assert renewed.generation == first.generation and renewed.expires_at > first.expires_at
    assert a.held and a.read().holder == "a"
    clock.offset += TTL + 5
    _lease(run_url, storage_options, "c", clock=clock).acquire()
    with pytest.raises(LeaseLostError, match="taken over by c"):
        a.renew()


def test_renew_after_takeover_is_lost(run_url: str, storage_options: dict) -> None:
    clock_a, clock_c = Clock(), Clock()
    a = _lease(run_url, storage_options, "a", clock=clock_a)
    a.acquire()
    clock_c.offset = TTL + 5  # c's clock says a's lease is long expired
    _lease(run_url, storage_options, "c", clock=clock_c).acquire()
    with pytest.raises(LeaseLostError, match="taken over by c"):
        a.renew()  # a's own clock still thinks it is valid: the swap must fail


def test_garbled_lease_file_is_taken_over(run_url: str, storage_options: dict) -> None:
    a = _lease(run_url, storage_options, "a")
    a.loc.fs.pipe_file(a.path, b"{garbage")
    a.loc.fs.invalidate_cache()
    assert a.acquire().holder == "a"


def test_threads_race_memory() -> None:
    url = f"memory://lease-race/{time.time_ns()}"
    results: list[str] = []
    barrier = threading.Barrier(8)

    def go(i: int) -> None:
        lease = Lease(url, f"t{i}", TTL, safety_margin_s=1.0)
        barrier.wait()
        try:
            lease.acquire()
            results.append("won")
        except LeaseHeldError:
            results.append("lost")

    threads = [threading.Thread(target=go, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["lost"] * 7 + ["won"]


RACER = """
import json, sys, time
from pathlib import Path
from storage.errors import LeaseHeldError
from storage.lease import Lease
url, opts, holder, go = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], Path(sys.argv[4])
lease = Lease(url, holder, 30.0, opts, safety_margin_s=1.0)
Path(str(go) + "." + holder).touch()          # ready
while not go.exists():                         # start together
    time.sleep(0.001)
try:
    info = lease.acquire()
    print(json.dumps({"holder": holder, "won": True, "expires_at": info.expires_at}))
except LeaseHeldError as e:
    print(json.dumps({"holder": holder, "won": False, "by": e.holder}))
sys.stdout.flush()
sys.stdin.read()  # stay alive until both answered: a dead winner's lease is free to its host
"""


@pytest.mark.parametrize("backend", ["file", "s3"])
@pytest.mark.parametrize("existing", ["none", "expired"])
def test_two_processes_race(
    run_url: str, storage_options: dict, tmp_path: Path, existing: str
) -> None:
    """Two processes race for a fresh lease, or for the takeover of an expired one."""
    if existing == "expired":
        old = _lease(run_url, storage_options, "old", clock=lambda: time.time() - 2 * TTL)
        old.acquire()
    go = tmp_path / "go"
    holders = ["p1", "p2"]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, run_url, json.dumps(storage_options), h, str(go)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for h in holders
    ]
    deadline = time.monotonic() + 60
    while not all(Path(f"{go}.{h}").exists() for h in holders):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.005)
    go.touch()
    outs = []
    for p in procs:
        assert p.stdout is not None and p.stdin is not None
        line = p.stdout.readline()
        assert line, p.communicate(timeout=60)[1].decode()
        outs.append(json.loads(line))
    for p in procs:
        _, err = p.communicate(timeout=60)  # closes stdin: the racer exits
        assert p.returncode == 0, err.decode()
    winners = [o["holder"] for o in outs if o["won"]]
    assert len(winners) == 1, outs
    loser = next(o for o in outs if not o["won"])
    assert loser["by"] == winners[0]
    current = _lease(run_url, storage_options, "reader").read()
    assert current is not None and current.holder == winners[0]
    # expiry lets a third take over
    third = _lease(run_url, storage_options, "p3", clock=lambda: time.time() + TTL + 5)
    assert third.acquire().holder == "p3"


def test_read_lease(run_url: str, storage_options: dict) -> None:
    reader = _lease(run_url, storage_options, "reader")
    assert reader.read() is None
    _lease(run_url, storage_options, "h").acquire()
    info = reader.read()
    assert info is not None and info.holder == "h" and info.active(time.time())
