"""Warm spares on a real Ray cluster (no Ray Train, no training): the raylet settings spotrain
gives Ray (``RAY_SYSTEM_CONFIG``) are accepted; ``trainer.warm`` imports TensorFlow (and a
job's ``warm_imports``) only in processes started in a training worker's runtime env; a spare
asked for through the raylet's ``PrestartWorkers`` is taken by the next actor in that runtime
env, which then did not import TensorFlow after it was created."""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only; before ray

import json
import time

import pytest
import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from cluster.chaos.emulated_cluster import EmulatedCluster
from cluster.ray.node_spares import NodeSpares
from trainer.warm import MARKER_DIR_ENV, TRAIN_WORKER_ENV, warm_imports_env

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
            "json_tool": "json.tool" in sys.modules,  # a job's warm_imports in the test below
            "node": ray.get_runtime_context().get_node_id(),
        }

    def ask_for_spare(self) -> None:
        from trainer.ray_internals import prestart_workers

        prestart_workers(1, keep_alive_s=300)

    def publish_env(self) -> None:
        from trainer.ray_internals import publish_worker_env

        publish_worker_env()


@pytest.fixture(scope="module")
def cluster():
    """A 1-node cluster with token auth on, as Ray 2.60 starts a local cluster by default: the
    spare requests (a direct gRPC call to the raylet) must carry the token (seen: a plain
    channel got UNAUTHENTICATED, and every restart was cold)."""
    from ray._raylet import Config  # Ray caches RAY_AUTH_MODE; it re-reads it the same way

    with pytest.MonkeyPatch.context() as env:
        env.setenv("RAY_AUTH_MODE", "token")
        Config.initialize("")
        try:
            with EmulatedCluster(nodes=1) as emulated:
                ray.init(address=emulated.address, logging_level="WARNING")
                try:
                    yield emulated
                finally:
                    ray.shutdown()
        finally:
            env.undo()
            Config.initialize("")


def test_only_training_workers_import_tensorflow_at_preload(cluster):
    plain = Probe.remote()
    info = ray.get(plain.info.remote(), timeout=300)
    assert info["preloaded"] and info["warm_at"] is None and not info["tensorflow"]
    assert not info["json_tool"]
    ray.kill(plain)
    # the runtime env spotrain gives its training workers, with a job's warm_imports
    env = {"env_vars": {**TRAIN_ENV["env_vars"], **warm_imports_env(["json.tool"], None)}}
    trainer = Probe.options(runtime_env=env).remote()
    info = ray.get(trainer.info.remote(), timeout=300)
    assert info["tensorflow"] and info["warm_at"] is not None and info["json_tool"]
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


def _spares(marker_dir, known_pids):
    return [
        json.loads(p.read_text()) for p in marker_dir.glob("*.json") if p.stem not in known_pids
    ]


def test_the_driver_gives_a_joining_node_a_spare_that_a_worker_there_takes_warm(cluster, tmp_path):
    """A node that joins has no training worker to ask for spares: the driver's NodeSpares asks
    its raylet, in the env a worker published, and the next actor placed there takes it. (Runs
    last in this module: it adds a node to the shared cluster.)"""
    env = {"env_vars": {**TRAIN_ENV["env_vars"], MARKER_DIR_ENV: str(tmp_path)}}
    worker = Probe.options(runtime_env=env).remote()
    first = ray.get(worker.info.remote(), timeout=PRELOAD_TIMEOUT_S)
    watcher = NodeSpares(count=1, keep_alive_s=300)
    assert watcher.poll() == [], "nothing is asked for before a worker published its env"
    ray.get(worker.publish_env.remote(), timeout=60)
    assert watcher.poll() == [], "the worker's own node is its own to cover"

    joined = cluster.add_node()
    assert watcher.poll() == [joined]
    assert watcher.poll() == [], "a node is asked once"
    deadline = time.monotonic() + PRELOAD_TIMEOUT_S
    known = {str(first["pid"])}
    while not _spares(tmp_path, known):
        assert time.monotonic() < deadline, "the joined node's spare never finished its preload"
        time.sleep(0.2)
    [spare] = _spares(tmp_path, known)
    placed_at = time.time()
    there = Probe.options(
        runtime_env=env, scheduling_strategy=NodeAffinitySchedulingStrategy(joined, soft=False)
    ).remote()
    info = ray.get(there.info.remote(), timeout=PRELOAD_TIMEOUT_S)
    assert info["node"] == joined
    assert info["pid"] == spare["pid"], "the actor on the joined node did not take the spare"
    assert info["warm_at"] is not None and info["warm_at"] < placed_at, info
    ray.kill(there)
    ray.kill(worker)
