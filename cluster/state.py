"""The run's lifecycle: states, their payloads, allowed transitions, and their persistence.

States are persisted as run-record ``state`` events (:mod:`storage.events`; payload: ``state`` plus the
state's fields), so ``spotrain status`` and the next coordinator read them from storage alone.
"""

from __future__ import annotations

import enum
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from storage import events
from storage.errors import SpotrainError


class RunState(str, enum.Enum):
    """State of a run. Allowed transitions (anything else raises :class:`InvalidTransition`)::

        PENDING   -> RUNNING                 first attempt starts
        PENDING   -> FAILED                  could not start (bad spec found late, user code)
        RUNNING   -> SUCCEEDED               training finished, final checkpoint committed
        RUNNING   -> PREEMPTED               preemption, lost worker/node, driver SIGTERM/lost
        RUNNING   -> FAILED                  user code error, or a retry budget is spent
        PREEMPTED -> RESUMING                backoff over; restore the latest commit
        PREEMPTED -> FAILED                  retry budget spent
        RESUMING  -> RUNNING                 next attempt starts
        RESUMING  -> PREEMPTED               driver lost or SIGTERM'd while waiting
        RESUMING  -> FAILED                  could not restart
        FAILED    -> RESUMING                only by a new ``spotrain run`` (user fixed the cause)

    SUCCEEDED and FAILED are terminal for the coordinator that reached them
    (:attr:`is_terminal`); a new ``spotrain run`` of a SUCCEEDED run prints its summary and
    exits 0, of a FAILED run starts a new attempt.
    """

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    PREEMPTED = "PREEMPTED"
    RESUMING = "RESUMING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"

    @property
    def is_terminal(self) -> bool:
        return self in (RunState.SUCCEEDED, RunState.FAILED)


ALLOWED_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    RunState.PENDING: frozenset({RunState.RUNNING, RunState.FAILED}),
    RunState.RUNNING: frozenset({RunState.SUCCEEDED, RunState.PREEMPTED, RunState.FAILED}),
    RunState.PREEMPTED: frozenset({RunState.RESUMING, RunState.FAILED}),
    RunState.RESUMING: frozenset({RunState.RUNNING, RunState.PREEMPTED, RunState.FAILED}),
    RunState.SUCCEEDED: frozenset(),
    RunState.FAILED: frozenset({RunState.RESUMING}),
}


class InvalidTransition(SpotrainError):
    """A transition the lifecycle does not allow (a bug in the coordinator)."""

    def __init__(self, previous: RunState, next_state: RunState) -> None:
        self.previous = previous
        self.next_state = next_state
        allowed = ", ".join(s.value for s in sorted(ALLOWED_TRANSITIONS[previous])) or "none"
        super().__init__(
            f"run state cannot go from {previous.value} to {next_state.value}; allowed: {allowed}"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.previous, self.next_state))


def check_transition(previous: RunState, next_state: RunState) -> None:
    if next_state not in ALLOWED_TRANSITIONS[previous]:
        raise InvalidTransition(previous, next_state)


# --- one small class per state, holding its payload --------------------------------------------


@dataclass(frozen=True)
class State:
    """Base of the per-state payload classes."""

    kind: ClassVar[RunState]

    def payload(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def is_terminal(self) -> bool:
        return self.kind.is_terminal


@dataclass(frozen=True)
class Pending(State):
    kind: ClassVar[RunState] = RunState.PENDING


@dataclass(frozen=True)
class Running(State):
    kind: ClassVar[RunState] = RunState.RUNNING
    attempt: int = 1
    from_step: int | None = None  # latest committed step when the attempt started


@dataclass(frozen=True)
class Preempted(State):
    kind: ClassVar[RunState] = RunState.PREEMPTED
    attempt: int = 1
    reason: str = "preemption"  # failure kind (see cluster.failure_policy.FailureKind)
    message: str = ""
    budget: str = ""  # e.g. "preemptions 2/unlimited"
    stop: bool = False  # True: the driver itself was stopped (SIGTERM); exit 75, do not retry


@dataclass(frozen=True)
class Resuming(State):
    kind: ClassVar[RunState] = RunState.RESUMING
    attempt: int = 2  # the attempt about to start
    backoff_s: float = 0.0


@dataclass(frozen=True)
class Succeeded(State):
    kind: ClassVar[RunState] = RunState.SUCCEEDED
    attempt: int = 1
    global_step: int | None = None


@dataclass(frozen=True)
class Failed(State):
    kind: ClassVar[RunState] = RunState.FAILED
    attempt: int = 1
    reason: str = "user_code"  # failure kind
    message: str = ""
    user_traceback: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def is_user_error(self) -> bool:
        return self.reason in ("user_code", "spec")


STATE_CLASSES: dict[RunState, type[State]] = {
    cls.kind: cls for cls in (Pending, Running, Preempted, Resuming, Succeeded, Failed)
}


def state_from_payload(payload: dict[str, Any]) -> State:
    """Rebuild a state from a ``"state"`` event's payload (unknown keys are ignored)."""
    kind = RunState(payload["state"])
    cls = STATE_CLASSES[kind]
    names = set(cls.__dataclass_fields__)
    return cls(**{k: v for k, v in payload.items() if k in names})


def record_state(record: Any, state: State) -> None:
    """Append a ``state`` event for ``state`` to a ``storage.run_record.RunRecord``."""
    events.write_state(record, state.kind.value, state.payload())


def last_state(record: Any) -> State | None:
    """The run's current persisted state (:func:`storage.events.last_state`: the newest
    generation's last state event, never ordered by clock), or None for a run never started."""
    payload = events.last_state(record)
    return None if payload is None else state_from_payload(payload)
