"""Cold start and the anchor's restarts, for bench/recovery.py.

Cold start: launch -> first training step of a fresh ``spotrain run`` (embedded Ray) of
bench/cold-start-job.yaml (the end of step 1, which its commit of step 1 records as
``trained_at``; the commit itself is reported beside it), with its phases
(launch -> lease taken, lease -> attempt start, attempt start
-> first step (Ray, its Train controller, the workers)); beside it the anchor's launch -> ``fit``
start and -> first step (bench/anchor_keras.py, Ray's own TensorflowTrainer), run alternately.

Anchor restarts: bench/anchor_keras.py (stock ``tf.keras.callbacks.BackupAndRestore``, Ray
Train's ``FailureConfig(max_failures)``) on an emulated 2-node cluster, one fault at
``fault_at_s`` after its first step: recovery = the fault -> the first step after Ray Train
restarted the workers; steps lost = the step reached at the fault - the step it resumed from.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
COLD_JOB = "bench/cold-start-job.yaml"
ANCHOR = REPO / "bench" / "anchor_keras.py"
#: An embedded run never joins another Ray on this machine (the bench measures its own).
ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "SPOTRAIN_JOIN_LOCAL_RAY": "0"}


def _events(run_dir: Path) -> list[dict[str, Any]]:
    out = []
    for p in (run_dir / "events").glob("*.json"):
        try:
            out.append(json.loads(p.read_text()))
        except ValueError:
            continue
    return sorted(out, key=lambda e: float(e["time"]))


def spotrain_cold_start(workdir: Path) -> dict[str, Any]:
    """One fresh ``spotrain run``: seconds from launch to each phase's end."""
    run_dir = workdir / "runs" / "cold-start-bench"
    cmd = [sys.executable, "-m", "cluster", "run", COLD_JOB, "--storage", f"file://{workdir}/runs"]
    launched = time.time()
    out = subprocess.run(
        cmd, cwd=REPO, env={**os.environ, **ENV}, capture_output=True, text=True, check=False
    )
    ended = time.time()
    if out.returncode != 0:
        raise RuntimeError(f"spotrain run exited {out.returncode}:\n{out.stderr[-3000:]}")
    evs = _events(run_dir)
    pending = next(e for e in evs if e["kind"] == "state")  # written once the lease is held
    start = next(e for e in evs if e["kind"] == "attempt_start")
    first = next(e for e in evs if e["kind"] == "checkpoint_commit")
    # the step's end (its save began), as the chief recorded it; the commit comes after the
    # save's snapshot and the upload
    trained = float(first["payload"].get("trained_at", first["time"]))
    attempt_end = _events_of(evs, "attempt_end")[-1]
    return {
        "attempts": len(_events_of(evs, "attempt_start")),
        "lease_s": pending["time"] - launched,
        "driver_s": start["time"] - pending["time"],
        "ray_and_workers_s": trained - start["time"],
        "first_step_s": trained - launched,
        "first_commit_s": first["time"] - launched,
        "first_step": first["payload"].get("step"),
        "end_wait_s": attempt_end["time"] - _events_of(evs, "checkpoint_commit")[-1]["time"],
        "exit_s": ended - attempt_end["time"],
    }


def _events_of(evs: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    return [e for e in evs if e["kind"] == kind]


def _marks(path: Path) -> list[tuple[str, float, int]]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((parts[0], float(parts[1]), int(parts[2])))
    return out


def _anchor_cmd(workdir: Path, epochs: int) -> list[str]:
    return [
        sys.executable,
        str(ANCHOR),
        "--marks",
        str(workdir / "marks"),
        "--backup-dir",
        str(workdir / "backup"),
        "--epochs",
        str(epochs),
    ]


def anchor_cold_start(workdir: Path) -> dict[str, Any]:
    """One run of the anchor script on its own local Ray: launch -> fit start, -> first step."""
    workdir.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    launched = time.time()
    out = subprocess.run(
        _anchor_cmd(workdir, 1), env={**env, **ENV}, capture_output=True, text=True, check=False
    )
    if out.returncode != 0:
        raise RuntimeError(f"anchor exited {out.returncode}:\n{out.stderr[-3000:]}")
    marks = _marks(workdir / "marks")
    fit = next(t for what, t, _ in marks if what == "fit_start")
    step = next(t for what, t, _ in marks if what == "step")
    return {"fit_start_s": fit - launched, "first_step_s": step - launched}


def anchor_restart(kind: str, workdir: Path, epochs: int, fault_at_s: float) -> dict[str, Any]:
    """The anchor on an emulated 2-node cluster, one ``kind`` fault (kill-worker, kill-node)
    ``fault_at_s`` after its first step; the anchor is stopped once it trained a step after
    Ray Train restarted it (what it would train after that is not what is measured)."""
    import ray

    if str(REPO) not in sys.path:  # this checkout's cluster package, not an installed one
        sys.path.insert(0, str(REPO))
    from cluster.chaos.emulated_cluster import EmulatedCluster

    workdir.mkdir(parents=True, exist_ok=True)
    marks_path = workdir / "marks"
    with EmulatedCluster(2) as cluster:
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            env = {**os.environ, **ENV, "RAY_ADDRESS": cluster.address}
            log = open(workdir / "anchor.log", "w")  # noqa: SIM115
            proc = subprocess.Popen(
                _anchor_cmd(workdir, epochs), env=env, stdout=log, stderr=subprocess.STDOUT
            )
            try:
                first = _wait_for_mark(proc, marks_path, "step", after=0.0, log=log.name)
                time.sleep(max(0.0, first + fault_at_s - time.time()))
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the anchor's {epochs} epochs ended before its {kind} fault "
                        f"{fault_at_s:g}s after its first step; fix: raise --fault-epochs "
                        f"(log: {log.name})"
                    )
                at_fault = _marks(marks_path)[-1][2]
                fault_t = time.time()
                if kind == "kill-worker":
                    cluster.kill_worker()
                else:
                    cluster.kill_node()
                    cluster.add_node()
                restarted = _wait_for_mark(proc, marks_path, "fit_start", fault_t, log.name)
                _wait_for_mark(proc, marks_path, "step", restarted, log.name)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
                log.close()
        finally:
            ray.shutdown()
    marks = _marks(marks_path)
    restart = next(i for i, m in enumerate(marks) if m[0] == "fit_start" and m[1] > fault_t)
    resumed_from = marks[restart][2]
    after = next(m for m in marks[restart:] if m[0] == "step")
    return {"recovery_s": after[1] - fault_t, "steps_lost": max(0, at_fault - resumed_from)}


def _wait_for_mark(
    proc: subprocess.Popen[bytes],
    marks_path: Path,
    what: str,
    after: float,
    log: str,
    timeout_s: float = 600.0,
) -> float:
    """The time of the anchor's first ``what`` mark later than ``after``; waits for it."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        found = [t for name, t, _ in _marks(marks_path) if name == what and t > after]
        if found:
            return found[0]
        if proc.poll() is not None:
            raise RuntimeError(
                f"the anchor exited {proc.returncode} before its {what!r} mark (log: {log})"
            )
        time.sleep(0.1)
    raise RuntimeError(f"no {what!r} mark from the anchor in {timeout_s:g}s (log: {log})")
