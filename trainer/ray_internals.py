"""The private Ray 2.60 API the trainer relies on, in one place.

1. ``ray.train.v2._internal.execution.train_fn_utils.get_train_fn_utils()`` (no arguments)
   returns the Train function utilities inside a Ray Train V2 worker and raises elsewhere: it
   tells whether this process is a Ray Train worker, with no side effect. (The public
   ``ray.train.get_context()`` is only meant to be called inside one.)
2. ``ray.train.v2._internal.execution.context.get_train_context()`` (no arguments) returns this
   worker's internal ``TrainContext``, whose ``preemption_context.preemption_info`` the worker
   actor's main thread sets (``RayTrainWorker.mark_preempt``) when a drain of a node of the
   group is seen. ``ray.train.get_preemption_info()`` broadcasts rank 0's copy of it (a barrier
   every rank must call equally often); :func:`local_preemption_info` reads this worker's own
   copy without a barrier, so a thread beside the step loop can watch it at any moment.
3. The raylet's ``NodeManagerService.PrestartWorkers`` gRPC call
   (``ray.core.generated.node_manager_pb2.PrestartWorkersRequest``: ``language``, ``job_id``,
   ``runtime_env_info``, ``keep_alive_duration_secs``, ``num_workers``), at the node's
   ``NodeManagerAddress:NodeManagerPort`` from ``ray.nodes()``: it starts idle Python workers
   for a job in a runtime env (``RuntimeEnvInfo.serialized_runtime_env``, here this worker's own
   ``get_runtime_env_string()``, so the hash matches the next worker group's) and keeps them
   alive that long even above ``num_workers_soft_limit``. Ray uses it inside its core worker;
   Python has no public call for it. :func:`prestart_workers` (seen on Ray 2.60: a new actor in
   that runtime env took such a worker, started seconds before, instead of a new process).
   The channel comes from ``ray._private.grpc_utils.init_grpc_channel(address)``, which adds
   the cluster's auth token (Ray 2.60 turns token auth on by default for a local cluster; a
   plain channel gets ``UNAUTHENTICATED``) and TLS where ``RAY_USE_TLS`` is set, as Ray's own
   clients do.
4. The GCS key-value store (``ray.experimental.internal_kv``: ``_internal_kv_put``,
   ``_internal_kv_list``, ``_internal_kv_get``, with a ``namespace``): each training worker
   publishes its job id and runtime env string under its node id
   (:func:`publish_worker_env`), so the driver can ask raylets of nodes without a training
   worker (one that just joined) for spares in the same env (:func:`published_worker_envs`).
5. ``ray._private.state.state.get_draining_nodes()`` (what Ray Train's own
   ``PreemptionWatcher`` polls, from one more actor process per worker group): the nodes being
   drained, ``{node_id_hex: deadline_ms}`` (0: no deadline), one GCS call. Each training worker
   reads it for its own node (:func:`own_node_drain`) from its notice watcher's thread, so
   spotrain turns Ray's watcher off (``RAY_TRAIN_ENABLE_PREEMPTION_WATCHER=0``) and a worker
   group starts one process fewer.

:func:`check_hooks` verifies it at run time and raises :class:`RayInternalsChanged` if Ray
changed (a worker that took itself for a single local worker would train alone, silently);
``tests/cluster/test_ray_internals.py`` pins it against the installed Ray. The cluster's own
private Ray hooks are in ``cluster/ray/internals.py``, which shares this error type.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage.errors import SpotrainError

#: The logger of Ray's "Token authentication is enabled for this Ray cluster" banner (printed on
#: every embedded start by Ray 2.60); ``spotrain run`` shows it with ``-v`` only.
RAY_TOKEN_BANNER_LOGGER = "ray._private.authentication.authentication_token_setup"

TESTED_RAY = "2.60"
TRAIN_FN_UTILS_MODULE = "ray.train.v2._internal.execution.train_fn_utils"
TRAIN_CONTEXT_MODULE = "ray.train.v2._internal.execution.context"


class RayInternalsChanged(SpotrainError):
    """The installed Ray lacks a private API spotrain relies on; retrying cannot help."""

    retryable = False


def changed(problems: list[str]) -> RayInternalsChanged:
    """The error naming each private Ray API that changed, and the fix."""
    import ray

    return RayInternalsChanged(
        f"Ray {ray.__version__} changed private APIs spotrain relies on (tested with "
        f"{TESTED_RAY}): {'; '.join(problems)}. fix: pin ray=={TESTED_RAY}.* or update "
        "the spotrain module that names it (cluster/ray/internals.py, trainer/ray_internals.py)"
    )


def _no_arg_getter(module_name: str, name: str) -> tuple[Any, Callable[[], Any]]:
    """``module_name.name``, a function that takes no arguments, and its module."""
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise changed([f"{module_name} is gone ({exc})"]) from None
    get = getattr(module, name, None)
    if get is None or inspect.signature(get).parameters:
        raise changed([f"{module_name}.{name}() is gone or takes arguments"])
    return module, get


def _get_train_fn_utils() -> Callable[[], Any]:
    return _no_arg_getter(TRAIN_FN_UTILS_MODULE, "get_train_fn_utils")[1]


def _get_train_context() -> Callable[[], Any]:
    module, get = _no_arg_getter(TRAIN_CONTEXT_MODULE, "get_train_context")
    fields = getattr(getattr(module, "TrainContext", None), "__dataclass_fields__", {})
    if "preemption_context" not in fields:
        raise changed([f"{TRAIN_CONTEXT_MODULE}.TrainContext has no preemption_context"])
    return get


def _prestart_request_type() -> Any:
    from ray.core.generated import node_manager_pb2

    request = getattr(node_manager_pb2, "PrestartWorkersRequest", None)
    wanted = {"language", "job_id", "runtime_env_info", "keep_alive_duration_secs", "num_workers"}
    if request is None or not wanted <= set(request.DESCRIPTOR.fields_by_name):
        raise changed(["node_manager_pb2.PrestartWorkersRequest is gone or lacks fields"])
    return request


def _grpc_channel() -> Callable[[str], Any]:
    try:
        from ray._private.grpc_utils import init_grpc_channel
    except ImportError as exc:
        raise changed([f"ray._private.grpc_utils.init_grpc_channel is gone ({exc})"]) from None
    return init_grpc_channel


def _internal_kv() -> Any:
    try:
        from ray.experimental import internal_kv
    except ImportError as exc:
        raise changed([f"ray.experimental.internal_kv is gone ({exc})"]) from None
    missing = [
        f"ray.experimental.internal_kv.{name}"
        for name in ("_internal_kv_put", "_internal_kv_list", "_internal_kv_get")
        if not callable(getattr(internal_kv, name, None))
    ]
    if missing:
        raise changed([f"{name} is gone" for name in missing])
    return internal_kv


@functools.cache  # read 4 times a second per worker: look it up and check it once
def _draining_nodes() -> Callable[[], dict[str, int]]:
    try:
        from ray._private.state import state
    except ImportError as exc:
        raise changed([f"ray._private.state.state is gone ({exc})"]) from None
    get = getattr(state, "get_draining_nodes", None)
    if get is None or inspect.signature(get).parameters:
        raise changed(["ray._private.state.state.get_draining_nodes() is gone or takes arguments"])
    return get


def check_hooks() -> None:
    """Raise :class:`RayInternalsChanged` if one of the trainer's private Ray hooks changed."""
    _get_train_fn_utils()
    _get_train_context()
    _prestart_request_type()
    _grpc_channel()
    _internal_kv()
    _draining_nodes()


