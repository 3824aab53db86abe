"""End to end: driver takeovers. A SIGKILLed driver's lease is taken at once on its host; a
frozen driver tree wakes up after a takeover and writes nothing to the run.


``spotrain run`` of the digits MLP (2 workers, 3 epochs); at its first commit the driver's WHOLE
process tree (driver, its embedded Ray, the workers) is SIGSTOPped past its lease TTL; a second
driver takes the run over (its own embedded Ray) and commits; then the frozen tree is SIGCONTed.
The old tree must write nothing after the takeover (no manifest of its generation, no event of
its processes, no file in a commit folder of its generation), and the run must finish SUCCEEDED
with final tensors bitwise equal to an uninterrupted run's.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from storage.location import RunLocation
from tests.cluster.test_e2e import (
    BIN,
    EPOCHS,
    LEASE_TTL_S,
    ROOT,
    RUN_TIMEOUT_S,
    _descendants,
    env_for,
    kill_pod,
    spotrain,
    status,
)
from trainer.verify import committed_tensors, differing_tensors

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ARGS = ["run", "examples/digits.yaml", "--workers", "2", "--epochs", str(EPOCHS)]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A user's project directory: the example job, nothing else."""
    root = tmp_path / "project"
    shutil.copytree(
        ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__")
    )
    return root


def _files(run_dir: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(run_dir)): p.read_bytes()
        for p in run_dir.rglob("*")
        if p.is_file() and p.name != "lease.json" and "/ray/" not in f"/{p.relative_to(run_dir)}"
    }


def _generation(run_dir: Path) -> int:
    return int(json.loads((run_dir / "lease.json").read_text())["generation"])


def _manifests(run_dir: Path) -> dict[str, dict[str, Any]]:
    out = {}
    for p in (run_dir / "checkpoints").glob("*/MANIFEST.json"):
        with contextlib.suppress(ValueError, OSError):
            out[str(p.relative_to(run_dir))] = json.loads(p.read_text())
    return out


def _writer(event_name: str) -> str:
    """The writer id of an event file ``<ns>-<writer>-<kind>.json``."""
    return event_name.split("-")[1]


def _signal_tree(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def _wait(what: str, cond: Any, timeout_s: float = RUN_TIMEOUT_S) -> None:
    deadline = time.time() + timeout_s
    while not cond():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def test_frozen_driver_tree_writes_nothing_after_a_takeover(project: Path, tmp_path: Path) -> None:
    ref = spotrain(project, *ARGS, "--storage", f"file://{tmp_path}/ref")
    assert ref.returncode == 0, ref.stderr[-4000:]
    ref_tensors, _ = committed_tensors(RunLocation.from_url(f"file://{tmp_path}/ref/digits-mlp"))

    run_dir = tmp_path / "runs" / "digits-mlp"
    args = [*ARGS, "--storage", f"file://{tmp_path}/runs"]
    logs = [open(tmp_path / f"driver-{n}.log", "w") for n in ("a", "b")]  # noqa: SIM115

    def start_driver(log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [str(BIN / "spotrain"), *args],
            cwd=project,
            env=env_for(project),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    a = start_driver(logs[0])
    b = None
    try:
        _wait("A's first commit", lambda: bool(_manifests(run_dir)) or a.poll() is not None)
        assert a.poll() is None, (tmp_path / "driver-a.log").read_text()[-4000:]
        tree = [a.pid, *_descendants(a.pid)]
        _signal_tree(tree, signal.SIGSTOP)
        gen_a = _generation(run_dir)
        frozen = _files(run_dir)
        a_writers = {_writer(Path(p).name) for p in frozen if p.startswith("events/")}
        time.sleep(LEASE_TTL_S + 2)  # past A's lease (TTL + the taker's safety margin)

        b = start_driver(logs[1])
        _wait(
            "B's first commit",
            lambda: (
                any(m.get("generation", -1) > gen_a for m in _manifests(run_dir).values())
                or b.poll() is not None
            ),
        )
        gen_b = _generation(run_dir)
        assert gen_b > gen_a
        _signal_tree(tree, signal.SIGCONT)  # the frozen tree wakes up, now stale
        assert b.wait(RUN_TIMEOUT_S) == 0, (tmp_path / "driver-b.log").read_text()[-4000:]
        a_code = a.wait(120)
    finally:
        for proc in (a, b):
            if proc is not None:
                kill_pod(proc)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(30)
        for f in logs:
            f.close()

    final = _files(run_dir)
    new = {p: data for p, data in final.items() if frozen.get(p) != data}
    stale_events = [
        p for p in new if p.startswith("events/") and _writer(Path(p).name) in a_writers
    ]
    assert stale_events == [], stale_events
    stale_manifests = [
        p for p, m in _manifests(run_dir).items() if m.get("generation") == gen_a and p in new
    ]
    assert stale_manifests == []
    stale_files = [p for p in new if f"/g{gen_a}-" in f"/{p}"]
    assert stale_files == [], stale_files
    a_log = (tmp_path / "driver-a.log").read_text()
    assert a_code != 0, a_log[-3000:]  # A stopped: it does not finish the run
    st = status(project, f"file://{tmp_path}/runs/digits-mlp")
    assert st["state"] == "SUCCEEDED", st
    got, state = committed_tensors(RunLocation.from_url(f"file://{tmp_path}/runs/digits-mlp"))
    assert state["finished"] is True
    assert differing_tensors(ref_tensors, got) == []


def test_a_sigkilled_drivers_lease_is_taken_at_once_on_its_host(
    project: Path, tmp_path: Path
) -> None:
    """``kill -9`` of the driver alone, then ``spotrain run`` again: it must not be held off
    (exit 5) by the dead driver's lease, which is valid for ten more minutes."""
    run_dir = tmp_path / "runs" / "digits-mlp"
    args = [*ARGS, "--storage", f"file://{tmp_path}/runs"]
    env = {**env_for(project), "SPOTRAIN_LEASE_TTL_S": "600"}  # only a takeover frees it
    tree: list[int] = []
    with open(tmp_path / "driver-a.log", "w") as log:
        a = subprocess.Popen(
            [str(BIN / "spotrain"), *args],
            cwd=project,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait("A's first commit", lambda: bool(_manifests(run_dir)) or a.poll() is not None)
            assert a.poll() is None, (tmp_path / "driver-a.log").read_text()[-4000:]
            gen_a = _generation(run_dir)
            lease = json.loads((run_dir / "lease.json").read_text())
            assert lease["process"]["pid"] == a.pid and lease["expires_at"] > time.time() + 60
            tree = _descendants(a.pid)
            os.kill(a.pid, signal.SIGKILL)  # the driver alone; left unreaped (a zombie) for now
            b = subprocess.run(
                [str(BIN / "spotrain"), *args],
                cwd=project,
                env=env,
                capture_output=True,
                text=True,
                timeout=RUN_TIMEOUT_S,
                check=False,
            )
        finally:
            a.kill()
            a.wait(30)
            _signal_tree(tree, signal.SIGKILL)  # the dead driver's Ray, if still there
    assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-4000:]
    assert "is gone: taking its lease over" in b.stderr
    assert _generation(run_dir) > gen_a
    st = status(project, f"file://{tmp_path}/runs/digits-mlp")
    counts = {k: st.get(k) for k in ("state", "attempts", "preemptions", "failures", "last_error")}
    assert counts["state"] == "SUCCEEDED" and st["attempts"] == 2 and st["preemptions"] == 1, (
        counts,
        b.stderr[-4000:],
    )
