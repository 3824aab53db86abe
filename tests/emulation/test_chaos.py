"""Chaos schedules: parsing, errors that name the bad item, seeded random schedules."""

import pytest

from cluster.chaos.schedule import (
    DEFAULT_DRAIN_DEADLINE_S,
    ChaosScheduleError,
    Fault,
    FaultKind,
    parse_schedule,
    random_schedule,
)


def test_parses_the_documented_example_in_time_order():
    faults = parse_schedule(
        "kill-worker@30s,drain-node@60s:deadline=20,kill-node@90s,kill-driver@2m,add-node@150s"
    )
    assert faults == [
        Fault(FaultKind.KILL_WORKER, 30.0),
        Fault(FaultKind.DRAIN_NODE, 60.0, 20.0),
        Fault(FaultKind.KILL_NODE, 90.0),
        Fault(FaultKind.KILL_DRIVER, 120.0),
        Fault(FaultKind.ADD_NODE, 150.0),
    ]


def test_units_default_deadline_and_sorting():
    faults = parse_schedule(" add-node@1500ms , drain-node@1 ")
    assert faults == [
        Fault(FaultKind.DRAIN_NODE, 1.0, DEFAULT_DRAIN_DEADLINE_S),
        Fault(FaultKind.ADD_NODE, 1.5),
    ]
    assert faults[0].describe() == f"drain-node@1s:deadline={DEFAULT_DRAIN_DEADLINE_S:g}"


@pytest.mark.parametrize(
    ("schedule", "names"),
    [
        ("reboot@3s", "unknown kind 'reboot'"),
        ("kill-worker", "is not KIND@TIME"),
        ("kill-worker@soon", "is not KIND@TIME"),
        ("kill-node@3s:deadline=4", "only drain-node takes an option"),
        ("drain-node@3s:grace=4", "received ['grace']"),
        (" , ", "names no fault"),
    ],
)
def test_bad_items_are_named(schedule, names):
    with pytest.raises(ChaosScheduleError) as err:
        parse_schedule(schedule)
    assert names in str(err.value)


def test_random_schedule_is_seeded_and_restores_capacity():
    one = random_schedule(rate_per_min=6, seed=7, duration_s=300, min_gap_s=5)
    assert one == random_schedule(rate_per_min=6, seed=7, duration_s=300, min_gap_s=5)
    assert one != random_schedule(rate_per_min=6, seed=8, duration_s=300, min_gap_s=5)
    assert len(one) >= 5
    assert all(f.at_s > 0 for f in one)
    removed = sum(f.kind.removes_capacity for f in one)
    added = sum(f.kind is FaultKind.ADD_NODE for f in one)
    assert removed == added
    times = [f.at_s for f in one]
    assert times == sorted(times)


def test_random_schedule_rejects_a_non_positive_rate():
    with pytest.raises(ChaosScheduleError, match="rate must be > 0"):
        random_schedule(rate_per_min=0, seed=1, duration_s=10)
