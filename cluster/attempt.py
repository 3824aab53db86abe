"""The attempt contract between the coordinator and whatever runs an attempt.

The coordinator (:mod:`cluster.coordinator`) drives a run and hands each attempt to an
:class:`AttemptRunner` it is given; it neither picks nor imports an implementation. ``spotrain
run`` passes :class:`cluster.ray.runner.RayAttemptRunner`; tests pass a fake runner that
commits through real storage (``tests/cluster/fakes.py``).
"""

from __future__ import annotations

import os
import socket
import threading
import uuid
from dataclasses import dataclass, field
from typing import Protocol

from cluster import constants
from cluster.spec import JobSpec
from storage.location import RunLocation


@dataclass
class CoordinatorOptions:
    """Settings of one coordinator (one ``spotrain run`` process).

    Attributes:
        address: Ray address to join; None = ``RAY_ADDRESS`` or an embedded local Ray.
        lease_ttl_s: lease lifetime; a SIGKILLed driver blocks the next run this long at most.
        lease_renew_s: renewal period (well below ``lease_ttl_s``).
        sigterm_grace_s: on SIGTERM, wait at most this long for the emergency checkpoint.
        backoff_override_s: replaces the spec's ``failures.backoff_s`` (tests, env
            ``SPOTRAIN_BACKOFF_S``).
        holder_id: lease holder name (default ``host:pid:random``).
        verbose: show Ray's worker logs on the driver.
    """

    address: str | None = None
    lease_ttl_s: float = constants.DEFAULT_LEASE_TTL_S
    lease_renew_s: float = constants.DEFAULT_LEASE_RENEW_S
    sigterm_grace_s: float = constants.DEFAULT_SIGTERM_GRACE_S
    backoff_override_s: float | None = constants.BACKOFF_OVERRIDE_S
    holder_id: str = field(
        default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
    )
    verbose: bool = False


@dataclass(frozen=True)
class AttemptContext:
    """What a runner needs for one attempt.

    ``location`` is the run's one :class:`storage.location.RunLocation` (the coordinator's);
    ``run_url`` is the same run as the plain string the workers get (other processes build
    their own location from it and the spec's ``storage_options``).
    """

    spec: JobSpec
    run_url: str
    location: RunLocation
    attempt: int
    counts: dict[str, int]
    stop: threading.Event
    options: CoordinatorOptions
    #: the coordinator's lease generation (fencing token) every writer of the attempt carries
    lease_generation: int | None = None
    #: set when the coordinator lost its lease: stop without a final save (unlike ``stop``)
    lease_lost: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class AttemptResult:
    """How a successful attempt ended: the global step it reached, when the runner knows it."""

    global_step: int | None = None


class AttemptRunner(Protocol):
    """Runs one attempt to its end. Returns on success; raises what went wrong otherwise.

    When ``ctx.stop`` is set (driver SIGTERM) it asks the workers for an emergency save, waits
    for the commit within ``ctx.options.sigterm_grace_s`` and raises ``DriverPreempted``.
    """

    def run(self, ctx: AttemptContext) -> AttemptResult: ...

    def close(self) -> bool:
        """Release what the attempts held. True: work still runs in this process that only
        ``os._exit`` stops (the caller ends the process that way once it has reported)."""
        ...
