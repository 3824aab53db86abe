"""The run record's protocol: every event kind and its payload, declared once; one writer per
kind; one named query per question readers ask.

No other module spells an event kind or a payload convention (``tests/test_event_protocol.py``
checks it). Kind names and payload keys are on disk: ``spotrain status``, ``emulate`` and older
runs read them, so they are extended, never renamed.

Order: :meth:`RunRecord.events` returns events by (generation, seq, writer), never by clock
(:mod:`storage.run_record`). Events of different writers of one generation interleave only
causally, so a query that needs "which came later" across writers answers from content: attempt
numbers (every driver, Ray-controller and trainer interruption, restore and stop event carries
the attempt it belongs to) and steps. A query takes a :class:`RunRecord` (it reads only the kinds
it needs) or a list of events already read in log order.
"""

from __future__ import annotations

import contextlib
import enum
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypedDict

from storage.errors import SpotrainError, StaleWriterError
from storage.run_record import Event, RunRecord

if TYPE_CHECKING:
    from typing_extensions import Unpack

logger = logging.getLogger(__name__)

__all__ = [
    "Kind",
    "Source",
    "attempts",
    "best_effort",
    "current_attempt",
    "emergency_saves",
    "interruptions",
    "last_state",
    "metrics",
    "of_kind",
    "preemption_recorded_since_stop",
    "ray_raise",
    "reached_before",
    "restores",
    "save_timings",
    "stop_requested",
]


class Kind(str, enum.Enum):
    """Event kinds; who writes each, and its payload (the ``*Payload`` types below)."""

    STATE = "state"  # the coordinator: a run state (cluster.state) and its fields
    ATTEMPT_START = "attempt_start"  # the driver, or Ray's controller restarting the workers
    ATTEMPT_END = "attempt_end"  # the driver: an attempt ended (outcome, duration)
    PREEMPTION = "preemption"  # driver / Ray's controller decision, or the trainer's own save
    FAILURE = "failure"  # driver / Ray's controller: a non-preemption failure and its verdict
    STOP_REQUESTED = "stop_requested"  # the driver on SIGTERM asked the workers to save
    METRICS = "metrics"  # Ray's controller: what the chief reported
    RESTORE = "restore"  # the chief restored a checkpoint (and its start-up phase times)
    CHECKPOINT_COMMIT = "checkpoint_commit"  # the store committed a step
    CHECKPOINT_CORRUPT = "checkpoint_corrupt"  # restore skipped a corrupt step

    def __str__(self) -> str:
        return self.value


class Source(str, enum.Enum):
    """Who decided an interruption or started an attempt (the ``source`` payload key)."""

    DRIVER = "driver"
    RAY = "ray"
    DRIVER_LOST = "driver_lost"  # the next coordinator found the previous one gone
    DRIVER_SIGTERM = "driver_sigterm"

    def __str__(self) -> str:
        return self.value


# --- payloads ----------------------------------------------------------------------------------


class _AttemptStart(TypedDict):
    attempt: int
    source: str


class AttemptStartPayload(_AttemptStart, total=False):
    from_step: int | None  # the driver's: latest committed step when the attempt started


class _AttemptEnd(TypedDict):
    attempt: int
    outcome: str  # "succeeded" | "preempted" | "failed"
    duration_s: float


class AttemptEndPayload(_AttemptEnd, total=False):
    failure_kind: str


class AttemptNumber(TypedDict, total=False):
    """The attempt an event belongs to, where its writer knows it."""

    attempt: int


class InterruptionPayload(AttemptNumber, total=False):
    """``preemption`` / ``failure``. A decision (driver, Ray's controller) has ``source``,
    ``failure_kind``, ``decision`` (RESTART / RAISE / STOP), ``budget``, ``message``; the
    trainer's own ``preemption`` (written after its emergency commit) has no ``source``."""

    failure_kind: str
    message: str
    decision: str
    budget: str
    source: str
    last_committed_step: int | None
    global_step: int | None  # Ray's: the chief's last reported step
    user_traceback: str
    step: int  # the trainer's: the step it committed
    reason: str  # the trainer's: what noticed the preemption


class StopRequestedPayload(TypedDict):
    attempt: int
    source: str


class RestorePayload(AttemptNumber, total=False):
    """Plus ``<phase>_at`` unix times of the worker's start-up phases (``entered_at``...)."""

    step: int
    epoch: int
    step_in_epoch: int
    world_size: int
    saved_by_world_size: int | None
    seconds: float
    started_at: float


class _CheckpointCommitRequired(TypedDict):
    step: int
    files: int
    bytes: int
    seconds: float  # the store's: upload + manifest


