"""Fault schedules for ``spotrain emulate``: parse them, or draw them at random.

A schedule is a comma-separated list of ``KIND@TIME[:key=value...]`` items, for example::

    kill-worker@30s,drain-node@60s:deadline=20,kill-node@90s,kill-driver@2m,add-node@150s

Times count from the start of the run and take ``s`` (default), ``m`` or ``ms``.
"""

from __future__ import annotations

import enum
import random
import re
from dataclasses import dataclass

from storage.errors import SpotrainError

#: Drain deadline used when a ``drain-node`` item names none, in seconds.
DEFAULT_DRAIN_DEADLINE_S = 20.0


class ChaosScheduleError(SpotrainError, ValueError):
    """A chaos schedule could not be parsed; the message names the item and the fix."""


class FaultKind(str, enum.Enum):
    """What a fault does to the emulated cluster."""

    KILL_WORKER = "kill-worker"  # SIGKILL one Ray Train worker process
    DRAIN_NODE = "drain-node"  # preemption notice with a deadline, node removed at the deadline
    KILL_NODE = "kill-node"  # node vanishes without notice
    KILL_DRIVER = "kill-driver"  # SIGKILL the coordinator; it is started again
    ADD_NODE = "add-node"  # capacity comes back

    @property
    def removes_capacity(self) -> bool:
        return self in (FaultKind.DRAIN_NODE, FaultKind.KILL_NODE)


@dataclass(frozen=True)
class Fault:
    """One scheduled fault."""

    kind: FaultKind
    at_s: float
    deadline_s: float | None = None

    def describe(self) -> str:
        text = f"{self.kind.value}@{self.at_s:g}s"
        if self.deadline_s is not None:
            text += f":deadline={self.deadline_s:g}"
        return text


_ITEM = re.compile(
    r"^(?P<kind>[a-z-]+)@(?P<time>[0-9.]+)(?P<unit>ms|s|m)?(?P<opts>(:[a-z_]+=[0-9.]+)*)$"
)
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}
_KINDS = ", ".join(k.value for k in FaultKind)


def parse_schedule(text: str) -> list[Fault]:
    """Parse ``text`` into faults sorted by time; raises ChaosScheduleError naming the bad item."""
    faults = []
    for raw in (part.strip() for part in text.split(",")):
        if not raw:
            continue
        match = _ITEM.match(raw)
        if match is None:
            raise ChaosScheduleError(
                f"chaos item {raw!r} is not KIND@TIME[:deadline=S], e.g. 'drain-node@60s:deadline=20'"
            )
        try:
            kind = FaultKind(match["kind"])
        except ValueError:
            raise ChaosScheduleError(
                f"chaos item {raw!r}: unknown kind {match['kind']!r}; allowed: {_KINDS}"
            ) from None
        options = dict(opt.split("=") for opt in match["opts"].split(":") if opt)
        unknown = set(options) - {"deadline"}
        if unknown or (options and kind is not FaultKind.DRAIN_NODE):
            raise ChaosScheduleError(
                f"chaos item {raw!r}: only drain-node takes an option, and only 'deadline' "
                f"(seconds); received {sorted(options)}"
            )
        deadline_s = float(options.get("deadline", DEFAULT_DRAIN_DEADLINE_S))
        faults.append(
            Fault(
                kind=kind,
                at_s=float(match["time"]) * _UNIT_S[match["unit"]],
                deadline_s=deadline_s if kind is FaultKind.DRAIN_NODE else None,
            )
        )
    if not faults:
        raise ChaosScheduleError(f"chaos schedule {text!r} names no fault; allowed kinds: {_KINDS}")
    return sorted(faults, key=lambda f: f.at_s)


def random_schedule(
    *,
    rate_per_min: float,
    seed: int,
    duration_s: float,
    kinds: tuple[FaultKind, ...] = (
        FaultKind.KILL_WORKER,
        FaultKind.DRAIN_NODE,
        FaultKind.KILL_NODE,
        FaultKind.KILL_DRIVER,
    ),
    min_gap_s: float = 0.0,
    deadline_s: float = DEFAULT_DRAIN_DEADLINE_S,
) -> list[Fault]:
    """Draw a Poisson schedule of ``rate_per_min`` faults a minute over ``duration_s``.

    The same seed gives the same schedule. Every fault that removes a node is followed by an
    ``add-node`` after it, so capacity comes back; ``min_gap_s`` spaces faults apart so the run
    can make progress between them.
    """
    if rate_per_min <= 0:
        raise ChaosScheduleError(f"chaos rate must be > 0 faults a minute; received {rate_per_min}")
    rng = random.Random(seed)
    faults: list[Fault] = []
    at_s = 0.0
    while True:
        at_s += max(min_gap_s, rng.expovariate(rate_per_min / 60.0))
        if at_s >= duration_s:
            return faults
        kind = rng.choice(kinds)
        if kind is FaultKind.DRAIN_NODE:
            faults.append(Fault(kind, round(at_s, 1), deadline_s))
            faults.append(Fault(FaultKind.ADD_NODE, round(at_s + deadline_s + 1.0, 1)))
            at_s += deadline_s + 1.0
        elif kind is FaultKind.KILL_NODE:
            faults.append(Fault(kind, round(at_s, 1)))
            faults.append(Fault(FaultKind.ADD_NODE, round(at_s + 1.0, 1)))
            at_s += 1.0
        else:
            faults.append(Fault(kind, round(at_s, 1)))
