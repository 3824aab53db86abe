"""A plain-Keras user who feeds ``fit`` a distributed dataset under a strategy with several
replicas: its element spec is one ``PerReplicaSpec`` per leaf, and an unbuilt model must still
be built and restored from it (it failed with "'PerReplicaSpec' object has no attribute
'shape'"). Runs tests/trainer/dropin_replicas.py in a fresh process (two logical CPUs)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from storage.checkpoints import CheckpointStore

REPO = Path(__file__).resolve().parents[2]


def test_unbuilt_model_on_a_distributed_dataset_resumes(tmp_path: Path) -> None:
    url = (tmp_path / "backup").as_uri()
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "2"}
    script = REPO / "tests" / "trainer" / "dropin_replicas.py"
    out = subprocess.run(
        [sys.executable, str(script), url], env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # stopped at step 3 (committed), resumed there and finished both epochs of 4 steps
    assert "RESUMED_AT 3" in out.stdout, out.stdout + out.stderr[-3000:]
    assert "ITERATIONS 8" in out.stdout, out.stdout + out.stderr[-3000:]
    assert CheckpointStore(url).committed_steps()[-1] == 8