class CheckpointCommitPayload(_CheckpointCommitRequired, AttemptNumber, total=False):
    """Plus, from a trainer's save: ``blocked_s`` (training stopped for the snapshot),
    ``commit_s`` (snapshot taken → manifest written: write, queue, upload), ``waited`` (saves
    of this attempt so far that waited for the previous snapshot's write), ``trained_at`` (wall
    time the step's training ended: the save began)."""

    blocked_s: float
    commit_s: float
    waited: int
    trained_at: float


class CheckpointCorruptPayload(TypedDict):
    step: int
    reason: str


#: A metrics event: what the chief reported (scalars), plus ``attempt``.
MetricsPayload = Mapping[str, int | float | str | bool | None]


# --- writers (one per kind) --------------------------------------------------------------------


def write_state(record: RunRecord, state: str, fields: Mapping[str, Any]) -> Event:
    """The coordinator entered ``state`` (a ``cluster.state.RunState`` value) with ``fields``."""
    return record.append_event(Kind.STATE, state=state, **fields)


def write_attempt_start(record: RunRecord, **payload: Unpack[AttemptStartPayload]) -> Event:
    return record.append_event(Kind.ATTEMPT_START, **payload)


def write_attempt_end(record: RunRecord, **payload: Unpack[AttemptEndPayload]) -> Event:
    return record.append_event(Kind.ATTEMPT_END, **payload)


def write_preemption(record: RunRecord, **payload: Unpack[InterruptionPayload]) -> Event:
    return record.append_event(Kind.PREEMPTION, **payload)


def write_failure(record: RunRecord, **payload: Unpack[InterruptionPayload]) -> Event:
    return record.append_event(Kind.FAILURE, **payload)


def write_interruption(record: RunRecord, preemption: bool, payload: InterruptionPayload) -> Event:
    """A decision's event: ``preemption`` when ``preemption`` else ``failure``."""
    write = write_preemption if preemption else write_failure
    return write(record, **payload)


def write_stop_requested(record: RunRecord, **payload: Unpack[StopRequestedPayload]) -> Event:
    return record.append_event(Kind.STOP_REQUESTED, **payload)


def write_metrics(record: RunRecord, metrics: MetricsPayload) -> Event:
    return record.append_event(Kind.METRICS, **metrics)


def write_restore(
    record: RunRecord, phase_times: Mapping[str, float], **payload: Unpack[RestorePayload]
) -> Event:
    """The chief restored ``step``; ``phase_times`` become ``<phase>_at`` keys."""
    return record.append_event(
        Kind.RESTORE, **payload, **{f"{k}_at": v for k, v in phase_times.items()}
    )


def write_checkpoint_commit(record: RunRecord, **payload: Unpack[CheckpointCommitPayload]) -> Event:
    return record.append_event(Kind.CHECKPOINT_COMMIT, **payload)


def write_checkpoint_corrupt(
    record: RunRecord, **payload: Unpack[CheckpointCorruptPayload]
) -> Event:
    return record.append_event(Kind.CHECKPOINT_CORRUPT, **payload)


@contextlib.contextmanager
def best_effort() -> Iterator[None]:
    """For writers whose work must not depend on the record (the trainer): a failed event write
    or read is dropped, except :class:`StaleWriterError` (the writer's generation is gone: it
    stops)."""
    try:
        yield
    except StaleWriterError:
        raise
    except SpotrainError as exc:
        logger.warning("could not use the run record: %s", exc)


# --- queries -----------------------------------------------------------------------------------

#: What a query reads: a record (only the kinds it needs are read) or events in log order.
Events = RunRecord | Sequence[Event]


def of_kind(source: Events, *kinds: Kind) -> list[Event]:
    """The events of ``kinds``, in log order."""
    if isinstance(source, RunRecord):
        return source.events(kinds=[k.value for k in kinds])
    wanted = {k.value for k in kinds}
    return [e for e in source if e.kind in wanted]


def metrics(source: Events) -> list[Event]:
    return of_kind(source, Kind.METRICS)


def restores(source: Events) -> list[Event]:
    return of_kind(source, Kind.RESTORE)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def attempt_of(event: Event) -> int | None:
    """The attempt an event belongs to (None: an event of an older version, or of a trainer
    running outside ``spotrain run``)."""
    return _int(event.payload.get("attempt"))


def last_state(source: Events) -> dict[str, Any] | None:
    """The payload of the run's current state: the last ``state`` event of the newest
    generation (one coordinator writes them, in order), or None for a run that never started."""
    states = of_kind(source, Kind.STATE)
    return dict(states[-1].payload) if states else None


def attempts(source: Events) -> int:
    """How many attempts started (``attempt_start`` events)."""
    return len(of_kind(source, Kind.ATTEMPT_START))


