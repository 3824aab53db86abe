"""The private Ray 2.60 APIs spotrain relies on, in one place (imported only when Ray is used).

1. Ray Train V2's failure-policy classes, ``ray.train.v2._internal.execution.failure_handling``:
   ``FailurePolicy`` (constructed with a ``FailureConfig``; abstract ``make_decision(error)``)
   and ``FailureDecision`` (``RETRY`` / ``RAISE``). :mod:`cluster.ray.hooks` subclasses them.
2. ``DataParallelTrainer.fit()`` calls ``self._initialize_and_run_controller(**kwargs)`` with a
   ``failure_policy=`` keyword, which it passes on to ``TrainController(failure_policy=...)``.
   Ray Train has no public hook for a custom failure policy; :func:`install_failure_policy`
   wraps that call and swaps the keyword.
3. ``ray._raylet.GcsClient(address=...).drain_node(node_id, reason, reason_message,
   deadline_timestamp_ms)`` with ``ray.core.generated.autoscaler_pb2.DrainNodeReason``
   ``DRAIN_NODE_REASON_PREEMPTION``: what ``ray drain-node`` does, as a function
   (:func:`drain_node`). The driver drains its own node on SIGTERM; ``spotrain emulate``
   drains emulated nodes.
4. ``ray.train.v2._internal.util.TrainingFramework.TENSORFLOW``: the framework tag a backend
   config reports (Train's run state shows it); :func:`tensorflow_framework`, None where it
   is gone (the tag is informational).
5. ``FixedScalingPolicy`` (``ray.train.v2._internal.execution.scaling_policy.fixed``), which
   ``fit()`` passes as ``scaling_policy=`` to the same call: at the controller's start it
   registers the workers' resources with Ray Data's ``AutoscalingCoordinator`` actor through
   ``_send_resource_request`` (a ``ray.get``: the coordinator's process starts on the
   controller's critical path), and again through ``_maybe_send_resource_request``.
   :class:`cluster.ray.hooks.NoAutoscalerScalingPolicy` subclasses it for spotrain's embedded
   Ray, where nothing autoscales; :func:`install_failure_policy` swaps it in when given.

6. How Train V2 gives its workers a runtime env: the controller actor is created with
   ``{"env_vars": get_env_vars_to_propagate()}`` plus ``RAY_WARN_BLOCKING_GET_INSIDE_ASYNC``
   (``DataParallelTrainer._initialize_and_run_controller``), each worker with
   ``WorkerGroup._get_worker_runtime_env(run_config.worker_runtime_env)``; Ray's core worker
   merges a child's ``env_vars`` into its parent's (its other fields replace the parent's) and
   serializes the result as compact JSON with sorted keys. :func:`train_worker_runtime_env`
   predicts that string, so an embedded Ray's driver can prestart the training workers'
   processes (a raylet gives an idle worker only to a task or actor of the same serialized env)
   before the controller exists; ``tests/cluster/test_cold_start_prestart.py`` checks the
   prediction against real workers.
7. ``fit()`` passes the controller its default ``callbacks=``, among them Train's
   ``DatasetsCallback``, which starts a ``DatasetManager`` actor (a new Python process) at
   every worker-group start even when the trainer has no Ray Datasets. spotrain passes none:
   :func:`install_failure_policy` drops that callback for a trainer without datasets.
8. ``fit()``'s default callbacks also hold Train's ``PlacementGroupCleanerCallback``: at the
   controller's start it launches a detached ``PlacementGroupCleaner`` actor (one more Python
   process) that asks the state API once a second whether the controller lives, to remove the
   workers' placement group if it died ungracefully. An embedded Ray ends with its driver, so
   there is nothing to clean: :func:`install_failure_policy` drops that callback for it.
9. ``ray._private.node.Node.start_api_server``: a head node starts the dashboard's API server
   even with ``include_dashboard=False`` (then with no module but usage stats, so no state or
   job API), and ``ray.init`` waits for it to publish its URL (~1.2 s here, polling every
   0.1 s) before it starts the raylet. :func:`embedded_head` makes it a no-op while an
   embedded Ray starts: nothing of a run uses it.
10. ``Node.start_monitor``: a head node starts the autoscaler's monitor process (~0.4 CPU-s of
    Python start-up beside the training workers' own, on a fixed-size Ray with nothing to
    scale). :func:`embedded_head` skips it with item 9's API server.
11. ``ray._private.state.actors(actor_state_name="ALIVE")``: the GCS actor table with each
    actor's ``ActorClassName``; :func:`live_train_workers` counts Train's workers
    (``WorkerGroup._worker_cls``) in it. A driver SIGTERM'd before its workers live has
    nothing to wait for: its drained node takes no new workers.

:func:`check_hooks` verifies all but the fourth at run time and raises :class:`RayInternalsChanged`
naming what changed; ``tests/cluster/test_ray_internals.py`` pins them against the installed
Ray. No other module of ``cluster/`` touches Ray's private APIs (the trainer's one private Ray
hook is in ``trainer/ray_internals.py``, which defines the shared error type).
"""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import logging
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import ray

