"""Defaults of the ``cluster`` package, each with its ``SPOTRAIN_X`` environment override beside it.

Values that depend on each other say so. Environment overrides are read once, at import.
"""

from __future__ import annotations

import os

# The coordinator's lease TTL is storage's default (re-exported here with its meaning there).
from storage.constants import DEFAULT_LEASE_TTL_S as DEFAULT_LEASE_TTL_S
from storage.constants import env_float, env_int

#: Where runs live when neither the spec nor ``--storage`` says: run URL = <storage>/<name>.
DEFAULT_STORAGE = os.environ.get("SPOTRAIN_STORAGE") or "file://./runs"

#: Renew the lease this often. Must stay well below DEFAULT_LEASE_TTL_S (a fifth of it by default:
#: four renewals before the holder's safety margin) so that slow storage round trips do not let
#: the lease lapse.
DEFAULT_LEASE_RENEW_S = env_float("SPOTRAIN_LEASE_RENEW_S", DEFAULT_LEASE_TTL_S / 5)

#: On SIGTERM, how long the driver waits for the workers' emergency checkpoint to commit before it
#: exits anyway. Kubernetes' terminationGracePeriodSeconds must be larger than this.
DEFAULT_SIGTERM_GRACE_S = env_float("SPOTRAIN_SIGTERM_GRACE_S", 25.0)

#: Of that grace, what a stopped driver keeps for its own exit after waiting for the trainer to
#: wind down (its summary, the lease release, Ray's shutdown).
STOP_EXIT_MARGIN_S = 3.0

#: Retry budgets (-1 = unlimited). Preemptions are expected on spot machines, so unlimited.
DEFAULT_MAX_PREEMPTIONS = -1
DEFAULT_MAX_FAILURES = 3
#: Storage faults seen by the driver itself (run record, lease) are retried this often per attempt.
DEFAULT_MAX_STORAGE_FAILURES = env_int("SPOTRAIN_MAX_STORAGE_FAILURES", 5)
#: Base of the exponential backoff between attempts; the delay is capped at DEFAULT_BACKOFF_MAX_S
#: and jittered by +- DEFAULT_BACKOFF_JITTER (fraction). SPOTRAIN_BACKOFF_S overrides the spec.
DEFAULT_BACKOFF_S = 5.0
BACKOFF_OVERRIDE_S: float | None = (
    env_float("SPOTRAIN_BACKOFF_S", 0.0) if os.environ.get("SPOTRAIN_BACKOFF_S") else None
)
DEFAULT_BACKOFF_MAX_S = env_float("SPOTRAIN_BACKOFF_MAX_S", 300.0)
DEFAULT_BACKOFF_JITTER = 0.2

#: The controller writes a "metrics" event at every epoch change and at most this often between.
DEFAULT_METRICS_EVENT_INTERVAL_S = env_float("SPOTRAIN_METRICS_EVENT_INTERVAL_S", 10.0)
#: How often the live display (and ``spotrain run``'s progress log) polls the run record.
DEFAULT_PROGRESS_INTERVAL_S = env_float("SPOTRAIN_PROGRESS_INTERVAL_S", 2.0)

#: Environment every Ray worker gets before it imports anything (Keras 3 fails under
#: MultiWorkerMirroredStrategy; Ray's TensorFlow backend sets this too late, after the import).
WORKER_ENV_VARS = {"TF_USE_LEGACY_KERAS": "1"}

#: Ray Train settings the driver sets (unless already in its environment) before ``fit``; Ray
#: Train propagates them to its controller. Its default polls worker health every 2 s, which
#: adds ~0.75 s on average to noticing a dead worker (or ranks that ended after a notice's
#: save); a health poll is one small task per worker, so this costs little. Its
#: ``PreemptionWatcher`` (one more actor process at every worker-group start, ~1.1 CPU-s beside
#: the workers' own start, polling node drains every 5 s) is off: each training worker reads its
#: own node's drain itself (``trainer.ray_internals.own_node_drain``, every
#: ``SPOTRAIN_NOTICE_WATCH_S``).
RAY_TRAIN_ENV_DEFAULTS = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
}

#: Set to 0 to keep ``spotrain run`` (without ``--address`` / ``RAY_ADDRESS``) from joining a
#: live ``ray start`` head on its node; it then always starts an embedded Ray.
JOIN_LOCAL_RAY_ENV = "SPOTRAIN_JOIN_LOCAL_RAY"

#: Ray Train's own files (its run directory) go under <run URL>/<RAY_STORAGE_SUBDIR>.
RAY_STORAGE_SUBDIR = "ray"

#: Set (to anything) to print spotrain's own traceback of an unexpected error in the CLI.
TRACEBACK_ENV = "SPOTRAIN_TRACEBACK"
