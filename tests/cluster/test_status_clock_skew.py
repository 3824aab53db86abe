"""``spotrain status`` from a record whose writers' clocks disagree: the state and the counts
come from the record's order (generation, sequence) and the events' content, never a clock."""

from __future__ import annotations

import json
import time
from typing import Any

from cluster.state import Failed, Running, Succeeded, record_state
from cluster.status import collect_status
from storage import events
from storage.fencing import Fence
from storage.lease import Lease
from storage.location import RunLocation
from storage.run_record import RunRecord
from tests.conftest import FAST_RETRY

TEN_YEARS_S = 10 * 365 * 86400.0


def _writer(loc: RunLocation, holder: str, skew_s: float = 0.0) -> RunRecord:
    """The run record of a coordinator that took the lease (a new generation)."""
    lease = Lease(loc, holder, 30.0, safety_margin_s=1.0, retry=FAST_RETRY)
    info = lease.acquire()
    lease.release()
    return RunRecord(loc, fence=Fence(loc, info.generation), clock=lambda: time.time() + skew_s)


def test_a_far_future_failure_does_not_make_status_failed(
    run_url: str, storage_options: dict[str, Any]
) -> None:
    loc = RunLocation.from_url(run_url, storage_options)
    first = _writer(loc, "host-a", skew_s=TEN_YEARS_S)
    first.write_spec({"name": "skew", "epochs": 1})
    events.write_attempt_start(first, attempt=1, source="driver", from_step=None)
    record_state(first, Running(attempt=1))
    record_state(first, Failed(attempt=1, reason="lost", message="far-future failure"))
    # the same, as an older spotrain named it: by the writer's clock
    doc = {"seq": "x", "kind": "state", "time": 4.1e9, "payload": {"state": "FAILED"}}
    name = f"{4_102_444_800 * 10**9:020d}-abcdef01-state.json"
    loc.fs.pipe_file(f"{loc.events_dir}/{name}", json.dumps(doc).encode())
    second = _writer(loc, "host-b")
    events.write_attempt_start(second, attempt=2, source="driver", from_step=None)
    record_state(second, Running(attempt=2))
    record_state(second, Succeeded(attempt=2, global_step=20))
    rep = collect_status(loc)
    assert (rep.state, rep.attempts, rep.message) == ("SUCCEEDED", 2, "")


def test_counts_and_lost_steps_come_from_attempt_numbers(
    run_url: str, storage_options: dict[str, Any]
) -> None:
    """Ray's controller writes metrics, the chief writes restores: two writers that never read
    each other, so the record does not order them. Here attempt 2's first metrics event comes
    before attempt 2's restore; the lost steps are still 14 - 10."""
    loc = RunLocation.from_url(run_url, storage_options)
    rec = _writer(loc, "host-a")
    rec.write_spec({"name": "skew", "epochs": 2})
    events.write_attempt_start(rec, attempt=1, source="driver", from_step=None)
    for step in (5, 10, 14):
        events.write_metrics(rec, {"global_step": step, "epoch": 0, "loss": 0.1, "attempt": 1})
    events.write_preemption(rec, step=14, reason="notice", attempt=1)  # the trainer's own
    events.write_preemption(
        rec, attempt=1, source="ray", global_step=14, failure_kind="preemption", decision="RESTART"
    )
    events.write_attempt_start(rec, attempt=2, source="ray")
    events.write_metrics(rec, {"global_step": 20, "epoch": 1, "loss": 0.05, "attempt": 2})
    events.write_restore(rec, {}, step=10, attempt=2)
    record_state(rec, Succeeded(attempt=2, global_step=20))
    rep = collect_status(loc)
    assert (rep.state, rep.attempts, rep.preemptions, rep.failures) == ("SUCCEEDED", 2, 1, 0)
    assert rep.lost_steps == 4
    assert [(m.kind, m.detail) for m in rep.markers] == [
        ("preemption", "preemption"),
        ("restore", "step 10"),
    ]
