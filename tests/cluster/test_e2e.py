"""End to end: ``spotrain`` subprocesses with a real embedded Ray and TensorFlow, tiny model.

Each run costs ~40-80 s on 2 shared cores (Ray start, TensorFlow import in every worker), so the
module keeps to five runs of the digits MLP for 3 epochs (69 steps) plus one failing run and one
``ray job submit``. Waits are shrunk through settings (lease TTL 8 s), never slept for luck.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cluster.constants import DEFAULT_SIGTERM_GRACE_S
from storage.location import RunLocation
from storage.run_record import RunRecord

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
EPOCHS = 3
STEPS = EPOCHS * 23  # 1500 training examples // 64 per global batch, per epoch
LEASE_TTL_S = 8.0
RUN_TIMEOUT_S = 420


def env_for(project: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(
        PATH=f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=str(ROOT),
        SPOTRAIN_LEASE_TTL_S=str(LEASE_TTL_S),
        SPOTRAIN_LEASE_SAFETY_MARGIN_S="1",
        SPOTRAIN_BACKOFF_S="0",
        SPOTRAIN_METRICS_EVENT_INTERVAL_S="1",
    )
    return env


def spotrain(
    project: Path, *args: str, timeout: float = RUN_TIMEOUT_S
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "spotrain"), *args],
        cwd=project,
        env=env_for(project),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def status(project: Path, target: str) -> dict[str, Any]:
    out = spotrain(project, "status", target, "--json", timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def events(run_dir: Path) -> list[dict[str, Any]]:
    """The run's events in the record's order (read as spotrain reads them)."""
    return [e.to_dict() for e in RunRecord(RunLocation.from_url(str(run_dir))).events()]


def weights_digest(project: Path, model_path: Path) -> str:
    code = (
        "import os, hashlib; os.environ['TF_USE_LEGACY_KERAS']='1'; import tensorflow as tf; "
        f"m = tf.keras.models.load_model({str(model_path)!r}); "
        "print(hashlib.sha256(b''.join(w.tobytes() for w in m.get_weights())).hexdigest())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=project,
        env=env_for(project),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's project directory: the example job, nothing else."""
    root = tmp_path_factory.mktemp("project")
    shutil.copytree(
        ROOT / "examples", root / "examples", ignore=shutil.ignore_patterns("__pycache__")
    )
    return root


def readme_quickstart() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- quickstart-local.*?```bash\n(.*?)```", text, re.S)
    assert block, "README.md lost its quickstart-local block"
    return [line for line in block.group(1).splitlines() if line.strip()]


@pytest.fixture(scope="module")
def quickstart(project: Path) -> dict[str, Any]:
    """Runs the README's local quick start, verbatim, in the project directory."""
    results = []
    for cmd in readme_quickstart():
        t0 = time.time()
        out = subprocess.run(
            cmd,
            shell=True,
            cwd=project,
            env=env_for(project),
            capture_output=True,
            text=True,
            timeout=RUN_TIMEOUT_S,
        )
        results.append((cmd, out, time.time() - t0))
    return {"results": results, "run_dir": project / "runs" / "digits-mlp"}


def test_readme_quickstart(project: Path, quickstart: dict[str, Any]) -> None:
    for cmd, out, _ in quickstart["results"]:
        assert out.returncode == 0, f"{cmd}\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    run_out = quickstart["results"][0][1]
    assert "SUCCEEDED" in run_out.stdout and len(run_out.stdout.strip().splitlines()) == 1
    st = status(project, "examples/digits.yaml")
    assert st["state"] == "SUCCEEDED"
    assert st["total_steps"] == STEPS and st["global_step"] == STEPS and st["epoch"] == EPOCHS
    assert st["attempts"] == 1 and st["preemptions"] == 0 and st["lost_steps"] == 0
    assert st["latest_checkpoint"]["step"] == STEPS and "loss" in st["metrics"]
    assert (project / "runs" / "digits-mlp.png").stat().st_size > 1000
    assert (project / "runs" / "digits-mlp.keras").exists()
    # a finished run: `spotrain run` prints the summary and exits 0 without starting Ray
    t0 = time.time()
    again = spotrain(
        project, "run", "examples/digits.yaml", "--workers", "2", "--epochs", str(EPOCHS)
    )
    assert again.returncode == 0 and "SUCCEEDED" in again.stdout
    assert time.time() - t0 < 30
    assert status(project, "examples/digits.yaml")["attempts"] == 1


