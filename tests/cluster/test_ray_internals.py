"""The private Ray APIs spotrain relies on, checked against the installed Ray (no Ray cluster
is started): if Ray changes one, these tests and the run-time checks fail loudly."""

from __future__ import annotations

import asyncio
import inspect
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("ray.train.v2")

import ray
import ray.train
import ray.train.v2.api.data_parallel_trainer as dpt
from ray.train.v2._internal.execution.controller.controller import TrainController
from ray.train.v2._internal.execution.scaling_policy.scaling_policy import (
    NoopDecision,
    ResizeDecision,
)

from cluster.ray import internals
from cluster.ray.hooks import NoAutoscalerScalingPolicy
from cluster.ray.internals import RayInternalsChanged, check_hooks, install_failure_policy
from trainer import ray_internals as trainer_internals

REPO = Path(__file__).resolve().parents[2]


def test_every_private_hook_is_there_on_the_installed_ray() -> None:
    assert internals._problems() == []
    check_hooks()
    trainer_internals.check_hooks()
    assert not trainer_internals.in_ray_train_worker()  # this test process is no Train worker


def test_the_failure_policy_reaches_the_real_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Real ``DataParallelTrainer.fit()``; only the controller actor's start is replaced."""
    seen: dict[str, Any] = {}

    class Result:
        error = None

    def start_controller(self: Any, **kwargs: Any) -> Result:
        seen.update(kwargs)
        return Result()

    monkeypatch.setattr(dpt.DataParallelTrainer, "_initialize_and_run_controller", start_controller)
    monkeypatch.setattr(dpt, "ObjectRefWrapper", lambda fn: fn)  # ray.put needs a running Ray
    trainer = dpt.DataParallelTrainer(
        lambda: None,
        scaling_config=ray.train.ScalingConfig(num_workers=1),
        run_config=ray.train.RunConfig(name="spotrain-hook-test"),
    )
    policy = object()
    assert install_failure_policy(trainer, policy)
    trainer.fit()
    assert seen["failure_policy"] is policy
    inspect.signature(TrainController.__init__).bind(None, **seen)  # the controller takes them
    assert not ray.is_initialized()


def _controller_callbacks(
    monkeypatch: pytest.MonkeyPatch, variants: list[tuple[dict[str, Any], bool]]
) -> list[list[Any]]:
    """The callbacks real ``DataParallelTrainer.fit()`` hands the controller, per (datasets,
    embedded) variant, with spotrain's policy installed; only the controller's start is
    replaced."""
    seen: list[list[Any]] = []

    class Result:
        error = None

    def start_controller(self: Any, **kwargs: Any) -> Result:
        seen.append(kwargs["callbacks"])
        return Result()

    monkeypatch.setattr(dpt.DataParallelTrainer, "_initialize_and_run_controller", start_controller)
    monkeypatch.setattr(dpt, "ObjectRefWrapper", lambda fn: fn)
    for datasets, embedded in variants:
        trainer = dpt.DataParallelTrainer(
            lambda: None,
            scaling_config=ray.train.ScalingConfig(num_workers=1),
            run_config=ray.train.RunConfig(name="spotrain-hook-test"),
        )
        trainer.datasets = datasets  # a real Dataset needs a running Ray; the check is truthiness
        assert install_failure_policy(trainer, object(), embedded=embedded)
        trainer.fit()
    assert not ray.is_initialized()
    return seen


