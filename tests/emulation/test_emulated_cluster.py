"""Faults injected into a real multi-raylet Ray cluster reach real Ray Train workers.

The training loop is plain Python under Ray Train V2's DataParallelTrainer (no TensorFlow), so
these tests pin the cluster mechanics alone: a SIGKILLed worker makes Ray Train restart the
worker group, and a drained node reaches every worker as ``ray.train.get_preemption_info()``.
"""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only; before ray

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import ray

from cluster.chaos.emulated_cluster import EmulatedCluster, EmulationError

pytestmark = pytest.mark.e2e


# Generous: on a loaded 2-core CI machine a worker group takes tens of seconds to start, and
# these tests check what happens, not how fast.
STARTUP_TIMEOUT_S = 180.0


def _wait_for(predicate, timeout_s=STARTUP_TIMEOUT_S, what="condition"):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def _loop(config):
    """Rank 0 records each attempt; every rank polls the preemption notice until told to stop.

    Both calls below are barriers, so every rank makes them equally often: the stop file is read
    by rank 0 alone and broadcast (a rank that read it itself could leave while its peer waits
    in the barrier forever).
    """
    import json
    import time
    import uuid
    from pathlib import Path

    import ray.train
    from ray.train.collective import broadcast_from_rank_zero

    out = Path(config["dir"])
    rank = ray.train.get_context().get_world_rank()
    if rank == 0:
        (out / f"attempt-{uuid.uuid4().hex}").touch()
    (out / f"running-{rank}").touch()
    while not broadcast_from_rank_zero((out / "stop").exists()):
        info = ray.train.get_preemption_info()
        if info is not None:
            (out / f"notice-{rank}.json").write_text(
                json.dumps(
                    {
                        "ranks": info.preempted_ranks,
                        "nodes": info.preempted_node_ids,
                        "deadline_ms": info.deadline_ms,
                    }
                )
            )
            return
        time.sleep(0.2)


@pytest.fixture
def emulated():
    """A fresh cluster per test: a drained node's removal timer must not outlive its test."""
    with EmulatedCluster(nodes=2) as cluster:
        ray.init(address=cluster.address)
        try:
            yield cluster
        finally:
            ray.shutdown()


@pytest.fixture
def fit_in_thread(tmp_path):
    """Start a fit in a thread; at teardown its loop is told to stop and the thread is joined.

    Without this, a test that fails mid-way leaves its run holding the cluster's CPUs.
    """
    threads: list[threading.Thread] = []

    def start(max_failures: int) -> threading.Thread:
        threads.append(_fit_in_thread(tmp_path, max_failures))
        return threads[-1]

    yield start
    (tmp_path / "stop").touch()
    for thread in threads:
        thread.join(timeout=60)


def _fit_in_thread(tmp_path: Path, max_failures: int) -> threading.Thread:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    trainer = DataParallelTrainer(
        _loop,
        train_loop_config={"dir": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(
            name=f"chaos-{tmp_path.name}",
            storage_path=str(tmp_path / "ray"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    errors: list[BaseException] = []

    def fit():
        try:
            trainer.fit()
        except BaseException as exc:  # surfaced by the test through thread.errors
            errors.append(exc)

    thread = threading.Thread(target=fit, daemon=True)
    thread.errors = errors  # type: ignore[attr-defined]
    thread.start()
    return thread


def _attempts(path: Path) -> int:
    return len(list(path.glob("attempt-*")))


def _wait_until_running(emulated: EmulatedCluster, path: Path) -> None:
    """Both ranks of this test's run are in their loop, one worker on each node."""
    running = {"running-0", "running-1"}
    _wait_for(lambda: {p.name for p in path.glob("running-*")} == running, what="both ranks")
    _wait_for(lambda: len(emulated.train_worker_pids()) == 2, what="a worker on each node")


def test_killed_worker_makes_ray_train_restart_the_group(emulated, fit_in_thread, tmp_path):
    fit = fit_in_thread(max_failures=1)
    _wait_until_running(emulated, tmp_path)
    assert _attempts(tmp_path) == 1

    before = time.time()
    killed = emulated.kill_worker()
    # detection is timed from the SIGKILL itself, after the actor look-up that chose the pid
    assert emulated.struck_at is not None and before <= emulated.struck_at <= time.time()

    _wait_for(lambda: _attempts(tmp_path) == 2, what="restarted attempt")
    live = [pid for pids in emulated.train_worker_pids().values() for pid in pids]
    assert killed not in live
    (tmp_path / "stop").touch()
    fit.join(timeout=STARTUP_TIMEOUT_S)
    assert not fit.is_alive() and fit.errors == []


def test_drained_node_reaches_every_rank_as_a_preemption_notice(
    emulated, fit_in_thread, tmp_path, monkeypatch
):
    # Ray Train's own watcher, which spotrain's driver env turns off (a test that imported
    # cluster.ray.session may have set that in this process)
    monkeypatch.setenv("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "1")
    fit = fit_in_thread(max_failures=0)
    _wait_until_running(emulated, tmp_path)
    drained = emulated.drain_node(deadline_s=STARTUP_TIMEOUT_S)

    notices = _wait_for(
        lambda: (
            sorted(tmp_path.glob("notice-*.json"))
            if len(list(tmp_path.glob("notice-*"))) == 2
            else None
        ),
        what="preemption notice on both ranks",
    )
    seen = {p.read_text() for p in notices}
    assert len(seen) == 1, f"every rank must see the same notice; saw {seen}"
    notice = json.loads(seen.pop())
    assert notice["nodes"] == [drained]
    assert len(notice["ranks"]) == 1
    assert notice["deadline_ms"] / 1000 > time.time()
    fit.join(timeout=STARTUP_TIMEOUT_S)
    assert not fit.is_alive()


def test_kill_node_and_add_node_change_capacity(emulated):
    before = emulated.worker_node_ids()
    removed = emulated.kill_node(before[-1])
    assert removed not in emulated.worker_node_ids()
    added = emulated.add_node()
    assert added in emulated.worker_node_ids()
    with pytest.raises(EmulationError, match="not a live worker node"):
        emulated.kill_node(removed)


def test_a_process_reads_its_own_nodes_drain_without_rays_watcher(emulated):
    """``own_node_drain`` (what a spotrain worker's notice watcher reads in place of Ray Train's
    PreemptionWatcher): a process on the drained node sees its drain and deadline, one on
    another node sees none, and every read of one drain gives the same text."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from trainer.ray_internals import own_node_drain

    @ray.remote(num_cpus=0)
    class Reader:
        def read(self) -> str | None:
            return own_node_drain()

    def reader_on(node_id: str) -> Any:
        strategy = NodeAffinitySchedulingStrategy(node_id, soft=False)
        return Reader.options(scheduling_strategy=strategy).remote()

    kept, target = emulated.worker_node_ids()
    # started before the drain: a draining node takes no new work
    on_kept, on_target = reader_on(kept), reader_on(target)
    assert ray.get([on_kept.read.remote(), on_target.read.remote()]) == [None, None]
    before = time.time()
    emulated.drain_node(deadline_s=STARTUP_TIMEOUT_S, node_id=target)
    seen = _wait_for(lambda: ray.get(on_target.read.remote()), what="the drain, read on its node")
    assert target in seen
    assert ray.get(on_target.read.remote()) == seen
    assert ray.get(on_kept.read.remote()) is None
    deadline_ms = int(seen.split("deadline_ms=")[1].rstrip(")"))
    assert before < deadline_ms / 1000 <= time.time() + STARTUP_TIMEOUT_S
