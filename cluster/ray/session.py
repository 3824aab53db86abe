"""The driver's Ray: its environment, which Ray it joins or starts, and an embedded Ray's
settings and cold start.

Which Ray (:mod:`cluster.ray.address`): ``--address``, ``RAY_ADDRESS`` (``ray job submit``) or
a live ``ray start`` head on this node is joined; otherwise an embedded Ray,
``ray.init(address="local")`` with exactly the CPUs/GPUs the workers need, so a stale address
file of a dead local cluster is never joined.

Recovery settings (:data:`RAY_SYSTEM_CONFIG`, given to the embedded Ray and the emulated
cluster; a user's own cluster sets them at ``ray start``, see the README): every Python worker
preloads ``trainer.warm``, and the GCS declares a silent node dead after ~3 s instead of ~15 s.

Cold start (embedded Ray): right after ``ray.init`` the driver asks its raylet for the training
workers' processes, in the runtime env Train will give them
(:func:`cluster.ray.internals.train_worker_runtime_env`), so they import TensorFlow while Train's
controller and its actors start, and the worker group takes them. Ray's own prestart of
processes in the driver's job env, which no part of a run uses, is off, and so are the dashboard
API server it would start and wait for before the raylet and the autoscaler monitor
(:mod:`cluster.ray.internals` items 9 and 10). Ray Train's import runs on a thread while Ray
starts.
"""

from __future__ import annotations

import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from cluster import constants
from cluster.attempt import AttemptContext
from trainer.warm import PRELOAD_MODULES, TRAIN_WORKER_ENV, warm_imports_env

logger = logging.getLogger(__name__)

#: Set in the driver (unless already set) before Ray or TensorFlow is imported or started:
#: Ray Train would chdir workers into its run directory, breaking relative paths in user code;
#: ``ray.train.tensorflow`` imports TensorFlow in the driver too, so tf-keras there as well.
DRIVER_ENV_DEFAULTS = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    **constants.WORKER_ENV_VARS,
    "TF_CPP_MIN_LOG_LEVEL": "2",
}


#: Ray system config for fast recovery (the raylets read it at start: ``ray.init`` of an embedded
#: cluster, the emulated cluster's head; the other raylets get it from the GCS). A node that
#: stops answering is dead after health_check_period_ms x health_check_failure_threshold (3 s;
#: Ray's default 3000 x 5 = 15 s); a reply may take health_check_timeout_ms (2 s) before it
#: counts as missed, so a raylet starved of CPU for a moment is not declared dead.
RAY_SYSTEM_CONFIG: dict[str, Any] = {
    "preload_python_modules": [PRELOAD_MODULES],
    "health_check_period_ms": 1000,
    "health_check_timeout_ms": 2000,
    "health_check_failure_threshold": 3,
}
#: Worker processes a raylet starts at once. Ray's default is the node's CPUs, and a start past
#: it is dropped, not queued, for a spare (seen: with 1-CPU nodes the spares asked for while
#: Ray Train's helper actors started never came); spotrain raises it to at least this.
MIN_STARTUP_CONCURRENCY = 4
#: How long the processes prestarted for the first worker group wait, idle, to be taken. The
#: group is created seconds after ``ray.init``; a process left over (a Ray whose runtime env
#: for Train's workers differs from the prediction) holds TensorFlow's memory only this long.
PRESTART_KEEP_ALIVE_S = 300.0


def set_driver_env() -> None:
    """Put :data:`DRIVER_ENV_DEFAULTS` and Ray Train's settings
    (:data:`cluster.constants.RAY_TRAIN_ENV_DEFAULTS`, read by its controller, which propagates
    them to the workers) into ``os.environ`` where the user has not set them."""
    for name, value in {**DRIVER_ENV_DEFAULTS, **constants.RAY_TRAIN_ENV_DEFAULTS}.items():
        os.environ.setdefault(name, value)


def training_worker_runtime_env(spec: Any, working_dir: str | None) -> dict[str, Any]:
    """The ``RunConfig.worker_runtime_env`` of the job's training workers."""
    return {
        "env_vars": {
            **constants.WORKER_ENV_VARS,
            TRAIN_WORKER_ENV: "1",
            **warm_imports_env(spec.warm_imports, working_dir),
        }
    }


def start_ray(ray: Any, ctx: AttemptContext) -> bool:
    """Join the job's Ray or start an embedded one; True when embedded."""
    from cluster.ray.address import choose_address

    address, source = choose_address(ctx.options.address)
    level = logging.INFO if ctx.options.verbose else logging.WARNING
    if address:
        logger.info("joining the Ray cluster at %s (%s)", address, source)
        ray.init(address=address, log_to_driver=ctx.options.verbose, logging_level=level)
        return False
    scaling = ctx.spec.scaling
    env = dict(constants.WORKER_ENV_VARS)
    path = [ctx.spec.working_dir, os.environ.get("PYTHONPATH", "")]
    env["PYTHONPATH"] = os.pathsep.join(p for p in path if p)
    num_gpus = int(scaling.max_workers * (scaling.gpus_per_worker or 1)) if scaling.use_gpu else 0
    from cluster.ray import internals

    # Ray Train's import (~0.5 s) overlaps Ray's start, which mostly waits on its processes;
    # the prestart below needs it (the workers' runtime env)
    with ThreadPoolExecutor(1, thread_name_prefix="spotrain-import") as pool:
        imported = pool.submit(internals.import_train)
        with internals.embedded_head():  # no API server, no autoscaler monitor: nothing uses them
            ray.init(
                address="local",
                num_cpus=max(1, round(scaling.max_workers * scaling.cpus_per_worker)),
                num_gpus=num_gpus,
                include_dashboard=False,
                log_to_driver=ctx.options.verbose,
                logging_level=level,
                runtime_env={"env_vars": env},
                _system_config={
                    **RAY_SYSTEM_CONFIG,
                    "worker_maximum_startup_concurrency": max(
                        MIN_STARTUP_CONCURRENCY, os.cpu_count() or 1
                    ),
                    # the processes Ray prestarts for the driver's job run in its runtime env,
                    # which no part of a run uses; the training workers' own are prestarted below
                    "prestart_worker_first_driver": False,
                },
            )
        imported.result()  # its error, if any, is raised here
    prestart_training_workers(ray, ctx)
    return True


def prestart_training_workers(ray: Any, ctx: AttemptContext) -> None:
    """Start the training workers' processes now, in their runtime env: they import TensorFlow
    (:mod:`trainer.warm`) while Ray Train's controller and its actors start, and the worker
    group takes them when it is created (embedded Ray: one node). Without them the workers'
    processes start, and import TensorFlow, only after those actors."""
    from cluster.ray.internals import train_worker_runtime_env
    from trainer.ray_internals import WorkerEnv, prestart_workers

    runtime_env = training_worker_runtime_env(ctx.spec, ctx.spec.working_dir)
    job = ray.get_runtime_context()
    try:
        serialized = train_worker_runtime_env(job.runtime_env or {}, runtime_env)
        prestart_workers(
            ctx.spec.scaling.max_workers,  # an embedded elastic run starts at its maximum
            PRESTART_KEEP_ALIVE_S,
            env=WorkerEnv(job.get_job_id(), serialized),
        )
    except Exception as exc:  # without them the workers only start cold
        logger.warning("could not prestart the training workers' processes: %s", exc)
