"""Warm worker processes: what a Ray worker imports before it is given work.

Ray's raylet setting ``preload_python_modules`` (environment ``RAY_preload_python_modules``,
comma-separated) makes every Python worker process import those modules right after it
connects, before it accepts a task or actor. With ``trainer.warm`` there, a process started in
a spotrain training worker's runtime env (``SPOTRAIN_TRAIN_WORKER=1`` among its ``env_vars``:
``cluster.ray.runner`` puts it there) imports TensorFlow, tf-keras, Ray Train's TensorFlow
backend and spotrain's trainer at that moment; any other process (Ray Train's controller, its
helper actors, other jobs' workers) imports nothing more than this module.

The job's ``warm_imports`` (:data:`WARM_IMPORTS_ENV`) are imported next, from the job's
working directory: the user's slow imports (``sklearn.datasets`` costs ~1.7 s in a fresh
process here) are then paid before a fault too; the train function's imports of the same
files and modules find them in ``sys.modules``.

Such a process is a *warm spare* when it was started before it is needed:
:mod:`trainer.spares` asks each node's raylet for idle workers in the training workers' own
job and runtime env once training runs, and a restarted worker group takes them instead of
starting cold processes. :data:`IMPORTED_AT` (the unix time the preload finished; None when
this process was not preloaded) goes into the ``restore`` event as ``warm_at``, so a test and
the recovery report can tell a warm restart from a cold one.

A spare asked for while training runs on this host imports at idle CPU priority
(:mod:`trainer.idle_import`), so that it does not slow the training steps beside it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Sequence

#: In a process's environment: it runs (or is a spare for) a spotrain training worker.
TRAIN_WORKER_ENV = "SPOTRAIN_TRAIN_WORKER"
#: The value of ``preload_python_modules`` that makes spotrain's training workers warm.
PRELOAD_MODULES = "trainer.warm"
#: When set (tests), a finished preload writes ``<dir>/<pid>.json`` ({"pid", "imported_at"}).
MARKER_DIR_ENV = "SPOTRAIN_WARM_MARKER_DIR"
#: The job's ``warm_imports`` for the preload: JSON ``{"imports": [...], "working_dir": ...}``.
WARM_IMPORTS_ENV = "SPOTRAIN_WARM_IMPORTS"

#: Unix time this process finished importing TensorFlow and the trainer as a preload; None: it
#: was not preloaded (a cold process imports them when the train function starts).
IMPORTED_AT: float | None = None

logger = logging.getLogger(__name__)


def preload() -> float | None:
    """Import what a training worker needs, in a training worker's process only."""
    global IMPORTED_AT
    if IMPORTED_AT is not None or os.environ.get(TRAIN_WORKER_ENV) != "1":
        return IMPORTED_AT
    from trainer.idle_import import idle_priority, training_on_this_host

    # a spare asked for while training runs here imports on the cycles the workers leave
    beside_training = training_on_this_host()
    with idle_priority() if beside_training else contextlib.nullcontext(False) as idle:
        try:
            from trainer import env

            env.import_tensorflow(quiet=True)
            import ray.train.tensorflow  # noqa: F401
            import tf_keras  # noqa: F401

            import trainer.training
            import trainer.worker  # noqa: F401
        except Exception:  # process boundary: a failed preload leaves a cold worker
            logger.warning("spotrain could not preload TensorFlow in this worker", exc_info=True)
            return None
        import_job_modules(os.environ.get(WARM_IMPORTS_ENV, ""))
    IMPORTED_AT = time.time()
    marker_dir = os.environ.get(MARKER_DIR_ENV)
    if marker_dir:
        with open(os.path.join(marker_dir, f"{os.getpid()}.json"), "w") as f:
            json.dump({"pid": os.getpid(), "imported_at": IMPORTED_AT, "idle": idle}, f)
    return IMPORTED_AT


def warm_imports_env(imports: Sequence[str], working_dir: str | None) -> dict[str, str]:
    """The env var that makes the preload import a job's ``warm_imports`` (none: {})."""
    if not imports:
        return {}
    return {WARM_IMPORTS_ENV: json.dumps({"imports": list(imports), "working_dir": working_dir})}


def import_job_modules(value: str) -> list[str]:
    """Import the modules and files of :data:`WARM_IMPORTS_ENV`'s value; returns those imported.
    One that fails is left for the train function, which reports it as the user's error."""
    if not value:
        return []
    from trainer.entry_points import import_target

    wanted = json.loads(value)
    done = []
    for target in wanted["imports"]:
        try:
            import_target(target, wanted.get("working_dir"))
        except BaseException:  # the user's code: never the preload's end
            logger.warning("spotrain could not preload %s in this worker", target, exc_info=True)
            continue
        done.append(target)
    return done


preload()
