"""Failure classification and the retry policy: RESTART or RAISE, within per-kind budgets.

Retryable infrastructure faults (preemption, lost worker or node, transient storage) each have
their own budget; deterministic ones (user code, bad spec, permanent storage) fail fast. The
classifier looks at class names along the exception's MRO (and inside Ray's wrappers), so this
module imports neither Ray nor TensorFlow and the same logic runs in the driver and inside Ray
Train's controller.
"""

from __future__ import annotations

import enum
import logging
import random
from dataclasses import dataclass, field
from typing import Any

from cluster import constants

logger = logging.getLogger(__name__)

#: Longest failure message kept (one line, cut from its end).
MAX_MESSAGE_CHARS = 2000


class FailureKind(str, enum.Enum):
    PREEMPTION = "preemption"  # noticed: node drain, SIGTERM'd worker or driver, spot reclaim
    LOST = "lost"  # worker or node died without notice (SIGKILL, OOM, node vanished)
    STORAGE_TRANSIENT = "storage_transient"  # 5xx, timeouts, throttling
    STORAGE_PERMANENT = "storage_permanent"  # permission denied, bucket missing
    USER_CODE = "user_code"  # the user's model / data / callback code raised
    SPEC = "spec"  # the job spec is invalid
    NO_CHECKPOINT = "no_checkpoint"  # every committed checkpoint is corrupt: resuming cannot work
    INTERNAL = "internal"  # anything else: counted against max_failures

    @property
    def is_user_error(self) -> bool:
        return self in (FailureKind.USER_CODE, FailureKind.SPEC)


class Decision(str, enum.Enum):
    RESTART = "RESTART"
    RAISE = "RAISE"


@dataclass(frozen=True)
class Classified:
    """What went wrong: the kind, a one-line message and (for user code) the user's traceback,
    whole (never cut: it is what the user needs to fix the error)."""

    kind: FailureKind
    message: str
    user_traceback: str = ""

    def redacted(self, redact: Any) -> Classified:
        """A copy with ``redact`` (e.g. ``RunLocation.redact``) applied to message and traceback."""
        return Classified(self.kind, redact(self.message), redact(self.user_traceback))


def one_line(text: str, max_chars: int = MAX_MESSAGE_CHARS) -> str:
    """The first non-empty line of ``text``, cut at ``max_chars`` from its start (a message is
    read from its beginning; tracebacks travel whole, beside it)."""
    line = next((ln.strip() for ln in str(text).splitlines() if ln.strip()), "")
    return line if len(line) <= max_chars else line[: max_chars - 3] + "..."


@dataclass(frozen=True)
class Verdict:
    """A decision with why, the budget it used and the backoff before the restart."""

    decision: Decision
    failure: Classified
    budget: str
    backoff_s: float = 0.0

    @property
    def restart(self) -> bool:
        return self.decision is Decision.RESTART


@dataclass
class FailurePolicyOptions:
    """Budgets (-1 = unlimited, 0 = no retry) and backoff.

    Attributes:
        max_preemptions: restarts after preemptions.
        max_failures: restarts after lost workers/nodes and unclassified infrastructure errors.
        max_storage_failures: restarts after transient storage errors.
        backoff_s: base delay; doubled for each consecutive failure without progress.
        backoff_max_s: cap of the delay.
        jitter: +- fraction applied to the delay.
    """

    max_preemptions: int = constants.DEFAULT_MAX_PREEMPTIONS
    max_failures: int = constants.DEFAULT_MAX_FAILURES
    max_storage_failures: int = constants.DEFAULT_MAX_STORAGE_FAILURES
    backoff_s: float = constants.DEFAULT_BACKOFF_S
    backoff_max_s: float = constants.DEFAULT_BACKOFF_MAX_S
    jitter: float = constants.DEFAULT_BACKOFF_JITTER


_BUDGET_OF = {
    FailureKind.PREEMPTION: "preemptions",
    FailureKind.LOST: "failures",
    FailureKind.INTERNAL: "failures",
    FailureKind.STORAGE_TRANSIENT: "storage",
}


