"""Pieces that run inside Ray Train's controller actor (imported only when Ray is used).

- :class:`SpotrainRayFailurePolicy` replaces Ray Train's default failure policy so that Ray's own
  worker-group restarts follow spotrain's classification: user-code errors RAISE at once (Ray's
  default would retry them ``max_failures`` times), preemptions / lost workers / transient
  storage faults RESTART within their budgets. Every decision is written to the run record
  (``preemption`` or ``failure`` event, and ``attempt_start`` for the restart).
- :class:`NoAutoscalerScalingPolicy` is Ray Train's fixed-size scaling policy without its
  resource requests to Ray Data's ``AutoscalingCoordinator``: on spotrain's embedded Ray
  nothing autoscales, and Ray's first request waits for that actor's new process (~1.7 s of a
  cold start here, before the workers start).
- :class:`MetricsEventCallback` (a Ray Train ``UserCallback``) turns the chief's
  ``ray.train.report`` metrics into ``metrics`` events (at every epoch change and at most every
  ``DEFAULT_METRICS_EVENT_INTERVAL_S`` seconds), which ``spotrain status`` and ``--plot`` read.

Both are built in the driver with the run's :class:`storage.location.RunLocation` and pickled to
the controller (a location pickles: its fsspec filesystem is rebuilt from its options there);
each holds one run record over that location, fenced by the coordinator's lease ``generation``
(a controller of a stale coordinator writes nothing).

Ray Train 2.60 has no public hook for a custom failure policy: the private classes used here
and the install hook live in :mod:`cluster.ray.internals`, which checks them at run time.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any

from ray.train.v2.api.callback import UserCallback

from cluster import constants
from cluster.failure_policy import Decision, FailureKind, FailurePolicy, FailurePolicyOptions
from cluster.ray.internals import FailureDecision, FixedScalingPolicy, RayFailurePolicy
from storage import events as run_events
from storage.events import InterruptionPayload, Source
from storage.fencing import Fence
from storage.location import RunLocation
from storage.run_record import RunRecord

logger = logging.getLogger(__name__)

# Shared between the callback and the policy inside one controller process.
_LAST_REPORT: dict[str, dict[str, Any]] = {}
_ATTEMPT: dict[str, int] = {}


def _record(location: RunLocation, generation: int | None) -> RunRecord:
    """The run record, fenced by ``generation`` when the coordinator passed one."""
    fence = None if generation is None else Fence(location, generation)
    return RunRecord(location, fence=fence)


class SpotrainRayFailurePolicy(RayFailurePolicy):
    """Ray Train failure policy delegating to :class:`cluster.failure_policy.FailurePolicy`."""

    def __init__(
        self,
        failure_config: Any,
        location: RunLocation,
        options: FailurePolicyOptions,
        counts: dict[str, int],
        attempt: int,
        generation: int | None = None,
    ) -> None:
        super().__init__(failure_config)
        self.run_url = location.url
        self.record = _record(location, generation)
        self.policy = FailurePolicy(options=options, counts=dict(counts))
        self.policy.log_prefix = f"[run={self.run_url} attempt={attempt}] "
        self.attempt = attempt

    def make_decision(self, training_failed_error: Any) -> FailureDecision:
        verdict = self.policy.decide(training_failed_error)
        last = _LAST_REPORT.get(self.run_url, {})
        payload: InterruptionPayload = {
            "attempt": self.attempt,
            "failure_kind": verdict.failure.kind.value,
            "message": self.record.loc.redact(verdict.failure.message),
            "decision": verdict.decision.value,
            "budget": verdict.budget,
            "source": Source.RAY.value,
            "global_step": last.get("global_step"),
            "last_committed_step": last.get("last_committed_step"),
        }
        if verdict.failure.user_traceback:
            payload["user_traceback"] = self.record.loc.redact(verdict.failure.user_traceback)
        try:
            rec = self.record
            if verdict.restart and run_events.stop_requested(rec):
                # The driver asked for this save (SIGTERM) and is exiting: no restart.
                verdict = replace(verdict, decision=Decision.RAISE)
                payload["decision"] = "STOP"
            preemption = verdict.failure.kind is FailureKind.PREEMPTION
            run_events.write_interruption(rec, preemption, payload)
            if verdict.restart:
                self.attempt += 1
                _ATTEMPT[self.run_url] = self.attempt
                self.policy.log_prefix = f"[run={self.run_url} attempt={self.attempt}] "
                run_events.write_attempt_start(rec, attempt=self.attempt, source=Source.RAY.value)
        except Exception:  # process boundary: a failing record write must not kill the controller
            logger.exception("could not record the failure decision in the run record")
        # No backoff sleep here: the controller's loop is async and Ray restarts the worker
        # group itself; backoff applies to the driver's restarts (cluster.coordinator).
        return FailureDecision.RETRY if verdict.restart else FailureDecision.RAISE


class MetricsEventCallback(UserCallback):
    """Writes the chief's reported metrics as ``metrics`` events (per epoch + throttled)."""

    def __init__(
        self,
        location: RunLocation,
        attempt: int = 1,
        interval_s: float | None = None,
        generation: int | None = None,
    ) -> None:
        self.run_url = location.url
        self.attempt = attempt
        self.record = _record(location, generation)
        self.interval_s = (
            constants.DEFAULT_METRICS_EVENT_INTERVAL_S if interval_s is None else interval_s
        )
        self._last_write = 0.0
        self._last_epoch: Any = None
        self._last_val: Any = None

    def after_report(
        self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any
    ) -> None:
        if not metrics:
            return
        chief = dict(metrics[0] or {})
        _LAST_REPORT[self.run_url] = chief
        epoch = chief.get("epoch")
        now = time.time()
        new_val = chief.get("val_loss") is not None and chief.get("val_loss") != self._last_val
        if epoch == self._last_epoch and now - self._last_write < self.interval_s and not new_val:
            return
        self._last_epoch = epoch
        self._last_val = chief.get("val_loss", self._last_val)
        self._last_write = now
        payload = {
            k: v for k, v in chief.items() if isinstance(v, (int, float, str, bool)) or v is None
        }
        payload.setdefault("attempt", _ATTEMPT.get(self.run_url, self.attempt))
        try:
            run_events.write_metrics(self.record, payload)
        except Exception:  # process boundary: metrics are best effort
            logger.warning("could not write a metrics event", exc_info=True)


class NoAutoscalerScalingPolicy(FixedScalingPolicy):
    """``FixedScalingPolicy`` for a cluster that does not autoscale: it asks for the same
    fixed number of workers and sends no resource requests (none is cancelled either)."""

    def after_controller_start(self, train_run_context: Any) -> None:
        pass

    def _send_resource_request(self) -> None:
        pass

    def _maybe_send_resource_request(self) -> None:
        pass