def test_a_trainer_without_datasets_starts_no_dataset_manager(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Train's DatasetsCallback (a DatasetManager actor at each worker-group start) is dropped
    for a trainer without Ray Datasets, and kept for one with them; the other default
    callbacks stay."""
    from ray.train.v2._internal.callbacks import BackendSetupCallback
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    without, with_datasets = _controller_callbacks(
        monkeypatch, [({}, False), ({"train": object()}, False)]
    )
    assert not any(isinstance(c, DatasetsCallback) for c in without)
    assert any(isinstance(c, BackendSetupCallback) for c in without)
    assert sum(isinstance(c, DatasetsCallback) for c in with_datasets) == 1
    assert len(with_datasets) == len(without) + 1


def test_an_embedded_ray_starts_no_placement_group_cleaner(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Train's PlacementGroupCleanerCallback (a detached actor polling the state API every
    second) is dropped for an embedded Ray, which ends with its driver, and kept on a joined
    cluster; the other default callbacks stay."""
    from ray.train.v2._internal.callbacks import BackendSetupCallback
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    embedded, joined = _controller_callbacks(monkeypatch, [({}, True), ({}, False)])
    assert not any(isinstance(c, PlacementGroupCleanerCallback) for c in embedded)
    assert any(isinstance(c, BackendSetupCallback) for c in embedded)
    assert sum(isinstance(c, PlacementGroupCleanerCallback) for c in joined) == 1
    assert len(joined) == len(embedded) + 1


def test_an_embedded_head_skips_the_api_server_and_the_monitor_and_puts_them_back() -> None:
    """``embedded_head`` replaces the very methods ``Node.start_head_processes`` calls (the
    start itself is tested by every embedded run: ``tests/cluster/test_cold_start_prestart.py``
    checks that neither process runs)."""
    from ray._private.node import Node

    originals = {name: getattr(Node, name) for name in ("start_api_server", "start_monitor")}
    with internals.embedded_head():
        assert Node.start_api_server is not originals["start_api_server"]
        assert Node.start_monitor is not originals["start_monitor"]
        assert (
            Node.start_api_server(object(), include_dashboard=False, raise_on_failure=True) is None
        )
        assert Node.start_monitor(object()) is None
    for name, original in originals.items():
        assert getattr(Node, name) is original
        assert f"self.{name}(" in inspect.getsource(Node.start_head_processes)


def test_ray_train_is_imported_only_when_its_classes_are_used() -> None:
    """The module imports without Ray Train (an embedded Ray starts while it imports); its
    classes resolve on first use, and a misspelt name is an AttributeError."""
    code = (
        "import sys; import cluster.ray.internals as i; "
        "assert 'ray.train' not in sys.modules, 'imported ray.train'; "
        "from ray.train.v2._internal.execution.failure_handling import FailurePolicy; "
        "assert i.RayFailurePolicy is FailurePolicy; "
        "assert not hasattr(i, 'NoSuchClass')"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_the_predicted_worker_env_merges_as_rays_core_worker_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The rule alone (the real workers' env is checked in test_cold_start_prestart.py): the
    job's env vars, the controller's (Train's propagated settings), the worker's own (which win),
    as compact JSON with sorted keys; fields other than env_vars come from the nearest env."""
    import json

    from ray.train.v2._internal.constants import ENV_VARS_TO_PROPAGATE

    for name in ENV_VARS_TO_PROPAGATE:  # other tests' drivers set some of them
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    job = {"env_vars": {"A": "job", "B": "job"}, "working_dir": "/w"}
    text = internals.train_worker_runtime_env(job, {"env_vars": {"B": "worker", "C": "c"}})
    assert json.loads(text) == {
        "env_vars": {
            "A": "job",
            "B": "worker",
            "C": "c",
            "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
            "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC": "0",
        },
        "working_dir": "/w",
    }
    assert text.startswith('{"env_vars":{"A":"job","B":"worker","C":"c","RAY_TRAIN')


def test_the_scaling_policy_reaches_the_real_controller(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}

    class Result:
        error = None

    def start_controller(self: Any, **kwargs: Any) -> Result:
        seen.update(kwargs)
        return Result()

    monkeypatch.setattr(dpt.DataParallelTrainer, "_initialize_and_run_controller", start_controller)
    monkeypatch.setattr(dpt, "ObjectRefWrapper", lambda fn: fn)
    scaling = ray.train.ScalingConfig(num_workers=2)
    trainer = dpt.DataParallelTrainer(
        lambda: None, scaling_config=scaling, run_config=ray.train.RunConfig(name="spotrain-hook")
    )
    fixed = NoAutoscalerScalingPolicy(scaling)
    assert install_failure_policy(trainer, object(), fixed)
    trainer.fit()
    assert seen["scaling_policy"] is fixed
    inspect.signature(TrainController.__init__).bind(None, **seen)


def test_the_no_autoscaler_policy_asks_for_its_workers_and_sends_no_request() -> None:
    """Each controller hook of Ray's fixed policy runs; none reaches the AutoscalingCoordinator
    (Ray's own would create that actor, and start a Ray here, at its first request)."""
    policy = NoAutoscalerScalingPolicy(ray.train.ScalingConfig(num_workers=2))
    policy.after_controller_start(None)
    decision = policy.make_decision_for_non_running_worker_group()
    assert isinstance(decision, ResizeDecision) and decision.num_workers == 2
    assert isinstance(policy.make_decision_for_running_worker_group(None, None), NoopDecision)  # type: ignore[arg-type]
    asyncio.run(policy.before_controller_shutdown())
    policy.before_controller_abort()
    assert not ray.is_initialized()


def test_a_ray_that_stops_passing_scaling_policy_fails_loudly() -> None:
    class Trainer:
        def _initialize_and_run_controller(self, **kwargs: Any) -> str:
            return "ran with Ray's own scaling policy"

    trainer = Trainer()
    assert install_failure_policy(trainer, object(), object())
    with pytest.raises(RayInternalsChanged, match="no longer passes scaling_policy"):
        trainer._initialize_and_run_controller(failure_policy=None)


def test_a_ray_that_stops_passing_failure_policy_fails_loudly() -> None:
    class Trainer:
        def _initialize_and_run_controller(self, **kwargs: Any) -> str:
            return "ran with Ray's own policy"

    trainer = Trainer()
    assert install_failure_policy(trainer, object())
    with pytest.raises(RayInternalsChanged, match="no longer passes failure_policy"):
        trainer._initialize_and_run_controller(scaling_policy=None)


def test_a_changed_controller_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    def init(self: Any, train_fn_ref: Any, train_run_context: Any) -> None: ...

    monkeypatch.setattr(TrainController, "__init__", init)
    monkeypatch.setattr(internals, "_checked", False)
    with pytest.raises(RayInternalsChanged, match="TrainController no longer takes failure_policy"):
        check_hooks()
    with pytest.raises(RayInternalsChanged, match=r"fix: pin ray==2\.60"):
        install_failure_policy(object(), object())


def test_a_gone_train_fn_utils_fails_loudly_in_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(trainer_internals, "TRAIN_FN_UTILS_MODULE", "ray.train.v2._gone")
    with pytest.raises(RayInternalsChanged, match=r"ray\.train\.v2\._gone is gone"):
        trainer_internals.in_ray_train_worker()