def test_an_embedded_run_ends_seconds_after_its_final_commit(quickstart: dict[str, Any]) -> None:
    """Train's PlacementGroupCleaner, on an embedded Ray (no state API), held the controller's
    shutdown for its 12 s stop timeout: 13.1-13.4 s between the final commit and the attempt's
    end (cluster.ray.internals item 8 drops it there)."""
    recorded = events(quickstart["run_dir"])
    final_commit = max(e["time"] for e in recorded if e["kind"] == "checkpoint_commit")
    attempt_end = max(e["time"] for e in recorded if e["kind"] == "attempt_end")
    assert attempt_end - final_commit < 10.0


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (Linux /proc), whatever session it moved to."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        below = children.get(todo.pop(), [])
        found += below
        todo += below
    return found


def kill_pod(proc: subprocess.Popen) -> None:
    """SIGKILL the driver, its session and every process below it, at once, as a pod dies.

    A SIGKILL to the driver's session alone is not enough: Ray's workers live on in their own
    sessions and were seen committing checkpoints 8 s after such a kill.
    """
    pids = [proc.pid, *_descendants(proc.pid)]
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def popen_session(cmd: list[str], **kw: Any) -> Iterator[subprocess.Popen]:
    proc = subprocess.Popen(cmd, start_new_session=True, **kw)
    try:
        yield proc
    finally:
        kill_pod(proc)  # the driver we started and its Ray
        proc.wait(timeout=30)


def _committed_steps(run_dir: Path) -> list[int]:
    return sorted(int(p.parent.name) for p in (run_dir / "checkpoints").glob("*/MANIFEST.json"))


