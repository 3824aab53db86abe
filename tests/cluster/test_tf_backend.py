"""The driver's TensorFlow set-up for Ray Train: the same ``TF_CONFIG`` as Ray's own
``TensorflowConfig``, and no TensorFlow import in the driver."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def test_tf_config_is_the_one_rays_tensorflow_config_sets(monkeypatch):
    from ray.train.tensorflow.config import _setup_tensorflow_environment

    from cluster.ray.tf_backend import set_tf_config

    addresses = ["127.0.0.1:4001", "10.0.0.2:4002", "[::1]:4003"]
    for index in range(len(addresses)):
        monkeypatch.delenv("TF_CONFIG", raising=False)
        _setup_tensorflow_environment(addresses, index)
        rays = json.loads(os.environ["TF_CONFIG"])
        set_tf_config(addresses, index)
        assert json.loads(os.environ["TF_CONFIG"]) == rays
        assert os.environ["TF_USE_LEGACY_KERAS"] == "1"


def test_worker_ports_come_from_below_the_ephemeral_range_and_are_free():
    """An ephemeral port picked early can be taken by an outgoing connection before
    TensorFlow's server binds it ("Could not start gRPC server"): ports come from below."""
    import socket

    from cluster.ray.tf_backend import ephemeral_range, listen_port

    low, high = ephemeral_range()
    assert 1024 < low < high
    ports = {listen_port() for _ in range(20)}
    assert all(10000 <= p < low for p in ports) and len(ports) > 1
    for port in ports:
        with socket.socket() as s:
            s.bind(("", port))  # free: the check closed its socket


def test_the_driver_builds_its_trainer_without_importing_tensorflow(tmp_path):
    """Everything the driver imports to build and configure the trainer, in a fresh process."""
    code = """
import sys
from ray.train import FailureConfig, RunConfig, ScalingConfig
from cluster.ray.runner import RayAttemptRunner
from cluster.ray.session import set_driver_env
from cluster.ray.tf_backend import TensorflowSetup, worker_address
from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer
from trainer.worker import train_loop_per_worker
import cluster.cli, cluster.coordinator, cluster.ray.hooks, cluster.ray.node_spares
set_driver_env()
DataParallelTrainer(
    train_loop_per_worker,
    backend_config=TensorflowSetup(),
    scaling_config=ScalingConfig(num_workers=2),
    run_config=RunConfig(name="x", storage_path=sys.argv[1], failure_config=FailureConfig()),
)
loaded = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
print(len(loaded), loaded[:5])
"""
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
    out = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.split()[0] == "0", f"the driver imported TensorFlow: {out.stdout}"


@pytest.mark.e2e
def test_a_spotrain_run_driver_never_imports_tensorflow(tmp_path):
    """A real ``spotrain run`` (embedded Ray, 2 workers): its workers train, its driver process
    ends without TensorFlow in ``sys.modules`` (2.6-5 s of every cold start it used to pay)."""
    code = (
        "import sys; from cluster.cli import main; rc = main(sys.argv[1:]); "
        "print('tensorflow in the driver:', 'tensorflow' in sys.modules); sys.exit(rc)"
    )
    storage = f"file://{tmp_path}/runs"
    args = ["run", "examples/digits.yaml", "--storage", storage, "--epochs", "1", "--workers", "2"]
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "SPOTRAIN_JOIN_LOCAL_RAY": "0",
    }
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert "tensorflow in the driver: False" in out.stdout, out.stdout[-2000:]
    assert list((tmp_path / "runs").rglob("MANIFEST.json")), "the workers committed nothing"
