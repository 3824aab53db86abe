"""spotrain's failure policy inside Ray Train's controller, fed Ray's own exception types
(no Ray cluster is started)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray.train.v2")

from ray.train import FailureConfig
from ray.train.v2._internal.exceptions import UserExceptionWithTraceback
from ray.train.v2._internal.execution.failure_handling.failure_policy import (
    FailureDecision,
)
from ray.train.v2.api.exceptions import PreemptionError, WorkerGroupError
from ray.train.v2.api.preemption import PreemptionInfo

from cluster.failure_policy import FailurePolicyOptions
from cluster.ray.hooks import _LAST_REPORT, MetricsEventCallback, SpotrainRayFailurePolicy
from cluster.ray.internals import install_failure_policy
from storage.location import RunLocation
from storage.run_record import RunRecord
from trainer.errors import PreemptedError, UserCodeError


def policy(url: str, **opts: int) -> SpotrainRayFailurePolicy:
    return SpotrainRayFailurePolicy(
        FailureConfig(max_failures=3),
        location=RunLocation.from_url(url),
        options=FailurePolicyOptions(backoff_s=0, **opts),
        counts={"preemptions": 0, "failures": 0, "storage": 0},
        attempt=1,
    )


def test_user_code_error_raises_at_once_with_traceback(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/run"
    err = UserCodeError("build_model", "ZeroDivisionError()", "Traceback...\n  File buggy.py")
    wrapped = UserExceptionWithTraceback(err, traceback_str="worker traceback")
    decision = policy(url).make_decision(WorkerGroupError("x", {0: wrapped}))
    assert decision is FailureDecision.RAISE
    (ev,) = RunRecord(url).events(kinds=["failure"])
    assert ev.payload["failure_kind"] == "user_code" and ev.payload["decision"] == "RAISE"
    assert "buggy.py" in ev.payload["user_traceback"]


def test_preemptions_retry_and_count_attempts(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/run"
    _LAST_REPORT[url] = {"global_step": 42, "last_committed_step": 40}
    p = policy(url, max_failures=0)
    info = PreemptionInfo(deadline_ms=None, preempted_node_to_ranks={"n": [1]})
    assert p.make_decision(PreemptionError(info)) is FailureDecision.RETRY
    wrapped = UserExceptionWithTraceback(PreemptedError(40), traceback_str="")
    assert p.make_decision(WorkerGroupError("x", {0: wrapped})) is FailureDecision.RETRY
    assert p.make_decision(WorkerGroupError("x", {0: RuntimeError("?")})) is FailureDecision.RAISE
    rec = RunRecord(url)
    pre = rec.events(kinds=["preemption"])
    assert [e.payload["global_step"] for e in pre] == [42, 42]
    assert [e.payload["attempt"] for e in rec.events(kinds=["attempt_start"])] == [2, 3]


def test_metrics_callback_writes_per_epoch(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/run"
    cb = MetricsEventCallback(RunLocation.from_url(url), attempt=2, interval_s=3600)
    for step, epoch in ((10, 0), (20, 0), (23, 1)):
        cb.after_report(None, [{"global_step": step, "epoch": epoch, "loss": 1.0, "x": [1]}], None)
    evs = RunRecord(url).events(kinds=["metrics"])
    assert [(e.payload["global_step"], e.payload["attempt"]) for e in evs] == [(10, 2), (23, 2)]
    assert "x" not in evs[0].payload


def test_install_replaces_the_policy() -> None:
    calls = {}

    class Trainer:
        def _initialize_and_run_controller(self, **kw: object) -> str:
            calls.update(kw)
            return "ok"

    t = Trainer()
    sentinel = object()
    assert install_failure_policy(t, sentinel)  # type: ignore[arg-type]
    assert t._initialize_and_run_controller(failure_policy="default", other=1) == "ok"
    assert calls == {"failure_policy": sentinel, "other": 1}
    assert not install_failure_policy(object(), sentinel)  # type: ignore[arg-type]


def test_no_restart_while_the_driver_is_stopping(tmp_path: Path) -> None:
    url = f"file://{tmp_path}/run"
    rec = RunRecord(url)
    rec.append_event("attempt_start", attempt=1, source="driver")
    rec.append_event("stop_requested", attempt=1, source="driver_sigterm")
    wrapped = UserExceptionWithTraceback(PreemptedError(30), traceback_str="")
    assert policy(url).make_decision(WorkerGroupError("x", {0: wrapped})) is FailureDecision.RAISE
    assert not rec.events(kinds=["attempt_start"])[1:]
    (ev,) = rec.events(kinds=["preemption"])
    assert ev.payload["decision"] == "STOP"


def test_hooks_pickle_with_their_location(tmp_path: Path) -> None:
    """Both are built in the driver and pickled to Ray's controller, location included."""
    import cloudpickle

    url = f"file://{tmp_path}/run"
    cb = cloudpickle.loads(
        cloudpickle.dumps(MetricsEventCallback(RunLocation.from_url(url), interval_s=0))
    )
    cb.after_report(None, [{"global_step": 3, "epoch": 0}], None)
    p = cloudpickle.loads(cloudpickle.dumps(policy(url)))
    assert p.record.loc.url == url
    err = UserCodeError("fit", "bug")
    wrapped = UserExceptionWithTraceback(err, traceback_str="")
    assert p.make_decision(WorkerGroupError("x", {0: wrapped})) is FailureDecision.RAISE
    rec = RunRecord(url)
    assert [e.kind for e in rec.events(kinds=["metrics", "failure"])] == ["metrics", "failure"]