def current_attempt(source: Events) -> int:
    """The number of the latest attempt started (0: none yet)."""
    numbers = [attempt_of(e) for e in of_kind(source, Kind.ATTEMPT_START)]
    return max((n for n in numbers if n is not None), default=0)


def _step_of(event: Event) -> int | None:
    p = event.payload
    return _int(p.get("global_step", p.get("step")))


def interruptions(source: Events) -> list[Event]:
    """One ``preemption`` / ``failure`` event per interrupted attempt, by attempt number.

    An interruption can be recorded several times (the trainer's ``preemption`` after its
    emergency commit, Ray's controller decision, the driver's SIGTERM record): within one attempt
    a preemption wins over a failure, a decision (it has ``decision``) over the trainer's record.
    Events without an attempt number count only in a record that has none with one (a trainer
    run outside ``spotrain run``, or a record of an older version): then they count as one.
    """
    groups: dict[int | None, list[Event]] = {}
    for e in of_kind(source, Kind.PREEMPTION, Kind.FAILURE):
        groups.setdefault(attempt_of(e), []).append(e)
    numbered = sorted(a for a in groups if a is not None)
    chosen = [groups[a] for a in numbered] or ([groups[None]] if None in groups else [])
    return [
        min(g, key=lambda e: (e.kind != Kind.PREEMPTION.value, "decision" not in e.payload))
        for g in chosen
    ]


def ray_raise(source: Events) -> dict[str, Any] | None:
    """The payload of a RAISE decided by Ray's controller in the latest attempt, if any."""
    evs = of_kind(source, Kind.ATTEMPT_START, Kind.PREEMPTION, Kind.FAILURE)
    latest = current_attempt(evs)
    raised = [
        e
        for e in of_kind(evs, Kind.PREEMPTION, Kind.FAILURE)
        if e.payload.get("source") == Source.RAY.value
        and e.payload.get("decision") == "RAISE"
        and (latest == 0 or attempt_of(e) == latest)
    ]
    return dict(raised[-1].payload) if raised else None


def stop_requested(source: Events) -> bool:
    """The driver recorded ``stop_requested`` in the latest attempt (it is stopping)."""
    evs = of_kind(source, Kind.ATTEMPT_START, Kind.STOP_REQUESTED)
    latest = current_attempt(evs)
    return any((attempt_of(e) or 0) >= latest for e in of_kind(evs, Kind.STOP_REQUESTED))


def preemption_recorded_since_stop(source: Events) -> bool:
    """The trainer or Ray's controller recorded the interruption the latest stop caused."""
    evs = of_kind(source, Kind.STOP_REQUESTED, Kind.PREEMPTION)
    stops = of_kind(evs, Kind.STOP_REQUESTED)
    if not stops:
        return False
    since = attempt_of(stops[-1]) or 0
    return any((attempt_of(e) or -1) >= since for e in of_kind(evs, Kind.PREEMPTION))


def emergency_saves(source: Events) -> list[Event]:
    """The trainer's own ``preemption`` events: each written after its emergency commit."""
    return [e for e in of_kind(source, Kind.PREEMPTION) if "source" not in e.payload]


def reached_before(source: Events, attempt: int) -> int | None:
    """The furthest step any event of an attempt before ``attempt`` reports."""
    kinds = (Kind.METRICS, Kind.PREEMPTION, Kind.FAILURE, Kind.RESTORE)
    steps = [
        _step_of(e)
        for e in of_kind(source, *kinds)
        if (attempt_of(e) or attempt) < attempt and _step_of(e) is not None
    ]
    return max((s for s in steps if s is not None), default=None)


class SaveTimings(TypedDict):
    blocked_s: list[float]
    commit_s: list[float]
    waited: int


def save_timings(source: Events) -> SaveTimings:
    """The trainer's saves in the latest attempt (``checkpoint_commit`` events that carry
    ``blocked_s`` / ``commit_s``), in log order: ``{"blocked_s": [...], "commit_s": [...],
    "waited": n}``; all attempts' when no event names one."""
    evs = of_kind(source, Kind.ATTEMPT_START, Kind.CHECKPOINT_COMMIT)
    latest = current_attempt(evs)
    commits = [
        e
        for e in of_kind(evs, Kind.CHECKPOINT_COMMIT)
        if "blocked_s" in e.payload and (latest == 0 or attempt_of(e) in (latest, None))
    ]
    numbered = [e for e in commits if attempt_of(e) is not None]
    commits = numbered or commits

    def floats(key: str) -> list[float]:
        values = (e.payload.get(key) for e in commits)
        return [float(v) for v in values if isinstance(v, int | float)]

    waited = [_int(e.payload.get("waited")) for e in commits]
    return {
        "blocked_s": floats("blocked_s"),
        "commit_s": floats("commit_s"),
        "waited": max((n for n in waited if n is not None), default=0),
    }
