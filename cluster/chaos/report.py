"""The final report of ``spotrain emulate``: what each fault cost, from the run record.

Every figure comes from two clocks that agree (unix time): when the emulator injected a fault,
and the events the driver and the workers wrote to the run record. These are durations measured
across machines (``Event.time``), not the record's order (:mod:`storage.events`). For each fault:

- detection: fault -> the first ``failure`` / ``preemption`` / ``attempt_end`` event after it
  (for kill-driver: the next driver start, which is when anything can notice);
- restart: detection -> the ``restore`` event of the next attempt, split by the start-up times the
  chief worker puts in that event into: process (detection -> the train function starts: Ray
  tears the old worker group down, places and starts the new one, whose processes import Ray and
  TensorFlow), strategy (MultiWorkerMirroredStrategy's collective set-up), build (the user's
  model and input pipeline, optimizer slots) and restore;
- restore: the seconds the trainer spent loading the checkpoint (``restore`` event payload);
- warm: whether the restarted chief's process had imported TensorFlow before the fault (a warm
  spare: its ``restore`` event's ``warm_at`` is earlier than the fault);
- steps lost: the step reached at the fault (the furthest step in the events, extrapolated past
  the last commit at the commit rate) minus the step restored.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

from cluster.chaos.emulator import EmulationResult, InjectedFault
from cluster.chaos.schedule import FaultKind
from storage.events import Kind

DETECTION_KINDS = (Kind.FAILURE, Kind.PREEMPTION, Kind.ATTEMPT_END)
_STEP_KINDS = (Kind.METRICS, Kind.CHECKPOINT_COMMIT, Kind.PREEMPTION, Kind.RESTORE)


@dataclass(frozen=True)
class FaultCost:
    fault: InjectedFault
    detection_s: float | None = None
    restart_s: float | None = None
    process_s: float | None = None
    strategy_s: float | None = None
    build_s: float | None = None
    restore_s: float | None = None
    steps_lost: int | None = None
    warm: bool | None = None

    @property
    def recovery_s(self) -> float | None:
        if self.detection_s is None or self.restart_s is None:
            return None
        return self.detection_s + self.restart_s


def fault_costs(result: EmulationResult, events: list[Any]) -> list[FaultCost]:
    """One :class:`FaultCost` per injected fault that takes capacity or a process away."""
    costs = []
    for injected in result.faults:
        if injected.skipped or injected.fault.kind is FaultKind.ADD_NODE:
            continue
        costs.append(_cost(injected, result, events))
    return costs


def _cost(injected: InjectedFault, result: EmulationResult, events: list[Any]) -> FaultCost:
    # by time, not the record's order: writers number their events independently, so a later
    # writer's low sequence (an attempt_end) would come before an earlier one's failure
    after = sorted((e for e in events if e.time >= injected.wall_time), key=lambda e: e.time)
    if injected.fault.kind is FaultKind.KILL_DRIVER:
        detected = next((e.time for e in after if e.kind == Kind.ATTEMPT_START), None)
    else:
        detected = next((e.time for e in after if e.kind in DETECTION_KINDS), None)
    if detected is None:
        return FaultCost(injected)
    restore = next((e for e in after if e.kind == Kind.RESTORE and e.time >= detected), None)
    reached = _step_at(injected.wall_time, events)
    lost = None
    if restore is not None and reached is not None:
        lost = max(0, reached - int(restore.payload.get("step", 0)))
    payload = restore.payload if restore is not None else {}
    seconds = payload.get("seconds")
    entered, tf_ready, started = (
        payload.get(f"{k}_at") for k in ("entered", "tf_ready", "started")
    )
    return FaultCost(
        injected,
        detection_s=detected - injected.wall_time,
        restart_s=None if restore is None else restore.time - detected,
        process_s=_between(detected, entered),
        strategy_s=_between(entered, tf_ready),
        build_s=_between(tf_ready, started),
        restore_s=float(seconds) if seconds is not None else None,
        steps_lost=lost,
        warm=None if restore is None else _warm(payload, injected.wall_time),
    )


def _warm(payload: dict[str, Any], fault_time: float) -> bool:
    warm_at = payload.get("warm_at")
    return warm_at is not None and float(warm_at) < fault_time


def _between(start: Any, end: Any) -> float | None:
    """``end - start`` in seconds when both are known (clock skew never makes it negative)."""
    if start is None or end is None:
        return None
    return max(0.0, float(end) - float(start))


def _step_at(when: float, events: list[Any]) -> int | None:
    """The furthest step reached at ``when``. Workers write no event per step, so the furthest
    step in the events before it is extrapolated past the last commit at the attempt's commit
    rate (first to last commit since it started), while the attempt was still training."""
    before = [e for e in events if e.time < when]
    furthest = _furthest_step(before)
    start = max(
        (e.time for e in before if e.kind in (Kind.ATTEMPT_START, Kind.RESTORE)), default=0.0
    )
    commits = [e for e in before if e.kind == Kind.CHECKPOINT_COMMIT and e.time >= start]
    if furthest is None or len(commits) < 2:
        return furthest
    first, last = commits[0], commits[-1]
    steps = int(last.payload["step"]) - int(first.payload["step"])
    seconds = last.time - first.time
    stopped = any(e.kind in DETECTION_KINDS for e in before if e.time > last.time)
    if steps > 0 and seconds > 0 and not stopped:
        # A training run commits again within its largest commit gap: never extrapolate past it
        # (a run that finished or stalled before the fault made no progress after its commit).
        widest = max(
            int(b.payload["step"]) - int(a.payload["step"]) for a, b in itertools.pairwise(commits)
        )
        ahead = min(int((when - last.time) * steps / seconds), widest)
        furthest = max(furthest, int(last.payload["step"]) + ahead)
    return furthest


def _furthest_step(events: Any) -> int | None:
    furthest = None
    for e in events:
        step = e.payload.get("global_step", e.payload.get("step"))
        if e.kind in _STEP_KINDS and step is not None:
            furthest = max(int(step), furthest or 0)
    return furthest


def render(result: EmulationResult, costs: list[FaultCost], summary: dict[str, Any]) -> str:
    """The report printed at the end of ``spotrain emulate``."""

    def fmt(value: float | None) -> str:
        return "-" if value is None else f"{value:.1f}s"

    lines = [
        f"run {summary.get('state', '?')} in {result.wall_s:.0f}s wall, "
        f"{result.driver_starts} driver start(s), {summary.get('attempts', '?')} attempt(s), "
        f"{summary.get('preemptions', 0)} preemption(s), "
        f"lost steps {summary.get('lost_steps', 0)}",
        f"{'fault':<28} {'target':<26} {'detect':>7} {'restart':>8} "
        f"{'(process':>9} {'strategy':>8} {'build':>6} {'restore)':>9} {'lost':>5} {'warm':>5}",
    ]
    for cost in costs:
        f = cost.fault
        lines.append(
            f"{f.fault.describe():<28} {f.target[:26]:<26} {fmt(cost.detection_s):>7} "
            f"{fmt(cost.restart_s):>8} {fmt(cost.process_s):>9} {fmt(cost.strategy_s):>8} "
            f"{fmt(cost.build_s):>6} {fmt(cost.restore_s):>9} "
            f"{'-' if cost.steps_lost is None else cost.steps_lost:>5} "
            f"{'-' if cost.warm is None else 'yes' if cost.warm else 'no':>5}"
        )
    for f in result.faults:
        if f.skipped:
            lines.append(f"{f.fault.describe():<28} skipped: {f.skipped}")
    return "\n".join(lines)


def report_json(
    result: EmulationResult, costs: list[FaultCost], summary: dict[str, Any]
) -> dict[str, Any]:
    """The report as JSON: run summary, driver exits, every fault (injected or skipped) and cost."""
    return {
        "exit_code": result.exit_code,
        "wall_s": result.wall_s,
        "driver_starts": result.driver_starts,
        "status": summary,
        "faults": [
            {
                "fault": f.fault.describe(),
                "kind": f.fault.kind.value,
                "at_s": f.at_s,
                "wall_time": f.wall_time,
                "target": f.target,
                "skipped": f.skipped,
            }
            for f in result.faults
        ],
        "costs": [
            {
                "fault": c.fault.fault.describe(),
                **{k: v for k, v in asdict(c).items() if k != "fault"},
                "recovery_s": c.recovery_s,
            }
            for c in costs
        ],
        "timeline": [asdict(t) for t in result.timeline],
    }
