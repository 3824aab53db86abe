"""The coordinator's decision helpers, read from the run record: budgets already charged, the
verdict Ray's controller reached, and the event that records a driver-side verdict.

Pure functions over events and verdicts; the coordinator (:mod:`cluster.coordinator`) applies
them. The failure policy itself is :mod:`cluster.failure_policy`.
"""

from __future__ import annotations

from typing import Any

from cluster.failure_policy import Classified, Decision, FailureKind, Verdict
from storage import events as run_events
from storage.events import InterruptionPayload, Kind, Source


def count_budgets(events: list[Any]) -> dict[str, int]:
    """Failures already charged to each budget in this run (one per interrupted attempt)."""
    counts = {"preemptions": 0, "failures": 0, "storage": 0}
    for ev in run_events.interruptions(events):
        if ev.kind == Kind.PREEMPTION:
            counts["preemptions"] += 1
        elif ev.kind == Kind.FAILURE:
            kind = ev.payload.get("failure_kind")
            if kind == FailureKind.STORAGE_TRANSIENT.value:
                counts["storage"] += 1
            elif kind in (FailureKind.LOST.value, FailureKind.INTERNAL.value):
                counts["failures"] += 1
    return counts


def ray_raise_payload(events: Any) -> dict[str, Any] | None:
    """The payload of a RAISE decided by Ray's controller in the latest attempt, if any
    (:func:`storage.events.ray_raise`; ``events``: the run record or its events)."""
    return run_events.ray_raise(events)


def verdict_from_ray(payload: dict[str, Any], failure: Classified) -> Verdict:
    """Ray's controller's RAISE (its budget already charged), with the driver's traceback if
    the controller had none."""
    return Verdict(
        decision=Decision.RAISE,
        failure=Classified(
            FailureKind(payload.get("failure_kind", failure.kind.value)),
            payload.get("message", failure.message),
            payload.get("user_traceback", failure.user_traceback) or failure.user_traceback,
        ),
        budget=payload.get("budget", ""),
    )


def failure_event(
    attempt: int, failure: Classified, verdict: Verdict, last_committed_step: int | None
) -> tuple[bool, InterruptionPayload]:
    """(is a preemption, payload) of the event recording a driver-side verdict
    (:func:`storage.events.write_interruption`)."""
    payload: InterruptionPayload = {
        "attempt": attempt,
        "failure_kind": failure.kind.value,
        "message": failure.message,
        "decision": verdict.decision.value,
        "budget": verdict.budget,
        "source": Source.DRIVER.value,
        "last_committed_step": last_committed_step,
    }
    if failure.user_traceback:
        payload["user_traceback"] = failure.user_traceback  # whole: the user needs all of it
    return failure.kind is FailureKind.PREEMPTION, payload


def made_progress(from_step: int | None, latest_step: int | None) -> bool:
    """The attempt committed a step past the one it started from."""
    if latest_step is None:
        return False
    return from_step is None or latest_step > from_step
