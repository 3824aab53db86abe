"""The coordinator's hold on a run: acquire the run's lease, renew it from a thread, release it."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from cluster.attempt import CoordinatorOptions
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
        self.lost = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self) -> None:
        self.lease.acquire()  # raises LeaseHeldError(holder, expires_at)
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