from trainer.ray_internals import TESTED_RAY, RayInternalsChanged, changed

if TYPE_CHECKING:
    from ray.train.v2._internal.execution.failure_handling import (
        FailurePolicy as RayFailurePolicy,
    )
    from ray.train.v2._internal.execution.failure_handling.failure_policy import FailureDecision
    from ray.train.v2._internal.execution.scaling_policy.fixed import FixedScalingPolicy

logger = logging.getLogger(__name__)

__all__ = [
    "FailureDecision",
    "FixedScalingPolicy",
    "RayFailurePolicy",
    "RayInternalsChanged",
    "check_hooks",
    "drain_node",
    "embedded_head",
    "import_train",
    "install_failure_policy",
    "live_train_workers",
    "tensorflow_framework",
    "train_worker_runtime_env",
]

#: Ray Train's classes above, imported on first use (:func:`import_train`): ``ray.train``'s
#: import (~0.5 s: Ray Data, pandas) need not come before an embedded Ray's start.
_TRAIN_CLASSES = {
    "RayFailurePolicy": ("ray.train.v2._internal.execution.failure_handling", "FailurePolicy"),
    "FailureDecision": (
        "ray.train.v2._internal.execution.failure_handling.failure_policy",
        "FailureDecision",
    ),
    "FixedScalingPolicy": (
        "ray.train.v2._internal.execution.scaling_policy.fixed",
        "FixedScalingPolicy",
    ),
    "WorkerGroup": ("ray.train.v2._internal.execution.worker_group.worker_group", "WorkerGroup"),
}


