"""Kubernetes behaviour without Kubernetes: the kubelet's SIGTERM, and a CronJob's reruns.

``spotrain run`` runs as a subprocess on an embedded local Ray, exactly as in a CronJob pod.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.helpers import assert_bitwise_equal, final_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
JOB = "examples/digits.yaml"
#: The CronJob's terminationGracePeriodSeconds in the tests (the emergency save must fit in it).
GRACE_PERIOD_S = 40.0
EXIT_OK, EXIT_HELD, EXIT_PREEMPTED = 0, 5, 75
RUN_ARGS = ("--workers", "2", "--epochs", "3")


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
        SPOTRAIN_SIGTERM_GRACE_S=str(GRACE_PERIOD_S - 10),
        SPOTRAIN_LEASE_TTL_S="8",
        SPOTRAIN_BACKOFF_S="0.5",
        SPOTRAIN_METRICS_EVENT_INTERVAL_S="1",
    )
    env.update(extra)
    return env


def _start(storage: str, log: Path) -> subprocess.Popen[bytes]:
    out = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-m", "cluster", "run", JOB, "--storage", storage, *RUN_ARGS],
        cwd=REPO,
        env=_env(),
        stdout=out,
        stderr=subprocess.STDOUT,
    )


def _status(run_url: str) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-m", "cluster", "status", run_url, "--json"],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        check=False,
    )
    return json.loads(out.stdout) if out.returncode == 0 and out.stdout.strip() else {}


def _events(run_url: str, kind: str) -> list[dict[str, Any]]:
    d = Path(run_url[len("file://") :]) / "events"
    return [json.loads(p.read_text()) for p in sorted(d.glob(f"*-{kind}.json"))]


def _wait_for(predicate, timeout_s: float, what: str, proc: subprocess.Popen[bytes] | None = None):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"spotrain exited {proc.returncode} before {what}")
        time.sleep(0.25)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_kubelet_sigterm_commits_an_emergency_checkpoint_and_loses_no_step(tmp_path):
    storage = f"file://{tmp_path}/runs"
    run_url = f"{storage}/digits-mlp"
    log = tmp_path / "spotrain.log"
    proc = _start(storage, log)
    _wait_for(
        lambda: (_status(run_url).get("latest_checkpoint") or {}).get("step"),
        timeout_s=240,
        what="a first committed checkpoint",
        proc=proc,
    )

    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(timeout=GRACE_PERIOD_S)
    took = time.monotonic() - sent

    assert code == EXIT_PREEMPTED, log.read_text()[-3000:]
    assert took < GRACE_PERIOD_S
    preemptions = [e for e in _events(run_url, "preemption") if "step" in e["payload"]]
    assert preemptions, "the workers recorded no preemption"
    saved_at = preemptions[-1]["payload"]["step"]
    assert _status(run_url)["latest_checkpoint"]["step"] == saved_at  # emergency checkpoint

    rerun = _start(storage, log)
    assert rerun.wait(timeout=300) == EXIT_OK, log.read_text()[-3000:]
    restores = _events(run_url, "restore")
    assert restores and restores[0]["payload"]["step"] == saved_at
    status = _status(run_url)
    assert status["state"] == "SUCCEEDED"
    assert status["lost_steps"] == 0


def test_cronjob_reruns_until_succeeded_with_the_uninterrupted_weights(tmp_path):
    reference = f"file://{tmp_path}/reference"
    log = tmp_path / "spotrain.log"
    assert _start(reference, log).wait(timeout=300) == EXIT_OK, log.read_text()[-3000:]
    expected, _ = final_checkpoint(f"{reference}/digits-mlp")

    storage = f"file://{tmp_path}/cron"
    run_url = f"{storage}/digits-mlp"
    rng = random.Random(11)
    codes = []
    for _ in range(12):
        proc = _start(storage, log)
        try:
            code = proc.wait(timeout=rng.uniform(15, 45))
        except subprocess.TimeoutExpired:
            proc.send_signal(rng.choice([signal.SIGTERM, signal.SIGKILL]))
            code = proc.wait(timeout=GRACE_PERIOD_S)
        codes.append(code)
        if code == EXIT_OK:
            break
        assert code in (EXIT_PREEMPTED, EXIT_HELD, -signal.SIGKILL), log.read_text()[-3000:]
    assert codes[-1] == EXIT_OK, f"never finished: exit codes {codes}"
    assert len(codes) > 1, "no invocation was interrupted; the schedule is too lax"

    started = time.monotonic()
    finished = _start(storage, log)
    assert finished.wait(timeout=60) == EXIT_OK
    assert time.monotonic() - started < 30, "a finished run must make the next pod exit at once"

    got, manifest = final_checkpoint(run_url)
    assert manifest["state"].get("finished") is True
    assert_bitwise_equal(expected, got)
