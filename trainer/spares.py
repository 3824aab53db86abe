"""Warm spares: once an attempt trains, each Ray training worker asks its node's raylet for
idle worker processes in its own job and runtime env (:func:`trainer.ray_internals.prestart_workers`).

A restarted worker group (a worker died, a node was drained or lost) then takes those
processes instead of starting new ones; with :mod:`trainer.warm` preloaded they have already
imported TensorFlow and the trainer, which is most of a cold restart. The request is made when
the attempt's first step has ended (after the restore, the tracing and the step), from a thread,
so the spares' own start-up (a process importing TensorFlow: seconds of CPU) does not compete
with this attempt's start: asked for when ``fit`` began, the spares imported TensorFlow while
the first step was traced, and a cold start (bench/cold_start.py, 2 cores, medians of 3) took
~0.6-0.9 s longer. Seen on a loaded 2-core machine: a spare took ~35 s to import TensorFlow, so
a fault soon after an attempt started may find its spare still importing (it is taken anyway,
and finishes its import first). Without Ray, or when the raylet refuses, training goes on with
cold restarts. Before asking, the worker marks itself as training on this host
(:func:`trainer.idle_import.mark_training`), so the spares import at idle CPU priority.

Each worker also publishes its job and runtime env (:func:`trainer.ray_internals.publish_worker_env`):
the driver (:mod:`cluster.ray.node_spares`) then starts spares on nodes that have no training
worker, such as a node that joins when another is drained or lost, where the restarted group
lands.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from trainer.cluster_context import WorkerContext
from trainer.constants import DEFAULT_SPARE_KEEP_ALIVE_S, DEFAULT_WARM_SPARES
from trainer.idle_import import mark_training

import tensorflow as tf  # isort: skip

logger = logging.getLogger(__name__)


def request_spares(worker: WorkerContext, count: int, keep_alive_s: float) -> bool:
    """Ask this worker's raylet for ``count`` spares and publish this worker's env for the
    driver; False (logged) when either could not be done."""
    from trainer.ray_internals import prestart_workers, publish_worker_env

    try:
        prestart_workers(count, keep_alive_s)
        logger.info("[rank=%d] asked for %d warm spare worker(s)", worker.rank, count)
        publish_worker_env()
    except Exception as exc:  # thread boundary: without spares restarts are only slower
        logger.warning("[rank=%d] could not start warm spare workers: %s", worker.rank, exc)
        return False
    return True


class WarmSpares(tf.keras.callbacks.Callback):
    """When the attempt's first step has ended, request the spares (once, in a thread)."""

    spotrain_stateless = True  # nothing to save: BackupAndRestore skips it

    def __init__(
        self,
        worker: WorkerContext,
        count: int = DEFAULT_WARM_SPARES,
        keep_alive_s: float = DEFAULT_SPARE_KEEP_ALIVE_S,
    ) -> None:
        super().__init__()
        self._supports_tf_logs = True  # its logs are not read: Keras need not convert them
        self.worker = worker
        self.count = count
        self.keep_alive_s = keep_alive_s
        self.thread: threading.Thread | None = None

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if self.thread is not None or self.count <= 0 or not self.worker.ray:
            return
        mark_training()  # the spares' preload sees it: they import at idle priority
        self.thread = threading.Thread(
            target=request_spares,
            args=(self.worker, self.count, self.keep_alive_s),
            name="spotrain-warm-spares",
            daemon=True,
        )
        self.thread.start()