def __getattr__(name: str) -> Any:
    if name in _TRAIN_CLASSES:
        module, attr = _TRAIN_CLASSES[name]
        return getattr(importlib.import_module(module), attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def import_train() -> None:
    """Import what the hooks below use from Ray Train (e.g. on a thread while Ray starts)."""
    for module, _ in _TRAIN_CLASSES.values():
        importlib.import_module(module)
    importlib.import_module("ray.train.v2._internal.constants")


_checked = False


def _problems() -> list[str]:
    from ray.core.generated import autoscaler_pb2
    from ray.train.v2._internal.execution.controller.controller import TrainController
    from ray.train.v2.api.data_parallel_trainer import DataParallelTrainer

    RayFailurePolicy = __getattr__("RayFailurePolicy")
    FailureDecision = __getattr__("FailureDecision")
    FixedScalingPolicy = __getattr__("FixedScalingPolicy")
    WorkerGroup = __getattr__("WorkerGroup")
    problems = []
    if "make_decision" not in getattr(RayFailurePolicy, "__abstractmethods__", ()):
        problems.append("FailurePolicy.make_decision is no longer the abstract hook")
    if not {"RETRY", "RAISE"} <= {d.name for d in FailureDecision}:
        problems.append("FailureDecision lacks RETRY or RAISE")
    if not hasattr(DataParallelTrainer, "_initialize_and_run_controller"):
        problems.append("DataParallelTrainer._initialize_and_run_controller is gone")
    else:
        fit_src = inspect.getsource(DataParallelTrainer.fit)
        if "self._initialize_and_run_controller(" not in fit_src or (
            "failure_policy=" not in fit_src
        ):
            problems.append(
                "DataParallelTrainer.fit no longer passes failure_policy= to "
                "_initialize_and_run_controller"
            )
        if "callbacks=" not in fit_src:
            problems.append("DataParallelTrainer.fit no longer passes callbacks= to the controller")
        run_src = inspect.getsource(DataParallelTrainer._initialize_and_run_controller)
        if "get_env_vars_to_propagate()" not in run_src or _CONTROLLER_ENV_VAR not in run_src:
            problems.append("the Train controller's runtime env is no longer built as tested")
    if not callable(getattr(WorkerGroup, "_get_worker_runtime_env", None)):
        problems.append("WorkerGroup._get_worker_runtime_env is gone")
    try:
        from ray.train.v2._internal.callbacks.datasets import DatasetsCallback  # noqa: F401
        from ray.train.v2._internal.constants import get_env_vars_to_propagate  # noqa: F401
    except ImportError as exc:
        problems.append(f"Train's DatasetsCallback or get_env_vars_to_propagate is gone ({exc})")
    controller_params = inspect.signature(TrainController.__init__).parameters
    if "failure_policy" not in controller_params:
        problems.append("TrainController no longer takes failure_policy")
    if "scaling_policy" not in controller_params:
        problems.append("TrainController no longer takes scaling_policy")
    for hook in (
        "after_controller_start",
        "_send_resource_request",
        "_maybe_send_resource_request",
    ):
        if not callable(getattr(FixedScalingPolicy, hook, None)):
            problems.append(f"FixedScalingPolicy.{hook} is gone")
    drain = getattr(getattr(ray._raylet, "InnerGcsClient", None), "drain_node", None)
    if drain is None or not hasattr(ray._raylet, "GcsClient"):
        problems.append("ray._raylet.GcsClient.drain_node is gone")
    else:
        params = list(inspect.signature(drain).parameters)[1:5]
        if params != ["node_id", "reason", "reason_message", "deadline_timestamp_ms"]:
            problems.append(f"GcsClient.drain_node takes {params}")
    try:
        from ray.train.v2._internal.callbacks.placement_group_callback import (  # noqa: F401
            PlacementGroupCleanerCallback,
        )
    except ImportError as exc:
        problems.append(f"Train's PlacementGroupCleanerCallback is gone ({exc})")
    from ray._private.node import Node

    api_server = getattr(Node, "start_api_server", None)
    if (
        not callable(api_server)
        or "include_dashboard" not in inspect.signature(api_server).parameters
    ):
        problems.append("ray._private.node.Node.start_api_server(include_dashboard=...) is gone")
    head_src = inspect.getsource(Node.start_head_processes)
    for name in _SKIPPED_HEAD_PROCESSES:
        if not callable(getattr(Node, name, None)) or f"self.{name}(" not in head_src:
            problems.append(f"Node.start_head_processes no longer calls Node.{name} itself")
    actors = getattr(getattr(ray._private, "state", None), "actors", None)
    if not callable(actors) or "actor_state_name" not in inspect.signature(actors).parameters:
        problems.append("ray._private.state.actors(actor_state_name=...) is gone")
    if not isinstance(getattr(WorkerGroup, "_worker_cls", None), type):
        problems.append("WorkerGroup._worker_cls (Train's worker actor class) is gone")
    reasons = getattr(autoscaler_pb2, "DrainNodeReason", None)
    if reasons is None or "DRAIN_NODE_REASON_PREEMPTION" not in list(reasons.keys()):
        problems.append("autoscaler_pb2.DrainNodeReason lacks DRAIN_NODE_REASON_PREEMPTION")
    return problems


def check_hooks() -> None:
    """Raise :class:`RayInternalsChanged` naming each private Ray API that changed."""
    global _checked
    if _checked:
        return
    problems = _problems()
    if problems:
        raise changed(problems)
    _checked = True


def tensorflow_framework() -> Any:
    """Train's ``TrainingFramework.TENSORFLOW`` tag, or None in a Ray without it."""
    try:
        from ray.train.v2._internal.util import TrainingFramework
    except ImportError:
        return None
    return getattr(TrainingFramework, "TENSORFLOW", None)


def install_failure_policy(
    trainer: Any, policy: Any, scaling_policy: Any = None, embedded: bool = False
) -> bool:
    """Make ``trainer.fit()`` use ``policy`` instead of Ray Train's default failure policy (and
    ``scaling_policy``, when given, instead of its scaling policy); a trainer without Ray
    Datasets gets no ``DatasetsCallback`` (item 7), one on an ``embedded`` Ray no
    ``PlacementGroupCleanerCallback`` (item 8).

    Returns False (with a warning) for an object without the controller hook. Raises
    :class:`RayInternalsChanged` when the installed Ray changed the hook, and at ``fit()``
    when Ray stops passing ``failure_policy`` (or ``scaling_policy``) to it.
    """
    check_hooks()
    original = getattr(trainer, "_initialize_and_run_controller", None)
    if original is None:
        logger.warning(
            "this Ray version has no DataParallelTrainer._initialize_and_run_controller; user-code "
            "errors will be retried by Ray up to failures.max_failures times"
        )
        return False

    def run_with_policy(**kwargs: Any) -> Any:
        if "failure_policy" not in kwargs:
            raise RayInternalsChanged(
                f"Ray {ray.__version__} no longer passes failure_policy to "
                f"_initialize_and_run_controller (got {sorted(kwargs)}; tested with "
                f"{TESTED_RAY}): spotrain's failure policy cannot be installed. fix: pin "
                f"ray=={TESTED_RAY}.* or update cluster/ray/internals.py"
            )
        kwargs["failure_policy"] = policy
        if scaling_policy is not None:
            if "scaling_policy" not in kwargs:
                raise RayInternalsChanged(
                    f"Ray {ray.__version__} no longer passes scaling_policy to "
                    f"_initialize_and_run_controller (tested with {TESTED_RAY}). fix: pin "
                    f"ray=={TESTED_RAY}.* or update cluster/ray/internals.py"
                )
            kwargs["scaling_policy"] = scaling_policy
        if "callbacks" in kwargs and not getattr(trainer, "datasets", None):
            kwargs["callbacks"] = _without_datasets_callback(kwargs["callbacks"])
        if "callbacks" in kwargs and embedded:
            kwargs["callbacks"] = _without_placement_group_cleaner(kwargs["callbacks"])
        return original(**kwargs)

    trainer._initialize_and_run_controller = run_with_policy
    return True


def _without_datasets_callback(callbacks: list[Any]) -> list[Any]:
    """The controller's callbacks less Train's DatasetsCallback (item 7)."""
    from ray.train.v2._internal.callbacks.datasets import DatasetsCallback

    return [c for c in callbacks if not isinstance(c, DatasetsCallback)]


def _without_placement_group_cleaner(callbacks: list[Any]) -> list[Any]:
    """The controller's callbacks less Train's PlacementGroupCleanerCallback (item 8)."""
    from ray.train.v2._internal.callbacks.placement_group_callback import (
        PlacementGroupCleanerCallback,
    )

    return [c for c in callbacks if not isinstance(c, PlacementGroupCleanerCallback)]


#: What an embedded head does not start (items 9 and 10): ``Node`` methods, and why.
_SKIPPED_HEAD_PROCESSES = {
    "start_api_server": "no dashboard API server",
    "start_monitor": "no autoscaler monitor",
}


@contextlib.contextmanager
def embedded_head() -> Iterator[None]:
    """A head node started in this block starts no dashboard API server (item 9) and no
    autoscaler monitor (item 10)."""
    from ray._private.node import Node

    originals = {name: getattr(Node, name) for name in _SKIPPED_HEAD_PROCESSES}

    def skipping(why: str) -> Any:
        def skip(self: Any, *args: Any, **kwargs: Any) -> None:
            logger.debug("embedded Ray: %s", why)

        return skip

    for name, why in _SKIPPED_HEAD_PROCESSES.items():
        setattr(Node, name, skipping(why))
    try:
        yield
    finally:
        for name, original in originals.items():
            setattr(Node, name, original)


#: What ``_initialize_and_run_controller`` adds to the controller's env vars (item 6).
_CONTROLLER_ENV_VAR = "RAY_WARN_BLOCKING_GET_INSIDE_ASYNC"


def train_worker_runtime_env(job_runtime_env: dict[str, Any], worker_runtime_env: Any) -> str:
    """The serialized runtime env Ray Train V2's workers get, for a driver whose job runtime
    env is ``job_runtime_env`` and a ``RunConfig(worker_runtime_env=...)`` (item 6). Call it
    after the driver's environment is final: Train propagates some of its variables."""
    from ray._common.constants import RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR
    from ray.train.v2._internal.constants import (
        DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE,
        get_env_vars_to_propagate,
    )

    controller_env = get_env_vars_to_propagate()
    controller_env.setdefault(
        RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_ENV_VAR, DEFAULT_RAY_WARN_BLOCKING_GET_INSIDE_ASYNC_VALUE
    )
    controller = _inherit(dict(job_runtime_env), {"env_vars": controller_env})
    worker_group = __getattr__("WorkerGroup")
    worker = _inherit(
        controller, dict(worker_group._get_worker_runtime_env(worker_runtime_env or {}))
    )
    return json.dumps(worker, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def _inherit(parent: dict[str, Any], child: dict[str, Any]) -> dict[str, Any]:
    """A child task's or actor's runtime env as Ray's core worker derives it from its parent's."""
    merged = {**parent, **{k: v for k, v in child.items() if k != "env_vars"}}
    env_vars = {**parent.get("env_vars", {}), **child.get("env_vars", {})}
    if env_vars:
        merged["env_vars"] = env_vars
    return merged


def drain_node(gcs_address: str, node_id: str, deadline_s: float, message: str) -> tuple[bool, str]:
    """Drain ``node_id`` with reason PREEMPTION and a deadline ``deadline_s`` from now.

    Returns (accepted, why rejected), as Ray does.
    """
    from ray.core.generated import autoscaler_pb2

    check_hooks()
    gcs: Any = ray._raylet.GcsClient(address=gcs_address)  # type: ignore[attr-defined]
    reasons: Any = autoscaler_pb2.DrainNodeReason  # type: ignore[attr-defined]
    accepted, why = gcs.drain_node(
        node_id,
        reasons.Value("DRAIN_NODE_REASON_PREEMPTION"),
        message,
        int((time.time() + deadline_s) * 1000),
    )
    return bool(accepted), str(why)


def live_train_workers() -> int:
    """How many Ray Train workers are alive in the connected Ray (one GCS call)."""
    import ray._private.state

    check_hooks()
    name = __getattr__("WorkerGroup")._worker_cls.__name__
    alive = ray._private.state.actors(actor_state_name="ALIVE").values()
    return sum(actor.get("ActorClassName") == name for actor in alive)
