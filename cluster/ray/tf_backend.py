"""TensorFlow's set-up in Ray Train's worker group, without TensorFlow in the driver.

Ray's ``ray.train.tensorflow.TensorflowConfig`` gives every worker ``TF_CONFIG`` (the addresses
of all workers, this worker's index), which MultiWorkerMirroredStrategy reads. Importing it
imports TensorFlow in the driver (the package ``ray.train.tensorflow`` does at import): 2.6-5 s
of a cold start spent in a process that never runs TensorFlow. :class:`TensorflowSetup` sets the
same ``TF_CONFIG`` the same way, and the driver gives it to Train V2's ``DataParallelTrainer``
(Train V2's ``TensorflowTrainer`` is that trainer with Ray's config, and imports it in its
``__init__``), so nothing in the driver imports TensorFlow.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass
from typing import Any

from ray.train.backend import Backend, BackendConfig

from cluster.ray.internals import tensorflow_framework


@dataclass
class TensorflowSetup(BackendConfig):
    """The backend config of spotrain's trainer (see the module docstring)."""

    @property
    def backend_cls(self) -> type[Backend]:
        return _TensorflowBackend

    @property
    def framework(self) -> Any:
        return tensorflow_framework()

    def to_dict(self) -> dict[str, Any]:
        return {}


def worker_address() -> str:
    """This worker's ``host:port``, with a port free now (the strategy's server binds it)."""
    import ray

    host = ray.util.get_node_ip_address()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        port = s.getsockname()[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def set_tf_config(worker_addresses: list[str], index: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": worker_addresses}, "task": {"type": "worker", "index": index}}
    )
    os.environ["TF_USE_LEGACY_KERAS"] = "1"


class _TensorflowBackend(Backend):
    def on_start(self, worker_group: Any, backend_config: BackendConfig) -> None:
        import ray

        addresses = worker_group.execute(worker_address)
        ray.get(
            [
                worker_group.execute_single_async(
                    i, set_tf_config, worker_addresses=addresses, index=i
                )
                for i in range(len(worker_group))
            ]
        )
