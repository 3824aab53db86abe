"""Where this worker runs: rank, world size, and the Ray-side barrier-style helpers.

Under Ray Train (V2) ``ray.train.get_context()`` gives rank and world size,
``ray.train.collective.broadcast_from_rank_zero`` shares small values and
``local_preemption_notice`` reads a coming preemption of this worker's node, without a barrier
(the ranks agree on it at step boundaries). Without Ray the process is a single worker (rank 0
of 1).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


def in_ray_train() -> bool:
    """True inside a Ray Train worker (the private hook it needs: :mod:`trainer.ray_internals`)."""
    from trainer.ray_internals import in_ray_train_worker

    return in_ray_train_worker()


@dataclass
class WorkerContext:
    """Rank/world of this worker plus the small coordination calls the trainer needs."""

    rank: int = 0
    world_size: int = 1
    ray: bool = False
    attempt: int = 0
    #: Unix times this worker reached each start-up phase (``entered``: the train function
    #: began; ``tf_ready``: the strategy's collectives are set up; ``prefetched``: the restore
    #: prefetch's download ended, when the restore used it). The
    #: restore event carries them, so a recovery can be split into its parts.
    phase_times: dict[str, float] = field(default_factory=dict)
    #: The :class:`trainer.notice_watcher.NoticeWatcher` started when the worker started (so a
    #: notice during start-up is seen at once), or None; ``BackupAndRestore`` uses it.
    notice_watcher: Any = None
    #: The :class:`trainer.restore_prefetch.RestorePrefetch` the worker began before its
    #: strategy, or None; the restore takes its download when it holds the agreed step.
    restore_prefetch: Any = None

    @classmethod
    def detect(cls) -> WorkerContext:
        if not in_ray_train():
            return cls()
        import ray.train

        ctx = ray.train.get_context()
        return cls(rank=ctx.get_world_rank(), world_size=ctx.get_world_size(), ray=True)

    @property
    def is_chief(self) -> bool:
        return self.rank == 0

    def broadcast_from_rank_zero(self, value: Any) -> Any:
        if not self.ray or self.world_size == 1:
            return value
        from ray.train.collective import broadcast_from_rank_zero

        return broadcast_from_rank_zero(value)

    def local_preemption_notice(self) -> Any:
        """This worker's own copy of Ray's preemption notice, or None; no barrier, so any
        thread may call it at any time (the ranks agree on it later, at a step boundary)."""
        if not self.ray:
            return None
        from trainer.ray_internals import local_preemption_info, own_node_drain

        # Ray Train's watcher's copy (when a user turned it on), else this node's drain
        return local_preemption_info() or own_node_drain()

    def report(self, metrics: dict[str, Any]) -> None:
        if not self.ray:
            return
        import ray.train

        ray.train.report(metrics)
