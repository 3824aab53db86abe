"""Failure classification and RESTART / RAISE decisions within per-kind budgets."""

from __future__ import annotations

import logging
import random

import pytest

from cluster.errors import SpecError
from cluster.failure_policy import (
    Decision,
    FailureKind,
    FailurePolicy,
    FailurePolicyOptions,
    classify,
)
from storage.errors import PermanentStorageError, TransientStorageError
from trainer.errors import PreemptedError, UserCodeError


class RayActorError(Exception):
    """Stands in for ray.exceptions.RayActorError (classification is by class name)."""

    preempted = False


class UserExceptionWithTraceback(Exception):
    def __init__(self, exc: BaseException, tb: str) -> None:
        super().__init__(tb)
        self._base_exc = exc
        self._traceback_str = tb


class WorkerGroupError(Exception):
    def __init__(self, failures: dict[int, BaseException]) -> None:
        super().__init__("Training failed due to worker errors")
        self.worker_failures = failures


class PreemptionError(Exception):
    pass


def wrap(exc: BaseException, tb: str = "Traceback: in worker") -> UserExceptionWithTraceback:
    return UserExceptionWithTraceback(exc, tb)


def test_classify_user_code_inside_ray_wrappers_keeps_the_traceback() -> None:
    err = UserCodeError(
        "build_model", "ZeroDivisionError('x')", "Traceback (most recent call last):\n  user.py"
    )
    c = classify(WorkerGroupError({0: wrap(err), 1: wrap(err)}))
    assert c.kind is FailureKind.USER_CODE
    assert "user.py" in c.user_traceback
    assert c.message.startswith("rank 0:")


def test_preemption_and_lost_worker_win_over_collateral_errors() -> None:
    collateral = wrap(RuntimeError("collective aborted"))
    assert (
        classify(WorkerGroupError({0: collateral, 1: RayActorError("died")})).kind
        is FailureKind.LOST
    )
    pre = RayActorError("reclaimed")
    pre.preempted = True
    assert classify(WorkerGroupError({0: collateral, 1: pre})).kind is FailureKind.PREEMPTION
    assert classify(WorkerGroupError({0: wrap(PreemptedError(40))})).kind is FailureKind.PREEMPTION
    assert classify(PreemptionError("drained")).kind is FailureKind.PREEMPTION
    # a user error on one rank while another rank died: the death wins (retry, then see)
    user = wrap(UserCodeError("fit", "boom"))
    assert classify(WorkerGroupError({0: user, 1: RayActorError()})).kind is FailureKind.LOST


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (TransientStorageError("503"), FailureKind.STORAGE_TRANSIENT),
        (PermanentStorageError("403"), FailureKind.STORAGE_PERMANENT),
        (SpecError("epochs", 0, "allowed: >= 1"), FailureKind.SPEC),
        (ValueError("???"), FailureKind.INTERNAL),
    ],
)
def test_classify_driver_side_errors(exc: BaseException, kind: FailureKind) -> None:
    assert classify(exc).kind is kind


def test_budgets_are_separate_and_user_errors_never_restart(
    caplog: pytest.LogCaptureFixture,
) -> None:
    policy = FailurePolicy(
        FailurePolicyOptions(
            max_preemptions=-1, max_failures=1, max_storage_failures=0, backoff_s=0
        ),
    )
    caplog.set_level(logging.INFO, logger="cluster.failure_policy")
    for _ in range(5):
        assert policy.decide(PreemptionError()).decision is Decision.RESTART
    v = policy.decide(RayActorError())
    assert v.restart and v.budget == "failures 1/1"
    v = policy.decide(RayActorError())
    assert v.decision is Decision.RAISE and "spent" in v.budget
    assert policy.decide(TransientStorageError("x")).decision is Decision.RAISE
    v = policy.decide(UserCodeError("build_model", "boom"))
    assert v.decision is Decision.RAISE and v.budget.startswith("none")
    assert policy.counts == {"preemptions": 5, "failures": 2, "storage": 1}
    text = caplog.text
    assert "RESTART after preemption failure (budget preemptions 5/unlimited" in text
    assert "RAISE after user_code failure" in text


def test_backoff_doubles_is_capped_jittered_and_reset_by_progress() -> None:
    opts = FailurePolicyOptions(max_failures=-1, backoff_s=1.0, backoff_max_s=4.0, jitter=0.2)
    policy = FailurePolicy(opts, rng=random.Random(0))
    delays = [policy.decide(RayActorError()).backoff_s for _ in range(5)]
    for d, nominal in zip(delays, [1, 2, 4, 4, 4], strict=True):
        assert nominal * 0.8 <= d <= nominal * 1.2
    policy.record_progress()
    assert policy.decide(RayActorError()).backoff_s <= 1.2
    assert FailurePolicy(FailurePolicyOptions(backoff_s=0)).backoff_s() == 0.0
