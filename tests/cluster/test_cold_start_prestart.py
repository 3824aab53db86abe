"""An embedded Ray's cold start: the processes the driver prestarts right after ``ray.init`` (in
the runtime env it predicts for Train's workers) are the ones Ray Train's worker group takes.

Real pieces: the runner's own ``ray.init`` and prestart (with a stand-in for the attempt context,
which only the spec's scaling, working dir and warm imports are read from), a real Train V2
``DataParallelTrainer`` whose workers report their pid and serialized runtime env. The
prediction must equal that string byte for byte: a raylet gives an idle process only to an
actor of exactly the same runtime env.
"""

from __future__ import annotations

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only; before ray

import json
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from cluster.constants import RAY_TRAIN_ENV_DEFAULTS
from cluster.ray.runner import RayAttemptRunner
from cluster.ray.session import training_worker_runtime_env
from trainer.warm import MARKER_DIR_ENV

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

WORKERS = 2
#: Generous: on a loaded 2-core machine a process imports TensorFlow in tens of seconds.
PRELOAD_TIMEOUT_S = 300.0


def _markers(marker_dir: Path) -> dict[int, float]:
    found = {}
    for p in marker_dir.glob("*.json"):
        with_time = json.loads(p.read_text())
        found[int(with_time["pid"])] = float(with_time["imported_at"])
    return found


def _report_process(config: dict[str, Any]) -> None:
    import ray
    import ray.train

    rank = ray.train.get_context().get_world_rank()
    info = {"pid": os.getpid(), "env": ray.get_runtime_context().get_runtime_env_string()}
    Path(config["out"], f"{rank}.json").write_text(json.dumps(info))


def test_the_train_workers_take_the_processes_prestarted_at_ray_init(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import ray
    import ray.train
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    from cluster.ray.internals import train_worker_runtime_env

    markers, out = tmp_path / "markers", tmp_path / "out"
    markers.mkdir()
    out.mkdir()
    monkeypatch.setenv(MARKER_DIR_ENV, str(markers))  # the raylet, and so every worker, has it
    monkeypatch.setenv("SPOTRAIN_JOIN_LOCAL_RAY", "0")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    for name in RAY_TRAIN_ENV_DEFAULTS:  # unset here, set by the runner, unset again after
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    spec = SimpleNamespace(
        scaling=SimpleNamespace(
            workers=WORKERS, max_workers=WORKERS, cpus_per_worker=1, use_gpu=False
        ),
        working_dir=str(tmp_path),
        warm_imports=["json.tool"],
    )
    ctx = SimpleNamespace(spec=spec, options=SimpleNamespace(address=None, verbose=False))
    runner = RayAttemptRunner()
    runner.ensure_ray(ctx)  # type: ignore[arg-type]
    try:
        assert runner.embedded
        # no dashboard API server, no autoscaler monitor (cluster.ray.internals items 9, 10):
        # the run below works without them
        from ray._private import ray_constants
        from ray._private.worker import global_worker

        assert ray_constants.PROCESS_TYPE_DASHBOARD not in global_worker.node.all_processes
        assert ray_constants.PROCESS_TYPE_MONITOR not in global_worker.node.all_processes
        assert ray_constants.PROCESS_TYPE_RAYLET in global_worker.node.all_processes
        deadline = time.monotonic() + PRELOAD_TIMEOUT_S
        while len(_markers(markers)) < WORKERS:
            assert time.monotonic() < deadline, "the prestarted processes never preloaded"
            time.sleep(0.2)
        prestarted = _markers(markers)
        assert len(prestarted) == WORKERS, prestarted

        worker_env = training_worker_runtime_env(spec, spec.working_dir)
        predicted = train_worker_runtime_env(ray.get_runtime_context().runtime_env, worker_env)
        trainer = DataParallelTrainer(
            _report_process,
            train_loop_config={"out": str(out)},
            scaling_config=ray.train.ScalingConfig(num_workers=WORKERS),
            run_config=ray.train.RunConfig(
                name="prestart", storage_path=str(tmp_path / "ray"), worker_runtime_env=worker_env
            ),
        )
        trainer.fit()
        reported = [json.loads((out / f"{r}.json").read_text()) for r in range(WORKERS)]
        # the driver's Ray Train settings reached the controller: no PreemptionWatcher actor
        # (the workers read their node's drain themselves: trainer.ray_internals item 5)
        started = {a["ActorClassName"] for a in ray._private.state.actors().values()}
        assert "RayTrainWorker" in started and "PreemptionWatcher" not in started, started
    finally:
        runner.close()
    for info in reported:
        assert info["env"] == predicted
    assert {info["pid"] for info in reported} == set(prestarted), (reported, prestarted)
