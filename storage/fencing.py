"""Fencing tokens: a writer carries the lease generation it was started under.

Every lease acquisition gets a strictly larger ``generation`` (:mod:`storage.lease`). A
:class:`Fence` is that number plus the run; :meth:`Fence.check` reads ``lease.json`` and raises
:class:`StaleWriterError` when the lease has moved on to a newer generation, so a frozen or
partitioned process that wakes up after a takeover writes nothing. Writers call it right before
their commit point and before each delete.
"""

from __future__ import annotations

from dataclasses import dataclass

from storage.errors import StaleWriterError
from storage.location import RunLocation

__all__ = ["Fence"]


@dataclass(frozen=True)
class Fence:
    """The run and the lease generation a writer runs under."""

    location: RunLocation
    generation: int

    def current_generation(self) -> int | None:
        """The generation ``lease.json`` holds now (None: no lease document)."""
        from storage.lease import LeaseInfo  # lease imports location, not fencing

        fs = self.location.fs
        try:
            data = fs.cat_file(self.location.lease_path)
        except FileNotFoundError:
            return None
        info = LeaseInfo.from_json(data)
        return None if info is None else info.generation

    def check(self, what: str) -> None:
        """Raise :class:`StaleWriterError` if a newer generation holds the run's lease."""
        current = self.current_generation()
        if current is not None and current > self.generation:
            raise StaleWriterError(
                f"{what} refused: this writer runs under lease generation {self.generation}, "
                f"the run is now at generation {current} (a newer coordinator took it over); "
                "fix: nothing to fix here, this process is stale and stops",
                self.location.url,
                self.generation,
                current,
            )