@dataclass
class FailurePolicy:
    """Decides RESTART / RAISE per failure and keeps the counts. Logs why and which budget."""

    options: FailurePolicyOptions = field(default_factory=FailurePolicyOptions)
    rng: random.Random = field(default_factory=random.Random)
    counts: dict[str, int] = field(
        default_factory=lambda: {"preemptions": 0, "failures": 0, "storage": 0}
    )
    consecutive: int = 0
    log_prefix: str = ""

    def limit(self, budget: str) -> int:
        return {
            "preemptions": self.options.max_preemptions,
            "failures": self.options.max_failures,
            "storage": self.options.max_storage_failures,
        }[budget]

    def record_progress(self) -> None:
        """A new checkpoint was committed since the last failure: reset the backoff doubling."""
        self.consecutive = 0

    def decide(self, error: BaseException | Classified) -> Verdict:
        failure = error if isinstance(error, Classified) else classify(error)
        budget_name = _BUDGET_OF.get(failure.kind)
        if budget_name is None:
            verdict = Verdict(Decision.RAISE, failure, budget="none (not retryable)")
        else:
            self.counts[budget_name] += 1
            used, limit = self.counts[budget_name], self.limit(budget_name)
            shown = "unlimited" if limit < 0 else str(limit)
            budget = f"{budget_name} {used}/{shown}"
            if limit >= 0 and used > limit:
                verdict = Verdict(Decision.RAISE, failure, budget=budget + " (spent)")
            else:
                self.consecutive += 1
                verdict = Verdict(
                    Decision.RESTART, failure, budget=budget, backoff_s=self.backoff_s()
                )
        logger.info(
            "%s%s after %s failure (budget %s, backoff %.1fs): %s",
            self.log_prefix,
            verdict.decision.value,
            failure.kind.value,
            verdict.budget,
            verdict.backoff_s,
            failure.message,
        )
        return verdict

    def backoff_s(self) -> float:
        """Exponential in the consecutive failures without progress, capped, jittered."""
        base = self.options.backoff_s
        if base <= 0:
            return 0.0
        delay = min(self.options.backoff_max_s, base * (2 ** max(0, self.consecutive - 1)))
        j = self.options.jitter
        return max(0.0, delay * (1 + self.rng.uniform(-j, j)))


# --- classification ------------------------------------------------------------------------------

_LOST_NAMES = {
    "RayActorError",
    "ActorDiedError",
    "ActorUnavailableError",
    "NodeDiedError",
    "WorkerCrashedError",
    "WorkerHealthCheckFailedError",
    "WorkerHealthCheckTimeoutError",
    "WorkerGroupStartupFailedError",
    "WorkerGroupStartupTimeoutError",
    "ObjectLostError",
    "OwnerDiedError",
    "RaySystemError",
    "LocalRayletDiedError",
    "GetTimeoutError",
    "OutOfMemoryError",
}


def _stood_in(exc: BaseException) -> tuple[str, ...] | None:
    """The original's class names when ``exc`` stands in for a worker's exception
    (``trainer.portable_errors.WorkerError``, matched by attribute: no trainer import here)."""
    names = getattr(exc, "type_names", None)
    if isinstance(names, tuple) and names and all(isinstance(n, str) for n in names):
        return names
    return None


def _names(exc: BaseException) -> set[str]:
    return set(_stood_in(exc) or ()) or {c.__name__ for c in type(exc).__mro__}


def _type_name(exc: BaseException) -> str:
    return (_stood_in(exc) or (type(exc).__name__,))[0]


def _unwrap(exc: BaseException) -> tuple[BaseException, str]:
    """Ray wraps worker exceptions in UserExceptionWithTraceback (``_base_exc``)."""
    tb = ""
    seen = 0
    while seen < 5:
        seen += 1
        if (
            "UserExceptionWithTraceback" in _names(exc)
            and getattr(exc, "_base_exc", None) is not None
        ):
            tb = getattr(exc, "_traceback_str", "") or tb
            exc = exc._base_exc  # type: ignore[attr-defined]
            continue
        if "WorkerHealthCheckFailedError" in _names(exc) and getattr(
            exc, "health_check_failure", None
        ):
            exc = exc.health_check_failure  # type: ignore[attr-defined]
            continue
        break
    return exc, tb