def own_node_drain() -> str | None:
    """This process's node being drained (item 5): a text naming the node and its deadline,
    the same for every read of one drain; None when it is not draining."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    deadline_ms = _draining_nodes()().get(node_id)
    if deadline_ms is None:
        return None
    return f"node {node_id} is being drained (deadline_ms={deadline_ms or None})"


#: The GCS key-value namespace of the training workers' published envs (item 4).
WORKER_ENV_NAMESPACE = "spotrain-worker-env"


@dataclass(frozen=True)
class WorkerEnv:
    """The job and runtime env a spare must have for a training worker to take it."""

    job_id: str  # hex
    runtime_env: str  # the serialized runtime env, exactly as the worker's own


def publish_worker_env() -> None:
    """Record this worker's :class:`WorkerEnv` under its node id (item 4)."""
    import ray

    ctx = ray.get_runtime_context()
    value = json.dumps({"job_id": ctx.get_job_id(), "runtime_env": ctx.get_runtime_env_string()})
    key = f"{ctx.get_job_id()}/{ctx.get_node_id()}"
    _internal_kv()._internal_kv_put(key, value, overwrite=True, namespace=WORKER_ENV_NAMESPACE)


def published_worker_envs(job_id: str) -> dict[str, WorkerEnv]:
    """Node id -> the :class:`WorkerEnv` a training worker of job ``job_id`` published there."""
    kv = _internal_kv()
    found: dict[str, WorkerEnv] = {}
    for key in kv._internal_kv_list(f"{job_id}/", namespace=WORKER_ENV_NAMESPACE):
        raw = kv._internal_kv_get(key, namespace=WORKER_ENV_NAMESPACE)
        if raw:
            node_id = key.decode().split("/", 1)[1]
            found[node_id] = WorkerEnv(**json.loads(raw))
    return found