def start_driver(
    project: Path, args: list[str], **env: str
) -> contextlib.AbstractContextManager[subprocess.Popen]:
    """``spotrain ARGS`` in its own session (killed with it at exit), output captured; ``env``
    is added to the project's environment."""
    return popen_session(
        [str(BIN / "spotrain"), *args],
        cwd=project,
        env={**env_for(project), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_lease(driver: subprocess.Popen, run_dir: Path) -> None:
    """Poll until the driver holds the run's lease (it then starts Ray)."""
    deadline = time.time() + RUN_TIMEOUT_S
    while not (run_dir / "lease.json").exists():
        assert driver.poll() is None and time.time() < deadline
        time.sleep(0.05)


def wait_for_commit(driver: subprocess.Popen, run_dir: Path, at_least: int) -> None:
    """Poll tightly until a checkpoint of step >= ``at_least`` is committed (runs are fast)."""
    deadline = time.time() + RUN_TIMEOUT_S
    while not [s for s in _committed_steps(run_dir) if s >= at_least]:
        assert driver.poll() is None, driver.stdout.read() if driver.stdout else ""
        assert time.time() < deadline
        time.sleep(0.02)


def _sigkill_driver_mid_training(project: Path, args: list[str], run_dir: Path) -> None:
    """Start ``spotrain run``, check a second one is held off, kill the pod at the first commit."""
    with start_driver(project, args) as driver:
        wait_for_lease(driver, run_dir)
        held = spotrain(project, *args, timeout=60)
        assert held.returncode == 5, held.stderr
        assert "held by another coordinator" in held.stderr and "until" in held.stderr
        wait_for_commit(driver, run_dir, at_least=1)
        kill_pod(driver)
        driver.wait(timeout=30)
    assert _committed_steps(run_dir)[-1] < STEPS, "the kill must land mid-training"


def test_sigkill_driver_then_resume_is_exact_and_a_second_run_is_held(
    project: Path, quickstart: dict[str, Any], tmp_path: Path
) -> None:
    storage = f"file://{tmp_path}/runs"
    run_dir = tmp_path / "runs" / "digits-mlp"
    args = [
        "run",
        "examples/digits.yaml",
        "--workers",
        "2",
        "--epochs",
        str(EPOCHS),
        "--storage",
        storage,
    ]
    _sigkill_driver_mid_training(project, args, run_dir)
    # resume: the first tries may still find the dead driver's lease (TTL 8 s) -> exit 5
    deadline = time.time() + LEASE_TTL_S + 30
    while True:
        before = _committed_steps(run_dir)
        resumed = spotrain(project, *args)
        if resumed.returncode != 5 or time.time() > deadline:
            break
        time.sleep(1.0)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    st = status(project, storage + "/digits-mlp")
    assert st["state"] == "SUCCEEDED" and st["global_step"] == STEPS
    assert st["attempts"] == 2 and st["preemptions"] == 1
    evs = events(run_dir)
    restores = [e for e in evs if e["kind"] == "restore"]
    assert [r["payload"]["step"] for r in restores] == [before[-1]]
    after = evs[evs.index(restores[0]) :]
    trained = [e["payload"].get("step") for e in after if e["kind"] == "checkpoint_commit"]
    trained += [e["payload"].get("global_step") for e in after if e["kind"] == "metrics"]
    assert all(s > before[-1] for s in trained if s is not None), "a step before the commit re-ran"
    out = tmp_path / "resumed.keras"
    exported = spotrain(project, "export", storage + "/digits-mlp", "--out", str(out))
    assert exported.returncode == 0, exported.stderr[-3000:]
    reference = project / "runs" / "digits-mlp.keras"
    assert weights_digest(project, out) == weights_digest(project, reference)


def test_bug_in_build_model_fails_fast_with_traceback(project: Path, tmp_path: Path) -> None:
    (project / "examples" / "buggy.py").write_text(
        "def _width(config):\n    return config['hidden'] // 0\n\n\n"
        "def build_model(config):\n    return _width(config)\n"
    )
    job = project / "examples" / "buggy.yaml"
    job.write_text(
        "name: buggy\nmodel: examples/buggy.py:build_model\ndata: examples/digits.py:make_dataset\n"
        f"config: {{hidden: 8}}\nepochs: 1\nstorage: file://{tmp_path}/runs\n"
        "scaling: {workers: 1}\n"
    )
    t0 = time.time()
    out = spotrain(project, "run", "examples/buggy.yaml")
    assert out.returncode == 3, out.stderr[-4000:]
    assert "ZeroDivisionError" in out.stderr and "buggy.py" in out.stderr and "_width" in out.stderr
    assert "not retried" in out.stdout
    st = status(project, f"file://{tmp_path}/runs/buggy")
    assert st["state"] == "FAILED" and st["attempts"] == 1
    print(f"fail-fast took {time.time() - t0:.0f}s")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_ray_job_submit_on_a_local_head(project: Path, tmp_path: Path) -> None:
    env = env_for(project)
    port, dash = _free_port(), _free_port()
    head = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        f"--port={port}",
        f"--dashboard-port={dash}",
        "--dashboard-host=127.0.0.1",
        "--num-cpus=2",
        "--include-dashboard=true",
    ]
    with popen_session(head, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        submit_env = {**env, "RAY_AUTH_MODE": "token"}
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 120
        while True:  # the job server answers once the dashboard is up
            probe = subprocess.run(
                [str(BIN / "ray"), "job", "list", "--address", address],
                env=submit_env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            if probe.returncode == 0 or time.time() > deadline:
                break
            time.sleep(1.0)
        assert probe.returncode == 0, probe.stderr[-2000:]
        storage = f"file://{tmp_path}/runs"
        submit = [
            str(BIN / "ray"), "job", "submit", "--address", address,
            "--working-dir", str(project), "--",
            "spotrain", "run", "examples/digits.yaml", "--workers", "2", "--epochs", "1",
            "--storage", storage,
        ]  # fmt: skip
        deadline = time.time() + 180  # slow under load: the agent needs its own start
        while True:  # the job agent registers a little after the job server answers
            out = subprocess.run(
                submit, env=submit_env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S
            )
            if "No available agent" not in out.stderr + out.stdout or time.time() > deadline:
                break
            time.sleep(1.0)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    st = status(project, storage + "/digits-mlp")
    assert st["state"] == "SUCCEEDED" and st["global_step"] == 23


def test_sigterm_saves_at_once_exits_75_and_resumes_without_lost_steps(
    project: Path, tmp_path: Path
) -> None:
    storage = f"file://{tmp_path}/runs"
    run_dir = tmp_path / "runs" / "digits-mlp"
    # longer than the others: Ray Train relays the drain notice within ~1-3 s, which must fall
    # inside training (3 epochs train in ~4 s once started)
    args = ["run", "examples/digits.yaml", "--workers", "2", "--epochs", "10"]
    args += ["--storage", storage]
    with start_driver(project, args) as driver:
        wait_for_commit(driver, run_dir, at_least=20)
        sent = time.monotonic()
        driver.send_signal(signal.SIGTERM)
        output, _ = driver.communicate(timeout=120)
        took_s = time.monotonic() - sent
        assert driver.returncode == 75, output[-4000:]
    # as the kubelet sends it: the emergency save and exit fit in the driver's SIGTERM grace
    # (k8s terminationGracePeriodSeconds is set above it, see k8s/)
    assert took_s < DEFAULT_SIGTERM_GRACE_S, f"took {took_s:.1f}s"
    assert "PREEMPTED" in output and "run again to resume" in output
    evs = events(run_dir)
    saved = [e for e in evs if e["kind"] == "preemption" and "source" not in e["payload"]]
    assert saved, "the workers did not save on the notice"
    saved_step = saved[-1]["payload"]["step"]
    resumed = spotrain(project, *args)
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    evs = events(run_dir)
    assert [e["payload"]["step"] for e in evs if e["kind"] == "restore"] == [saved_step]
    st = status(project, storage + "/digits-mlp")
    assert st["state"] == "SUCCEEDED" and st["preemptions"] == 1 and st["lost_steps"] == 0
    assert st["global_step"] == 230


@pytest.mark.parametrize("after_lease_s", [0.0, 1.0, 2.0, 3.0])
def test_sigterm_before_the_workers_start_exits_at_once_with_nothing_to_save(
    project: Path, tmp_path: Path, after_lease_s: float
) -> None:
    """A SIGTERM while Ray starts (in ``ray.init``, or before the workers live: the drained
    node takes no new workers) can bring no emergency save: the driver exits 75 at once instead
    of waiting out the grace, and the run is PREEMPTED with nothing committed."""
    storage = f"file://{tmp_path}/runs"
    run_dir = tmp_path / "runs" / "digits-mlp"
    grace_s = 60.0
    args = ["run", "examples/digits.yaml", "--workers", "2", "--storage", storage]
    with start_driver(project, args, SPOTRAIN_SIGTERM_GRACE_S=str(grace_s)) as driver:
        wait_for_lease(driver, run_dir)
        time.sleep(after_lease_s)
        sent = time.monotonic()
        driver.send_signal(signal.SIGTERM)
        output, _ = driver.communicate(timeout=120)
        took_s = time.monotonic() - sent
    assert driver.returncode == 75, output[-4000:]
    assert "PREEMPTED" in output and "run again to resume" in output
    assert took_s < grace_s / 3, f"took {took_s:.1f}s: the driver waited for a save"
    assert _committed_steps(run_dir) == []
    assert status(project, storage + "/digits-mlp")["state"] == "PREEMPTED"
