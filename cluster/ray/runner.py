"""Runs one attempt on Ray: a Train V2 ``DataParallelTrainer`` with spotrain's TensorFlow set-up
(:mod:`cluster.ray.tf_backend`: what ``TensorflowTrainer`` is, without importing TensorFlow in
the driver) and spotrain's hooks.

Which Ray it joins or starts, with which settings, and an embedded Ray's cold start:
:mod:`cluster.ray.session`.

Every Ray worker gets ``TF_USE_LEGACY_KERAS=1`` through the runtime env (before any import) and
the job's working directory (``TrainJob.working_dir``; under ``ray job submit --working-dir``
the workers' own copy of it, their current directory). The training workers' runtime env also
carries ``SPOTRAIN_TRAIN_WORKER=1``, which makes :mod:`trainer.warm` preload TensorFlow and the
trainer in their processes (and in the warm spares started in that env, :mod:`trainer.spares`).

Driver SIGTERM (embedded Ray only): the local node is drained with reason PREEMPTION and a
deadline of ``sigterm_grace_s``, which every worker reads for its own node
(``trainer.ray_internals.own_node_drain``); the trainer saves at its next poll, commits, and
ends the attempt. The driver waits for that commit (or the deadline) and raises
``DriverPreempted``; when no training worker lives (a SIGTERM before the group was placed: a
drained node takes no new workers), there is nothing to wait for and it raises at once. On a
joined cluster the driver does not drain shared nodes: it stops and the last commit stands.

Fencing: the coordinator's lease generation goes to every worker (``TrainJob.lease_generation``)
and to the controller's hooks, so each of them writes under it. A lost lease is not a SIGTERM:
the driver raises ``LeaseLostError`` at once, without asking the workers for a save (the run
belongs to a newer coordinator); closing the runner then ends the workers, and anything they
still try to commit is refused by their fence.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from cluster import constants
from cluster.attempt import AttemptContext, AttemptResult
from cluster.errors import DriverPreempted
from cluster.failure_policy import options_from_spec
from cluster.ray.node_spares import NodeSpares
from cluster.ray.session import set_driver_env, start_ray, training_worker_runtime_env

logger = logging.getLogger(__name__)


class RayAttemptRunner:
    """The :class:`cluster.attempt.AttemptRunner` of ``spotrain run``: one attempt on Ray.

    Its first attempt sets :data:`cluster.ray.session.DRIVER_ENV_DEFAULTS`, before it imports
    Ray or TensorFlow.
    """

    def __init__(self, poll_s: float = 0.5) -> None:
        self.poll_s = poll_s
        self.embedded = False
        self._started_ray = False
        self._node_spares: NodeSpares | None = None
        self._fit_thread: threading.Thread | None = None

    # -- Ray session -------------------------------------------------------------------------
    def ensure_ray(self, ctx: AttemptContext) -> None:
        set_driver_env()  # before Ray (and, through ray.train.tensorflow, TensorFlow) is imported
        import ray

        if ray.is_initialized():
            return
        # ray.init installs a C-level SIGTERM handler that aborts the driver (seen: exit -6,
        # "*** SIGTERM received ***"), and before it a Python one that exits with code 15; put
        # the Python handlers back afterwards.
        saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
        try:
            self.embedded = start_ray(ray, ctx)
        except SystemExit as exc:
            if exc.code != signal.SIGTERM:
                raise
            raise self._stopped_while_ray_started(ray, ctx) from None
        finally:
            if threading.current_thread() is threading.main_thread():
                for sig, handler in saved.items():
                    if handler is not None:
                        signal.signal(sig, handler)
        self._started_ray = True

    @staticmethod
    def _stopped_while_ray_started(ray: Any, ctx: AttemptContext) -> DriverPreempted:
        """A SIGTERM during ``ray.init`` ran Ray's handler (``sys.exit(15)``), not spotrain's:
        nothing ran yet, so the driver stops as on any SIGTERM, with nothing to save."""
        ctx.stop.set()
        logger.warning("SIGTERM while Ray started: nothing to save; stopping")
        try:
            ray.shutdown()  # what the interrupted ray.init had started
        except Exception:  # process boundary: an embedded Ray ends with this process anyway
            logger.debug("ray.shutdown after an interrupted ray.init failed", exc_info=True)
        return DriverPreempted("the driver was asked to stop (SIGTERM) while Ray started")

    def start_node_spares(self) -> None:
        """Warm spares on nodes without a training worker (:mod:`cluster.ray.node_spares`),
        watched from the first attempt until :meth:`close`."""
        if self._node_spares is None:
            from trainer.constants import DEFAULT_SPARE_KEEP_ALIVE_S, DEFAULT_WARM_SPARES

            self._node_spares = NodeSpares(DEFAULT_WARM_SPARES, DEFAULT_SPARE_KEEP_ALIVE_S)
            self._node_spares.start()

    def close(self) -> bool:
        """Stop the spares and Ray. Returns True when a stopped ``trainer.fit()`` still runs: Ray
        is then left up (a call into Ray after ``ray.shutdown()`` ends the process with exit 1) and
        the process must end with ``os._exit``."""
        if self._node_spares is not None:
            self._node_spares.stop()
            self._node_spares = None
        if self._fit_thread is not None and self._fit_thread.is_alive():
            logger.info("the stopped trainer is still winding down; Ray ends with the process")
            return True
        if self._started_ray:
            import ray

            ray.shutdown()
            self._started_ray = False
        return False

    # -- one attempt ---------------------------------------------------------------------------
    def build_trainer(self, ctx: AttemptContext) -> Any:
        import ray
        import ray.train
        from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

        # Ray Train V2 classes at runtime (V2 is the default in 2.60); typed as Any because the
        # stubs mypy sees are Ray Train V1's.
        FailureConfig: Any = ray.train.FailureConfig
        RunConfig: Any = ray.train.RunConfig
        ScalingConfig: Any = ray.train.ScalingConfig
        # Train V2's TensorflowTrainer is this trainer with Ray's TensorflowConfig, whose
        # import imports TensorFlow; TensorflowSetup is the same set-up without it
        Trainer: Any = DataParallelTrainer

        from cluster.ray.hooks import (
            MetricsEventCallback,
            NoAutoscalerScalingPolicy,
            SpotrainRayFailurePolicy,
        )
        from cluster.ray.internals import install_failure_policy
        from cluster.ray.tf_backend import TensorflowSetup
        from trainer.worker import train_loop_per_worker

        spec = ctx.spec
        working_dir: str | None = spec.working_dir
        job_env = ray.get_runtime_context().runtime_env or {}
        if not self.embedded and job_env.get("working_dir"):
            working_dir = None  # each worker has its own copy of the job's working dir as its cwd
        config = spec.train_job_dict(run_url=ctx.run_url)
        config["working_dir"] = working_dir
        config["lease_generation"] = ctx.lease_generation

        resources: dict[str, float] = {"CPU": spec.scaling.cpus_per_worker}
        if spec.scaling.use_gpu:
            resources["GPU"] = spec.scaling.gpus_per_worker or 1
        elastic: dict[str, Any] = {}
        if spec.scaling.elastic:
            elastic["elastic_resize_monitor_interval_s"] = spec.scaling.resize_check_s
        scaling = ScalingConfig(
            num_workers=spec.scaling.workers,
            use_gpu=spec.scaling.use_gpu,
            resources_per_worker=resources,
            **elastic,
        )
        loc = ctx.location
        storage_fs = None
        if not loc.is_local:
            from pyarrow.fs import FSSpecHandler, PyFileSystem

            storage_fs = PyFileSystem(FSSpecHandler(loc.fs))
        failure_config = FailureConfig(
            max_failures=spec.failures.max_failures,
            max_preemption_failures=spec.failures.max_preemptions,
        )
        run_config = RunConfig(
            name=f"spotrain-{spec.name}",
            storage_path=loc.root + "/" + constants.RAY_STORAGE_SUBDIR,
            storage_filesystem=storage_fs,
            failure_config=failure_config,
            callbacks=[
                MetricsEventCallback(loc, attempt=ctx.attempt, generation=ctx.lease_generation)
            ],
            worker_runtime_env=training_worker_runtime_env(spec, working_dir),
        )
        trainer = Trainer(
            train_loop_per_worker,
            train_loop_config=config,
            backend_config=TensorflowSetup(),
            scaling_config=scaling,
            run_config=run_config,
        )
        policy = SpotrainRayFailurePolicy(
            failure_config,
            location=loc,
            options=options_from_spec(spec.failures, ctx.options.backoff_override_s),
            counts=ctx.counts,
            attempt=ctx.attempt,
            generation=ctx.lease_generation,
        )
        # an embedded Ray never autoscales: no resource requests to Ray Data's coordinator
        fixed = self.embedded and not spec.scaling.elastic
        install_failure_policy(
            trainer,
            policy,
            NoAutoscalerScalingPolicy(scaling) if fixed else None,
            embedded=self.embedded,
        )
        return trainer

    def run(self, ctx: AttemptContext) -> AttemptResult:
        self.ensure_ray(ctx)
        self.start_node_spares()
        trainer = self.build_trainer(ctx)
        box: dict[str, Any] = {}

        def fit() -> None:
            try:
                box["result"] = trainer.fit()
            except BaseException as exc:  # thread boundary: re-raised in the caller below
                box["error"] = exc

        thread = threading.Thread(target=fit, name="spotrain-fit", daemon=True)
        self._fit_thread = thread
        thread.start()
        while thread.is_alive():
            thread.join(self.poll_s)
            if ctx.lease_lost.is_set():
                raise self._lease_lost(ctx)
            if ctx.stop.is_set() and thread.is_alive():
                deadline = self.emergency_stop(ctx, thread)
                # the drained workers exit and fit() returns; waiting for it (inside the grace)
                # lets Ray shut down with nothing left calling into it
                thread.join(max(self.poll_s, deadline - constants.STOP_EXIT_MARGIN_S - time.time()))
                if thread.is_alive() or "result" not in box:
                    raise DriverPreempted("the driver was asked to stop (SIGTERM); state saved")
                # training finished before the stop took effect: success wins
        if "error" in box:
            raise box["error"]
        metrics = getattr(box.get("result"), "metrics", None) or {}
        step = metrics.get("global_step")
        return AttemptResult(global_step=int(step) if isinstance(step, (int, float)) else None)

    @staticmethod
    def _lease_lost(ctx: AttemptContext) -> BaseException:
        from storage.errors import LeaseLostError

        logger.error(
            "[run=%s attempt=%d] lease lost: stopping without a final save (a newer coordinator "
            "owns the run)",
            ctx.location.url,
            ctx.attempt,
        )
        return LeaseLostError(
            f"this coordinator lost the lease of {ctx.location.url} (generation "
            f"{ctx.lease_generation}); it stopped without saving; fix: nothing, the run goes on "
            "under the coordinator that holds it (spotrain status shows it)",
            ctx.location.url,
        )

    def emergency_stop(self, ctx: AttemptContext, thread: threading.Thread) -> float:
        """Ask the workers to save (drain the local node as a preemption) and wait for it.

        Done when the trainer records its ``preemption`` event (written after its commit), when
        the attempt ends, or after ``sigterm_grace_s``. Returns the grace's deadline (unix time).
        """
        from storage import events as run_events
        from storage.checkpoints import CheckpointStore
        from storage.events import Kind, Source
        from storage.fencing import Fence
        from storage.run_record import RunRecord

        gen = ctx.lease_generation
        fence = None if gen is None else Fence(ctx.location, gen)
        store = CheckpointStore(ctx.location, fence=fence)
        record = RunRecord(ctx.location, fence=fence)
        steps = store.committed_steps()
        before = steps[-1] if steps else None
        grace = ctx.options.sigterm_grace_s
        asked = time.time()
        if not self.embedded:
            logger.warning(
                "driver stopping on a joined Ray cluster: not draining shared nodes; the last "
                "committed checkpoint (step %s) stands",
                before,
            )
            return asked
        # The attempt as recorded (Ray's controller may have restarted the workers since the
        # driver started it); the trainer's saves already there are not this stop's.
        evs = run_events.of_kind(record, Kind.PREEMPTION, Kind.ATTEMPT_START)
        saved_before = {e.name for e in run_events.emergency_saves(evs)}
        run_events.write_stop_requested(
            record,
            attempt=max(ctx.attempt, run_events.current_attempt(evs)),
            source=Source.DRIVER_SIGTERM.value,
        )
        try:
            self._drain_local_node(grace)
        except Exception:  # process boundary: fall back to the last commit
            logger.warning(
                "could not drain the local Ray node; the last commit stands", exc_info=True
            )
            return asked
        logger.warning("SIGTERM: asked the workers to save; waiting up to %.0fs", grace)
        while time.time() < asked + grace and thread.is_alive():
            saved = [e for e in run_events.emergency_saves(record) if e.name not in saved_before]
            if saved:
                logger.warning(
                    "emergency checkpoint committed at step %s", saved[-1].payload.get("step")
                )
                return asked + grace
            if not self._workers_alive():
                logger.warning(
                    "SIGTERM before the workers started: nothing to save; the latest commit "
                    "(step %s) stands",
                    before,
                )
                return time.time()
            time.sleep(self.poll_s)
        steps = store.committed_steps()
        latest = steps[-1] if steps else None
        if thread.is_alive():
            logger.warning(
                "no emergency checkpoint within %.0fs; the latest commit (step %s) stands",
                grace,
                latest,
            )
        else:
            logger.warning(
                "the attempt ended without an emergency checkpoint; the latest commit (step %s) "
                "stands",
                latest,
            )
        return asked + grace

    @staticmethod
    def _workers_alive() -> bool:
        """Whether a training worker lives (one that lives sees the drain and saves, or ends
        with nothing to save); True when Ray cannot tell, so the grace applies."""
        from cluster.ray.internals import live_train_workers

        try:
            return live_train_workers() > 0
        except Exception:  # process boundary: wait out the grace as before
            logger.debug("could not list Ray's actors", exc_info=True)
            return True

    @staticmethod
    def _drain_local_node(deadline_s: float) -> None:
        import ray

        from cluster.ray.internals import drain_node

        ctx = ray.get_runtime_context()
        accepted, why = drain_node(
            ctx.gcs_address, ctx.get_node_id(), deadline_s, "spotrain driver received SIGTERM"
        )
        if not accepted:
            raise RuntimeError(f"drain rejected: {why}")