def _user_traceback(exc: BaseException, fallback: str) -> str:
    for attr in ("user_traceback", "traceback_text", "traceback_str", "formatted_traceback"):
        value = getattr(exc, attr, None)
        if isinstance(value, str) and value.strip():
            return value
    return fallback


#: Python errors the user's config or code raises deterministically (a bad value, a wrong type):
#: retrying cannot help.
_DETERMINISTIC_NAMES = {"ValueError", "TypeError"}


def _classify_leaf(exc: BaseException, tb: str = "", in_worker: bool = False) -> Classified:
    names = _names(exc)
    msg = one_line(f"{_type_name(exc)}: {exc}")
    if getattr(exc, "preempted", False) is True or names & {
        "PreemptionError",
        "PreemptedError",
        "DriverPreempted",
    }:
        return Classified(FailureKind.PREEMPTION, msg)
    if "SpecError" in names:
        return Classified(FailureKind.SPEC, msg)
    if "UserCodeError" in names:
        return Classified(FailureKind.USER_CODE, msg, _user_traceback(exc, tb))
    if names & _LOST_NAMES:
        return Classified(FailureKind.LOST, msg)
    if "TransientStorageError" in names:
        return Classified(FailureKind.STORAGE_TRANSIENT, msg)
    if "NoValidCheckpointError" in names:
        return Classified(FailureKind.NO_CHECKPOINT, msg)
    if names & {"PermanentStorageError", "InvalidNameError"}:
        return Classified(FailureKind.STORAGE_PERMANENT, msg)
    if "SpotrainError" in names and getattr(exc, "retryable", True) is False:
        # A deterministic spotrain error raised in the workers (e.g. the trainer's "global batch
        # size not divisible by world size", ModelMismatchError) is a user error: retrying
        # cannot help.
        return Classified(FailureKind.USER_CODE, msg, _user_traceback(exc, tb))
    if in_worker and names & _DETERMINISTIC_NAMES and "SpotrainError" not in names:
        # e.g. a ValueError from TensorFlow about a value of the user's config (in the driver,
        # the same error is spotrain's own: internal)
        return Classified(FailureKind.USER_CODE, msg, _user_traceback(exc, tb) or _format(exc))
    return Classified(FailureKind.INTERNAL, msg, tb)


def _format(exc: BaseException) -> str:
    import traceback

    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))


_PRECEDENCE = [
    FailureKind.PREEMPTION,  # collateral errors on surviving ranks follow a preemption
    FailureKind.LOST,
    FailureKind.USER_CODE,
    FailureKind.SPEC,
    FailureKind.NO_CHECKPOINT,
    FailureKind.STORAGE_PERMANENT,
    FailureKind.STORAGE_TRANSIENT,
    FailureKind.INTERNAL,
]


def classify(exc: BaseException) -> Classified:
    """Classify an exception from the Ray trainer's ``fit()`` or from the driver itself."""
    names = _names(exc)
    if "WorkerGroupError" in names and isinstance(getattr(exc, "worker_failures", None), dict):
        leaves = []
        for rank, err in sorted(exc.worker_failures.items()):  # type: ignore[attr-defined]
            if err is None:
                continue
            inner, tb = _unwrap(err)
            c = _classify_leaf(inner, tb, in_worker=True)
            leaves.append(Classified(c.kind, f"rank {rank}: {c.message}", c.user_traceback))
        if leaves:
            return min(leaves, key=lambda c: _PRECEDENCE.index(c.kind))
    if "ControllerError" in names and getattr(exc, "controller_failure", None) is not None:
        inner, tb = _unwrap(exc.controller_failure)  # type: ignore[attr-defined]
        return _classify_leaf(inner, tb)
    inner, tb = _unwrap(exc)
    return _classify_leaf(inner, tb, in_worker=inner is not exc)


def options_from_spec(
    failures: Any, backoff_override_s: float | None = None
) -> FailurePolicyOptions:
    """Build options from a ``cluster.spec.FailureSpec``."""
    backoff = failures.backoff_s if backoff_override_s is None else backoff_override_s
    return FailurePolicyOptions(
        max_preemptions=failures.max_preemptions,
        max_failures=failures.max_failures,
        backoff_s=backoff,
    )
