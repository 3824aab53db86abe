"""Warm spares on the nodes that have no training worker, asked for by the driver.

Each training worker asks its own raylet for spares and publishes its job and runtime env
(:mod:`trainer.spares`). A node without a training worker gets none that way, yet it is where a
restarted group lands when a node was drained or lost and another joined. :class:`NodeSpares`
is a driver thread that, every ``interval_s``, lists the alive nodes with CPUs and asks the
raylet of each one no worker published from for ``count`` spares in the published env, once per
node. The spares' preload (:mod:`trainer.warm`) then imports TensorFlow there before the group
is restarted. Nothing happens until a worker has published (so a plain ``ray.init`` driver
never starts processes), and a failed request is logged and tried again at the next poll. A poll
while the driver is not connected to Ray does nothing: Ray's own calls would start a new local
Ray (seen: a watcher left running after a shutdown started one in its process).
"""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)


class NodeSpares:
    """The driver's watcher of nodes without spares (see the module docstring)."""

    def __init__(self, count: int, keep_alive_s: float, interval_s: float = 0.5) -> None:
        self.count = count
        self.keep_alive_s = keep_alive_s
        self.interval_s = interval_s
        self.asked: set[str] = set()  # node ids the driver asked for spares
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.count <= 0 or self._thread is not None:
            return
        self._thread = threading.Thread(target=self._loop, name="spotrain-node-spares", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def poll(self) -> list[str]:
        """Ask every alive node with CPUs that has neither a published worker nor a request
        yet for spares; returns the node ids asked now."""
        import ray

        from trainer.ray_internals import prestart_workers, published_worker_envs

        if not ray.is_initialized():  # Ray's calls below would start a new local Ray
            return []
        published = published_worker_envs(ray.get_runtime_context().get_job_id())
        if not published:
            return []
        env = next(iter(published.values()))
        asked = []
        for node in ray.nodes():
            node_id = node["NodeID"]
            if not _takes_workers(node) or node_id in published or node_id in self.asked:
                continue
            prestart_workers(self.count, self.keep_alive_s, node_id=node_id, env=env)
            self.asked.add(node_id)
            asked.append(node_id)
            logger.info("asked node %s for %d warm spare worker(s)", node_id[:12], self.count)
        return asked

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll()
            except Exception as exc:  # thread boundary: without spares restarts are only slower
                logger.debug("warm spares on other nodes: %s", exc)


def _takes_workers(node: dict[str, Any]) -> bool:
    return bool(node.get("Alive")) and float(node.get("Resources", {}).get("CPU", 0)) > 0
