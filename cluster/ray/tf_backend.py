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
import random
import socket
from dataclasses import dataclass
from pathlib import Path
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


#: Where listen ports are drawn from when the host's ephemeral range cannot be read.
_EPHEMERAL_DEFAULT = (32768, 60999)
_LOWEST_PORT = 10000


def worker_address() -> str:
    """This worker's ``host:port``, with a port free now (the strategy's server binds it)."""
    import ray

    host = ray.util.get_node_ip_address()
    port = listen_port(socket.AF_INET6 if ":" in host else socket.AF_INET)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def listen_port(family: int = socket.AF_INET, attempts: int = 50) -> int:
    """A port no socket is bound to now, from below the host's ephemeral range.

    A port from ``bind(("", 0))`` (what Ray's ``TensorflowConfig`` uses) is an ephemeral one: in
    the seconds before TensorFlow's server binds it (the worker imports TensorFlow and builds its
    strategy first), any outgoing connection on the host may be given it — Ray opens many — and
    the worker fails with "Could not start gRPC server" (seen in a full test run). Ports below
    the ephemeral range are never handed to outgoing connections; the bind checks that no
    listener holds one. Falls back to an ephemeral port when none below is free."""
    low = ephemeral_range()[0]
    rng = random.SystemRandom()
    for _ in range(attempts if low > _LOWEST_PORT else 0):
        port = rng.randrange(_LOWEST_PORT, low)
        with socket.socket(family, socket.SOCK_STREAM) as s:
            try:
                s.bind(("", port))
            except OSError:
                continue
        return port
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.bind(("", 0))
        return int(s.getsockname()[1])


def ephemeral_range() -> tuple[int, int]:
    """The host's range of ports for outgoing connections (Linux), else the usual default."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return _EPHEMERAL_DEFAULT


def set_tf_config(worker_addresses: list[str], index: int) -> None:
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": worker_addresses}, "task": {"type": "worker", "index": index}}
    )
    os.environ["TF_USE_LEGACY_KERAS"] = "1"


class _TensorflowBackend(Backend):
    def on_start(self, worker_group: Any, backend_config: BackendConfig) -> None:
        import ray

        addresses = worker_group.execute(worker_address)
        for _ in range(3):  # two workers of one host drew the same port: draw again
            if len(set(addresses)) == len(addresses):
                break
            addresses = worker_group.execute(worker_address)
        ray.get(
            [
                worker_group.execute_single_async(
                    i, set_tf_config, worker_addresses=addresses, index=i
                )
                for i in range(len(worker_group))
            ]
        )
