"""Warm spares on a real Ray cluster (no Ray Train, no training): the raylet settings spotrain
gives Ray (``RAY_SYSTEM_CONFIG``) are accepted; ``trainer.warm`` imports TensorFlow only in
processes started in a training worker's runtime env; a spare asked for through the raylet's
``PrestartWorkers`` is taken by the next actor in that runtime env, which then did not import
TensorFlow after it was created."""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only; before ray

import json
import time

import pytest
import ray

from cluster.chaos.emulated_cluster import EmulatedCluster
from trainer.warm import MARKER_DIR_ENV, TRAIN_WORKER_ENV

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

TRAIN_ENV = {"env_vars": {"TF_USE_LEGACY_KERAS": "1", TRAIN_WORKER_ENV: "1"}}
#: Generous: on a loaded 2-core machine a process imports TensorFlow in tens of seconds.
PRELOAD_TIMEOUT_S = 300.0


@ray.remote(num_cpus=1)
class Probe:
    def info(self) -> dict:
        import sys

        warm = sys.modules.get("trainer.warm")
        return {
            "pid": os.getpid(),
            "preloaded": warm is not None,
            "warm_at": getattr(warm, "IMPORTED_AT", None),
            "tensorflow": "tensorflow" in sys.modules,
            "node": ray.get_runtime_context().get_node_id(),
        }

    def ask_for_spare(self) -> None:
        from trainer.ray_internals import prestart_workers

        prestart_workers(1, keep_alive_s=300)


@pytest.fixture(scope="module")
def cluster():
    with EmulatedCluster(nodes=1) as emulated:
        ray.init(address=emulated.address, logging_level="WARNING")
        try:
            yield emulated
        finally:
            ray.shutdown()


def test_only_training_workers_import_tensorflow_at_preload(cluster):
    plain = Probe.remote()
    info = ray.get(plain.info.remote(), timeout=300)
    assert info["preloaded"] and info["warm_at"] is None and not info["tensorflow"]
    ray.kill(plain)
    trainer = Probe.options(runtime_env=TRAIN_ENV).remote()
    info = ray.get(trainer.info.remote(), timeout=300)
    assert info["tensorflow"] and info["warm_at"] is not None
    ray.kill(trainer)


def test_a_spare_in_the_runtime_env_serves_the_next_actor_warm(cluster, tmp_path):
    env = {"env_vars": {**TRAIN_ENV["env_vars"], MARKER_DIR_ENV: str(tmp_path)}}
    first = Probe.options(runtime_env=env).remote()
    pid = ray.get(first.info.remote(), timeout=PRELOAD_TIMEOUT_S)["pid"]
    ray.get(first.ask_for_spare.remote(), timeout=60)
    deadline = time.monotonic() + PRELOAD_TIMEOUT_S
    while not [p for p in tmp_path.glob("*.json") if p.stem != str(pid)]:
        assert time.monotonic() < deadline, "the spare never finished its preload"
        time.sleep(0.2)
    [spare] = [json.loads(p.read_text()) for p in tmp_path.glob("*.json") if p.stem != str(pid)]
    ray.kill(first)
    killed_at = time.time()
    second = Probe.options(runtime_env=env).remote()
    info = ray.get(second.info.remote(), timeout=PRELOAD_TIMEOUT_S)
    assert info["pid"] == spare["pid"], "the next actor did not take the spare"
    assert info["warm_at"] is not None and info["warm_at"] < killed_at, info
    ray.kill(second)
