"""A lease whose holder died on the taker's host is taken at once; anything unprovable waits.

The holders are real processes of this host (``/proc``): a live one, one that exited, a
zombie, a live pid whose recorded start time differs (a reused pid), and records from another
host or pid namespace.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import pytest

from storage.errors import LeaseHeldError
from storage.lease import Lease
from storage.lease_holder import HolderProcess, holder_gone, process_start_ticks
from tests.conftest import FAST_RETRY

TTL = 30.0

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    yield proc
    proc.kill()
    proc.wait()


def _exited_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid is free
    return proc.pid


def _lease(run_url: str, opts: dict[str, Any], holder: str, **kw: Any) -> Lease:
    return Lease(run_url, holder, TTL, opts, safety_margin_s=1.0, retry=FAST_RETRY, **kw)


def test_a_live_process_is_not_gone(sleeper: subprocess.Popen[bytes]) -> None:
    holder = HolderProcess.of(sleeper.pid)
    assert holder.start_ticks is not None
    assert not holder_gone(holder)
    assert not holder_gone(HolderProcess.current())


def test_an_exited_process_is_gone() -> None:
    pid = _exited_pid()
    recorded = dataclasses.replace(HolderProcess.current(), pid=pid)  # as it was recorded alive
    assert process_start_ticks(pid) is None or process_start_ticks(pid) != recorded.start_ticks
    assert holder_gone(recorded)


def test_a_zombie_is_gone() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    holder = HolderProcess.of(proc.pid)
    proc.kill()  # SIGKILLed, not reaped yet: /proc still lists it, as state Z
    deadline = time.monotonic() + 30
    while process_start_ticks(proc.pid) is not None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    try:
        assert holder_gone(holder)
    finally:
        proc.wait()


def test_a_reused_pid_is_gone(sleeper: subprocess.Popen[bytes]) -> None:
    """The pid lives, but the process there started at another time than the holder did."""
    live = HolderProcess.of(sleeper.pid)
    assert live.start_ticks is not None
    earlier = dataclasses.replace(live, start_ticks=live.start_ticks - 1)
    assert holder_gone(earlier)


def test_another_host_or_pid_namespace_or_an_old_body_is_never_judged() -> None:
    dead = dataclasses.replace(HolderProcess.current(), pid=_exited_pid())
    assert holder_gone(dead)
    assert not holder_gone(dataclasses.replace(dead, host="elsewhere"))
    assert not holder_gone(dataclasses.replace(dead, boot_id="another-boot"))
    assert not holder_gone(dataclasses.replace(dead, pid_namespace="pid:[1]"))
    assert not holder_gone(dataclasses.replace(dead, start_ticks=None))
    assert not holder_gone(None)
    assert HolderProcess.from_dict(dead.to_dict()) == dead
    assert HolderProcess.from_dict(None) is None and HolderProcess.from_dict({"pid": 1}) is None


def test_a_dead_same_host_holder_is_taken_over_at_once(run_url: str, storage_options: dict) -> None:
    dead = dataclasses.replace(HolderProcess.current(), pid=_exited_pid())
    old = _lease(run_url, storage_options, "old", process=dead)
    first = old.acquire()
    assert json.loads(old.loc.fs.cat_file(old.path))["process"]["pid"] == dead.pid
    taken = _lease(run_url, storage_options, "new").acquire()  # no clock moved: before expiry
    assert taken.holder == "new" and taken.generation == first.generation + 1
    assert taken.process == HolderProcess.current()


def test_a_live_or_remote_holder_is_waited_for(
    run_url: str, storage_options: dict, sleeper: subprocess.Popen[bytes]
) -> None:
    live = _lease(run_url, storage_options, "live", process=HolderProcess.of(sleeper.pid))
    live.acquire()
    with pytest.raises(LeaseHeldError, match="held by live"):
        _lease(run_url, storage_options, "taker").acquire()
    live.release()

    remote = dataclasses.replace(HolderProcess.current(), pid=_exited_pid(), host="elsewhere")
    held = _lease(run_url, storage_options, "remote", process=remote).acquire()
    with pytest.raises(LeaseHeldError, match="held by remote"):
        _lease(run_url, storage_options, "taker").acquire()
    late = _lease(run_url, storage_options, "taker", clock=lambda: time.time() + TTL + 2)
    assert late.acquire().generation == held.generation + 1  # after its TTL + margin