def prestart_workers(
    count: int, keep_alive_s: float, node_id: str | None = None, env: WorkerEnv | None = None
) -> None:
    """Ask the raylet of ``node_id`` (default: this worker's node) to start ``count`` idle Python
    workers in ``env`` (default: this process's job and runtime env), kept alive
    ``keep_alive_s`` while idle. Raises on an RPC error (the caller decides whether that
    matters)."""
    import ray
    from ray.core.generated import common_pb2, node_manager_pb2_grpc, runtime_environment_pb2

    request_type = _prestart_request_type()
    ctx = ray.get_runtime_context()
    env = env or WorkerEnv(ctx.get_job_id(), ctx.get_runtime_env_string())
    wanted = node_id or ctx.get_node_id()
    node = next((n for n in ray.nodes() if n["NodeID"] == wanted and n["Alive"]), None)
    if node is None:
        raise RuntimeError(f"node {wanted} is not alive")
    protos: Any = (common_pb2, runtime_environment_pb2)  # generated; no stubs for mypy
    request = request_type(
        language=protos[0].PYTHON,
        job_id=bytes.fromhex(env.job_id),
        runtime_env_info=protos[1].RuntimeEnvInfo(serialized_runtime_env=env.runtime_env),
        keep_alive_duration_secs=int(keep_alive_s),
        num_workers=count,
    )
    address = f"{node['NodeManagerAddress']}:{node['NodeManagerPort']}"
    with _grpc_channel()(address) as channel:
        node_manager_pb2_grpc.NodeManagerServiceStub(channel).PrestartWorkers(request, timeout=10)


def local_preemption_info() -> Any:
    """This Ray Train worker's own copy of the preemption notice (a ``PreemptionInfo``), or
    None; no barrier, callable from any thread of the worker."""
    context = _get_train_context()()
    return getattr(context.preemption_context, "preemption_info", None)


def in_ray_train_worker() -> bool:
    """True inside a Ray Train V2 worker; False elsewhere, and where Ray is not installed."""
    try:
        import ray.train  # noqa: F401
    except ImportError:  # no Ray: a single local worker
        return False
    get = _get_train_fn_utils()
    try:
        get()
    except Exception:  # raised outside a Ray Train worker: a single local worker
        return False
    return True
