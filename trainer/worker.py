"""The function Ray Train runs on every worker (a ``DataParallelTrainer``, cluster/ray/runner.py).

Set ``TF_USE_LEGACY_KERAS=1`` in the Ray runtime env (env_vars) too: this module sets it at
import, which is enough only if nothing imported TensorFlow earlier in the worker process.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import Any

from trainer import env
from trainer.cluster_context import WorkerContext
from trainer.idle_import import unmark_training
from trainer.job import TrainJob
from trainer.notice_watcher import NoticeWatcher
from trainer.portable_errors import portable
from trainer.restore_prefetch import start_restore_prefetch

logger = logging.getLogger(__name__)


def train_loop_per_worker(config: dict[str, Any]) -> None:
    """Train (or resume) ``TrainJob.from_dict(config)`` on this Ray Train worker.

    Raises PreemptedError (retryable) after committing on a noticed preemption, UserCodeError
    (not retryable, with the user's traceback) for errors in the user's code; an error whose
    class is TensorFlow's or the user's reaches Ray as a ``WorkerError`` standing in for it
    (:mod:`trainer.portable_errors`: Ray's controller need not import TensorFlow to read it).
    """
    try:
        _train_and_report(config)
    except Exception as exc:
        stand_in = portable(exc)
        if stand_in is exc:
            raise
        raise stand_in from exc


def _train_and_report(config: dict[str, Any]) -> None:
    entered = time.time()
    # Imported here, not at module level, so TensorFlow's import counts in the "tf_ready" phase
    # (and the driver, which pickles this function, never imports TensorFlow).
    from trainer.spares import WarmSpares
    from trainer.training import make_strategy, train

    # a warm process imported TensorFlow before it was given this function (trainer.warm)
    warm_at = getattr(sys.modules.get("trainer.warm"), "IMPORTED_AT", None)

    job = TrainJob.from_dict(config)
    worker = WorkerContext.detect()
    # the newest checkpoint downloads while the collectives form and the model is built
    worker.restore_prefetch = start_restore_prefetch(job)
    # seen from now on; the ranks act on it before their first step (nothing to save then)
    with NoticeWatcher(worker) as worker.notice_watcher:
        strategy = make_strategy(job, worker)  # first TF call: collectives configured at startup
        env.check_legacy_keras()
        worker.phase_times.update(entered=entered, tf_ready=time.time())
        if warm_at is not None:
            worker.phase_times["warm"] = warm_at
        logger.info(
            "[run=%s rank=%d/%d] starting attempt", job.name, worker.rank, worker.world_size
        )
        try:
            result = train(job, worker, strategy, extra_callbacks=[WarmSpares(worker)])
        finally:  # the restore closes it; an attempt that ended before its restore did not
            if worker.restore_prefetch is not None:
                worker.restore_prefetch.close()
            unmark_training()  # WarmSpares marked it: spares asked for now import at full speed
    worker.report(
        {
            "loss": float(result.history.get("loss", [float("nan")])[-1])
            if result.history.get("loss")
            else float("nan"),
            "epoch": len(result.history.get("loss", [])) - 1,
            "global_step": result.global_step,
            "samples_per_s": result.samples_per_s,
            "last_committed_step": result.last_committed_step,
            "finished": result.finished,
        }
    )
