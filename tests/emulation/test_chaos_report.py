"""Fault costs from a run's events: detection, the restart split into its phases, steps lost."""

from cluster.chaos.emulator import EmulationResult, InjectedFault
from cluster.chaos.report import fault_costs, render
from cluster.chaos.schedule import Fault, FaultKind
from storage.run_record import Event

T0 = 1_000_000.0


def _event(kind: str, at: float, **payload: object) -> Event:
    return Event(seq=int(at * 1000), kind=kind, time=T0 + at, payload=payload)


def _result(*faults: InjectedFault) -> EmulationResult:
    return EmulationResult(exit_code=0, wall_s=60.0, driver_starts=1, faults=list(faults))


def test_a_drain_is_split_into_detection_process_tf_build_and_restore():
    drain = InjectedFault(Fault(FaultKind.DRAIN_NODE, 10.0, 8.0), 10.0, T0 + 10.0, "node-1")
    added = InjectedFault(Fault(FaultKind.ADD_NODE, 10.0), 10.0, T0 + 10.0, "node-3")
    events = [
        _event("metrics", 9.0, global_step=40),
        _event("checkpoint_commit", 10.5, step=42),
        _event("preemption", 11.0, global_step=42),
        _event(
            "restore",
            20.0,
            step=42,
            seconds=0.5,
            entered_at=T0 + 14.0,
            tf_ready_at=T0 + 17.5,
            started_at=T0 + 19.5,
        ),
    ]
    [cost] = fault_costs(_result(drain, added), events)  # add-node costs nothing
    assert cost.detection_s == 1.0
    assert cost.restart_s == 9.0
    assert (cost.process_s, cost.strategy_s, cost.build_s, cost.restore_s) == (3.0, 3.5, 2.0, 0.5)
    assert cost.steps_lost == 0  # the furthest step before the fault was 40, restored 42
    assert cost.recovery_s == 10.0
    assert "drain-node@10s:deadline=8" in render(_result(drain), [cost], {"state": "SUCCEEDED"})


def test_a_kill_loses_the_steps_after_the_last_commit_and_old_events_lack_phases():
    kill = InjectedFault(Fault(FaultKind.KILL_WORKER, 5.0), 5.0, T0 + 5.0, "pid 7")
    events = [
        _event("checkpoint_commit", 3.0, step=30),
        _event("metrics", 4.5, global_step=37),
        _event("failure", 6.5),
        _event("restore", 15.0, step=30, seconds=0.25),
    ]
    [cost] = fault_costs(_result(kill), events)
    assert (cost.detection_s, cost.restart_s, cost.restore_s) == (1.5, 8.5, 0.25)
    assert cost.steps_lost == 7
    assert (cost.process_s, cost.strategy_s, cost.build_s) == (None, None, None)


def test_steps_lost_extrapolate_past_the_last_commit_at_the_commit_rate():
    kill = InjectedFault(Fault(FaultKind.KILL_WORKER, 3.5), 3.5, T0 + 3.5, "pid 7")
    events = [
        _event("attempt_start", 0.5),
        *(_event("checkpoint_commit", t, step=10 * t) for t in (1.0, 2.0, 3.0)),
        _event("failure", 5.0),
        _event("restore", 12.0, step=30, seconds=0.2),
    ]
    [cost] = fault_costs(_result(kill), events)
    assert cost.steps_lost == 5  # 10 steps/s for 0.5 s after the commit of step 30


def test_steps_lost_never_extrapolate_past_the_widest_commit_gap():
    kill = InjectedFault(Fault(FaultKind.KILL_WORKER, 60.0), 60.0, T0 + 60.0, "pid 7")
    events = [
        *(_event("checkpoint_commit", t, step=10 * t) for t in (1.0, 2.0, 3.0)),
        _event("failure", 61.0),
        _event("restore", 70.0, step=30, seconds=0.2),
    ]
    [cost] = fault_costs(_result(kill), events)
    assert cost.steps_lost == 10  # not 570: no commit came for 57 s, so training had stopped


def test_a_killed_driver_is_detected_when_the_next_driver_starts():
    kill = InjectedFault(Fault(FaultKind.KILL_DRIVER, 5.0), 5.0, T0 + 5.0, "driver")
    events = [_event("attempt_start", 9.0), _event("restore", 20.0, step=10, seconds=0.1)]
    [cost] = fault_costs(_result(kill), events)
    assert (cost.detection_s, cost.restart_s) == (4.0, 11.0)


def test_a_fault_nothing_noticed_has_no_figures():
    kill = InjectedFault(Fault(FaultKind.KILL_NODE, 5.0), 5.0, T0 + 5.0, "node-2")
    [cost] = fault_costs(_result(kill), [_event("metrics", 1.0, global_step=3)])
    assert cost.detection_s is None and cost.recovery_s is None and cost.steps_lost is None


def test_a_restart_is_warm_when_the_chief_imported_tensorflow_before_the_fault():
    kill = InjectedFault(Fault(FaultKind.KILL_WORKER, 5.0), 5.0, T0 + 5.0, "pid 7")
    warm = [_event("failure", 6.0), _event("restore", 8.0, step=10, warm_at=T0 + 2.0)]
    cold = [_event("failure", 6.0), _event("restore", 12.0, step=10, warm_at=T0 + 9.0)]
    unknown = [_event("failure", 6.0), _event("restore", 12.0, step=10)]
    assert [fault_costs(_result(kill), e)[0].warm for e in (warm, cold, unknown)] == [
        True,
        False,
        False,
    ]
    [cost] = fault_costs(_result(kill), warm)
    assert render(_result(kill), [cost], {}).splitlines()[-1].endswith("yes")


def test_detection_is_the_first_event_in_time_not_in_the_records_order():
    kill = InjectedFault(Fault(FaultKind.KILL_WORKER, 5.0), 5.0, T0 + 5.0, "pid 7")
    late_writer_first = [  # the record orders by (generation, sequence): this comes first
        Event(seq=4, kind="attempt_end", time=T0 + 30.0, payload={}),
        Event(seq=35, kind="failure", time=T0 + 5.5, payload={}),
        Event(seq=37, kind="restore", time=T0 + 12.0, payload={"step": 10}),
    ]
    [cost] = fault_costs(_result(kill), late_writer_first)
    assert (cost.detection_s, cost.restart_s) == (0.5, 6.5)
