"""The coordinator's hold on a run: acquire the run's lease, renew it from a thread, release it.

The generation acquired is the coordinator's fencing token: :attr:`LeaseKeeper.fence` is what
every writer of this coordinator (its run record and store, the Ray controller's hooks, each
worker's committer) checks before it commits or deletes. Once the lease is lost, :attr:`lost`
is set before ``on_lost`` runs, so the runner can tell a lost lease from a SIGTERM: a lost
lease stops the workers without a final save.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cluster.attempt import CoordinatorOptions
from storage.fencing import Fence
from storage.location import RunLocation

logger = logging.getLogger(__name__)


class LeaseKeeper:
    """Acquires the run's lease and renews it from a daemon thread until released."""

    def __init__(
        self,
        location: RunLocation,
        options: CoordinatorOptions,
        on_lost: Callable[[], None] | None = None,
    ) -> None:
        from storage.lease import Lease

        self.on_lost = on_lost
        self.lease = Lease(location, options.holder_id, options.lease_ttl_s)
        self.renew_s = options.lease_renew_s
        self.location = location
        self.lost = threading.Event()
        #: the generation acquired (None before acquire)
        self.generation: int | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def fence(self) -> Fence | None:
        """The fence of the generation this keeper acquired (None before acquire)."""
        return None if self.generation is None else Fence(self.location, self.generation)

    def acquire(self) -> None:
        info = self.lease.acquire()  # raises LeaseHeldError(holder, expires_at)
        self.generation = info.generation
        self._thread = threading.Thread(target=self._renew_loop, name="spotrain-lease", daemon=True)
        self._thread.start()

    def _renew_loop(self) -> None:
        from storage.errors import LeaseHeldError

        while not self._stop.wait(self.renew_s):
            try:
                self.lease.renew()
            except LeaseHeldError:
                logger.error("lost the run's lease (another coordinator took it over); stopping")
                self.lost.set()
                if self.on_lost is not None:
                    self.on_lost()
                return
            except Exception:  # thread boundary: keep renewing through transient faults
                logger.warning("could not renew the run's lease; retrying", exc_info=True)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        try:
            self.lease.release()
        except Exception:  # process boundary: the lease expires by itself anyway
            logger.warning("could not release the run's lease; it expires by itself", exc_info=True)
