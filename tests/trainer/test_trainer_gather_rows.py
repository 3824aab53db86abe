"""``gather_rows`` (every save's and poll's collective) returns every rank's row bit for bit
under a real two-worker MultiWorkerMirroredStrategy: it sums int64 bit patterns, so -0.0, NaN
payloads and denormals survive (a float sum would turn -0.0 + 0.0 into 0.0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from storage.testing.ports import free_ports
from tests.trainer.gather_rows_worker import row_of

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_gather_rows_is_bitwise_on_two_workers() -> None:
    workers = [f"127.0.0.1:{p}" for p in free_ports(2)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    script = REPO / "tests" / "trainer" / "gather_rows_worker.py"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                json.dumps(
                    {"cluster": {"worker": workers}, "task": {"type": "worker", "index": i}}
                ),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err[-3000:]
        line = next(ln for ln in out.splitlines() if ln.startswith("RESULT "))
        results.append(json.loads(line[len("RESULT ") :]))
    want = [[format(int(b), "016x") for b in row_of(r).view(np.int64)] for r in range(2)]
    for got in results:
        assert got["special"] == want
        assert got["empty_shape"] == [2, 0]
        assert got["any_none"] is False
        assert got["any_rank1"] is True
