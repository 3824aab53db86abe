"""The final report of ``spotrain emulate``: what each fault cost, from the run record.

Every figure comes from two clocks that agree (unix time): when the emulator injected a fault,
and the events the driver and the workers wrote to the run record. For each fault:

- detection: fault -> the first ``failure`` / ``preemption`` / ``attempt_end`` event after it
  (for kill-driver: the next driver start, which is when anything can notice);
- restart: detection -> the ``restore`` event of the next attempt (process start, TensorFlow
  import, strategy set-up, checkpoint download);
- restore: the seconds the trainer spent loading the checkpoint (``restore`` event payload);
- steps lost: the furthest step known before the fault minus the step restored.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cluster.chaos import FaultKind
from cluster.emulator import EmulationResult, InjectedFault

DETECTION_KINDS = ("failure", "preemption", "attempt_end")


@dataclass(frozen=True)
class FaultCost:
    fault: InjectedFault
    detection_s: float | None = None
    restart_s: float | None = None
    restore_s: float | None = None
    steps_lost: int | None = None

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
    after = [e for e in events if e.time >= injected.wall_time]
    if injected.fault.kind is FaultKind.KILL_DRIVER:
        detected = next((e.time for e in after if e.kind == "attempt_start"), None)
    else:
        detected = next((e.time for e in after if e.kind in DETECTION_KINDS), None)
    if detected is None:
        return FaultCost(injected)
    restore = next((e for e in after if e.kind == "restore" and e.time >= detected), None)
    reached = _furthest_step(e for e in events if e.time < injected.wall_time)
    lost = None
    if restore is not None and reached is not None:
        lost = max(0, reached - int(restore.payload.get("step", 0)))
    seconds = restore.payload.get("seconds") if restore is not None else None
    return FaultCost(
        injected,
        detection_s=detected - injected.wall_time,
        restart_s=None if restore is None else restore.time - detected,
        restore_s=float(seconds) if seconds is not None else None,
        steps_lost=lost,
    )


def _furthest_step(events: Any) -> int | None:
    furthest = None
    for e in events:
        step = e.payload.get("global_step", e.payload.get("step"))
        if e.kind in ("metrics", "checkpoint_commit", "preemption", "restore") and step is not None:
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
        f"{'fault':<28} {'target':<26} {'detect':>7} {'restart':>8} {'restore':>8} {'lost':>5}",
    ]
    for cost in costs:
        f = cost.fault
        lines.append(
            f"{f.fault.describe():<28} {f.target[:26]:<26} {fmt(cost.detection_s):>7} "
            f"{fmt(cost.restart_s):>8} {fmt(cost.restore_s):>8} "
            f"{'-' if cost.steps_lost is None else cost.steps_lost:>5}"
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
