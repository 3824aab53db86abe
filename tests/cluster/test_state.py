"""Run states: allowed transitions, payload classes, persistence through the run record."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from cluster.state import (
    ALLOWED_TRANSITIONS,
    Failed,
    InvalidTransition,
    Preempted,
    Running,
    RunState,
    check_transition,
    last_state,
    record_state,
    state_from_payload,
)
from storage.run_record import RunRecord


def test_terminal_states() -> None:
    assert {s for s in RunState if s.is_terminal} == {RunState.SUCCEEDED, RunState.FAILED}
    assert Failed().is_terminal and not Running().is_terminal


def test_transitions_follow_the_lifecycle() -> None:
    path = [
        RunState.PENDING,
        RunState.RUNNING,
        RunState.PREEMPTED,
        RunState.RESUMING,
        RunState.RUNNING,
        RunState.SUCCEEDED,
    ]
    for a, b in itertools.pairwise(path):
        check_transition(a, b)
    with pytest.raises(InvalidTransition, match="cannot go from SUCCEEDED to RUNNING"):
        check_transition(RunState.SUCCEEDED, RunState.RUNNING)
    with pytest.raises(InvalidTransition, match="allowed: "):
        check_transition(RunState.PENDING, RunState.SUCCEEDED)
    assert ALLOWED_TRANSITIONS[RunState.SUCCEEDED] == frozenset()
    # every state's docstring line exists
    doc = RunState.__doc__ or ""
    for a, targets in ALLOWED_TRANSITIONS.items():
        for b in targets:
            assert f"{a.value:<9} -> {b.value}" in doc


def test_payload_round_trip_and_persistence(tmp_path: Path) -> None:
    rec = RunRecord(f"file://{tmp_path}/run")
    assert last_state(rec) is None
    record_state(rec, Running(attempt=2, from_step=40))
    record_state(rec, Preempted(attempt=2, reason="lost", budget="failures 1/3"))
    st = last_state(rec)
    assert isinstance(st, Preempted) and st.reason == "lost" and st.budget == "failures 1/3"
    failed = Failed(attempt=3, reason="user_code", message="boom", user_traceback="Traceback...")
    again = state_from_payload({"state": "FAILED", **failed.payload(), "unknown": 1})
    assert again == failed and again.is_user_error
    assert [e.payload["state"] for e in rec.events(kinds=["state"])] == ["RUNNING", "PREEMPTED"]
