"""A CronJob's reruns without Kubernetes: ``spotrain run`` as a subprocess on an embedded local
Ray, exactly as in a CronJob pod, ended again and again by SIGTERM or SIGKILL.

The kubelet's SIGTERM alone (emergency save, exit 75 within the grace period, resume with zero
steps lost) is tests/cluster/test_e2e.py::test_sigterm_saves_at_once_exits_75_and_resumes...
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
#: The CronJob's schedule period, shrunk (a held run is tried again this much later).
CRON_PERIOD_S = 3.0
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


def test_cronjob_reruns_until_succeeded_with_the_uninterrupted_weights(tmp_path):
    reference = f"file://{tmp_path}/reference"
    log = tmp_path / "spotrain.log"
    began = time.monotonic()
    assert _start(reference, log).wait(timeout=300) == EXIT_OK, log.read_text()[-3000:]
    uninterrupted_s = time.monotonic() - began
    expected, _ = final_checkpoint(f"{reference}/digits-mlp")

    storage = f"file://{tmp_path}/cron"
    run_url = f"{storage}/digits-mlp"
    rng = random.Random(11)
    codes = []
    for pod in range(30):
        proc = _start(storage, log)
        # pods live a random share of an uninterrupted run, so a faster spotrain does not make
        # the schedule lax: the first 40-85 % (always ended early), the others 50-100 %. A
        # resumed pod pays what a fresh one does not (the lease takeover, the restore): with
        # later pods capped at 85 % too, a run whose start-up is most of it (3 epochs of digits,
        # ~10 of ~17 s) never trained again once its start-up got faster (seen: 30 pods, each
        # ended before its first step)
        share = rng.uniform(0.4, 0.85) if pod == 0 else rng.uniform(0.5, 1.0)
        try:
            code = proc.wait(timeout=share * uninterrupted_s)
        except subprocess.TimeoutExpired:
            proc.send_signal(rng.choice([signal.SIGTERM, signal.SIGKILL]))
            code = proc.wait(timeout=GRACE_PERIOD_S)
        codes.append(code)
        if code == EXIT_OK:
            break
        assert code in (EXIT_PREEMPTED, EXIT_HELD, -signal.SIGKILL), log.read_text()[-3000:]
        if code == EXIT_HELD:  # a SIGKILLed pod's lease lapses after its TTL; the next
            time.sleep(CRON_PERIOD_S)  # scheduled pod (a period later) takes over
    assert codes[-1] == EXIT_OK, f"never finished: exit codes {codes}"
    assert len(codes) > 1, "no invocation was interrupted; the schedule is too lax"
    assert -signal.SIGKILL in codes or EXIT_PREEMPTED in codes

    started = time.monotonic()
    finished = _start(storage, log)
    assert finished.wait(timeout=60) == EXIT_OK
    assert time.monotonic() - started < 30, "a finished run must make the next pod exit at once"

    assert _status(run_url)["state"] == "SUCCEEDED"
    got, manifest = final_checkpoint(run_url)
    assert manifest["state"].get("finished") is True
    assert_bitwise_equal(expected, got)
