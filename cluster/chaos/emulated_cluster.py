"""A multi-node Ray cluster on one machine, and the faults a spot fleet inflicts on it.

``EmulatedCluster`` wraps ``ray.cluster_utils.Cluster``: a head that offers no CPUs (so no
training worker lands there) plus N raylets, each offering the resources of one worker. Its
methods inject the faults of :mod:`cluster.chaos.schedule`: SIGKILL a training worker, drain a
node with Ray's PREEMPTION reason (through :mod:`cluster.ray.internals`) and remove it once no
training worker is left on it (at the latest at the deadline), remove a node without notice, add
one. The head gets spotrain's recovery settings (:data:`cluster.ray.session.RAY_SYSTEM_CONFIG`:
warm preload, fast node-loss detection), which the other raylets take from it.

To keep Ray on loopback, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` must be in the environment
before Ray is imported (Ray reads it at import; ``make test`` exports it).
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any

from storage.errors import SpotrainError

logger = logging.getLogger(__name__)

#: Actor class of a Ray Train V2 worker; its processes are what ``kill-worker`` hits.
TRAIN_WORKER_CLASS = "RayTrainWorker"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class EmulationError(SpotrainError):
    """The emulated cluster could not do what was asked (e.g. no node left to drain)."""


@dataclass(frozen=True)
class NodeInfo:
    node_id: str
    alive: bool
    train_worker_pids: tuple[int, ...]


class EmulatedCluster:
    """Head + ``nodes`` worker raylets on this machine; use as a context manager."""

    def __init__(self, nodes: int, *, cpus_per_node: int = 1, object_store_mb: int = 128):
        if nodes < 1:
            raise EmulationError(f"--nodes must be >= 1; received {nodes}")
        self._nodes_wanted = nodes
        self._cpus_per_node = cpus_per_node
        self._object_store_bytes = object_store_mb * 1024 * 1024
        self._cluster: Any = None
        self._workers: list[Any] = []  # the Node (cluster_utils.add_node) of each worker raylet
        self._timers: list[threading.Timer] = []
        self._lock = threading.Lock()
        #: unix time of the latest fault's blow itself (the SIGKILL, the drain RPC, the node's
        #: removal), after the look-ups that chose its target: what detection is timed from
        self.struck_at: float | None = None

    # lifecycle -----------------------------------------------------------------------------
    def start(self) -> EmulatedCluster:
        from ray.cluster_utils import Cluster

        from cluster.ray.session import MIN_STARTUP_CONCURRENCY, RAY_SYSTEM_CONFIG

        self._cluster = Cluster(
            initialize_head=True,
            head_node_args={
                "num_cpus": 0,
                "object_store_memory": self._object_store_bytes,
                "_system_config": {
                    **RAY_SYSTEM_CONFIG,
                    "worker_maximum_startup_concurrency": MIN_STARTUP_CONCURRENCY,
                },
                # the state API (train_worker_pids) needs this cluster's own dashboard: Ray's
                # fixed default port is taken when another cluster runs on this machine
                "dashboard_port": _free_port(),
            },
        )
        for _ in range(self._nodes_wanted):
            self.add_node(wait=False)
        self._cluster.wait_for_nodes()
        return self

    @property
    def address(self) -> str:
        return str(self._cluster.address)

    def shutdown(self) -> None:
        for timer in self._timers:
            timer.cancel()
        if self._cluster is not None:
            self._cluster.shutdown()
            self._cluster = None

    def __enter__(self) -> EmulatedCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # observation ---------------------------------------------------------------------------
    def train_worker_pids(self) -> dict[str, list[int]]:
        """Live Ray Train worker processes, by node id (needs a connected ``ray`` driver)."""
        from ray.util.state import list_actors

        actors = list_actors(
            address=self.address,
            filters=[("class_name", "=", TRAIN_WORKER_CLASS), ("state", "=", "ALIVE")],
            raise_on_missing_output=False,
        )
        by_node: dict[str, list[int]] = {}
        for actor in actors:
            if actor.pid and actor.node_id:
                by_node.setdefault(actor.node_id, []).append(int(actor.pid))
        return by_node

    def worker_node_ids(self) -> list[str]:
        with self._lock:
            return [node.node_id for node in self._workers]

    # faults --------------------------------------------------------------------------------
    def add_node(self, wait: bool = True) -> str:
        node = self._cluster.add_node(
            num_cpus=self._cpus_per_node,
            object_store_memory=self._object_store_bytes,
            wait=wait,
        )
        with self._lock:
            self._workers.append(node)
        logger.info("added node %s", node.node_id[:8])
        return str(node.node_id)

    def kill_worker(self) -> int:
        """SIGKILL one Ray Train worker process; returns its pid."""
        pids = sorted(pid for node_pids in self.train_worker_pids().values() for pid in node_pids)
        if not pids:
            raise EmulationError("kill-worker: no Ray Train worker is alive to kill")
        self.struck_at = time.time()
        os.kill(pids[0], signal.SIGKILL)
        logger.info("killed train worker pid %s", pids[0])
        return pids[0]

    def drain_node(self, deadline_s: float, node_id: str | None = None) -> str:
        """Drain a node as a spot reclaim does (reason PREEMPTION); remove it once no training
        worker is left on it (they saved and ended: the node is released at once, as a drained
        node is), at the latest at the deadline."""
        from cluster.ray.internals import drain_node

        node = self._pick_node(node_id)
        self.struck_at = time.time()
        accepted, why = drain_node(
            self.address, node.node_id, deadline_s, "spotrain chaos: spot reclaim"
        )
        if not accepted:
            raise EmulationError(f"drain-node: Ray rejected draining {node.node_id[:8]}: {why}")
        timer = threading.Timer(deadline_s, self._remove, args=(node,))
        timer.daemon = True
        timer.start()
        self._timers.append(timer)
        release = threading.Thread(target=self._release_when_idle, args=(node, timer), daemon=True)
        release.start()
        logger.info(
            "draining node %s, removal in %.1fs at the latest", node.node_id[:8], deadline_s
        )
        return str(node.node_id)

    def kill_node(self, node_id: str | None = None) -> str:
        """Remove a node without notice: its raylet and every worker on it are SIGKILLed."""
        node = self._pick_node(node_id)
        self.struck_at = time.time()
        self._remove(node)
        return str(node.node_id)

    # internals -----------------------------------------------------------------------------
    def _pick_node(self, node_id: str | None) -> Any:
        """The node asked for, else the first node running a training worker, else any."""
        with self._lock:
            candidates = list(self._workers)
        if not candidates:
            raise EmulationError("no worker node is left; schedule an add-node first")
        if node_id is not None:
            for node in candidates:
                if node.node_id == node_id:
                    return node
            raise EmulationError(f"node {node_id} is not a live worker node of this cluster")
        busy = set(self.train_worker_pids())
        return next((n for n in candidates if n.node_id in busy), candidates[0])

    def _release_when_idle(self, node: Any, timer: threading.Timer) -> None:
        """Remove the drained ``node`` as soon as it runs no training worker (polls ~4x/s)."""
        while timer.is_alive():
            try:
                idle = node.node_id not in self.train_worker_pids()
            except Exception:  # the state API is busy or the cluster is shutting down: retry
                idle = False
            if idle:
                timer.cancel()
                logger.info("drained node %s runs no training worker: released", node.node_id[:8])
                self._remove(node)
                return
            timer.join(0.25)

    def _remove(self, node: Any) -> None:
        with self._lock:
            if node not in self._workers or self._cluster is None:
                return
            self._workers.remove(node)
        self._cluster.remove_node(node, allow_graceful=False)
        logger.info("removed node %s", node.node_id[:8])
