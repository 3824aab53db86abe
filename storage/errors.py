"""Error types shared by every spotrain package.

``SpotrainError`` is the one base class. Errors are split into *retryable* ones (infrastructure:
preemption, lost node, transient storage faults) and *deterministic* ones (bad input, user code,
permanent storage faults), so callers decide to retry on the type alone.

Every error that carries fields defines ``__reduce__`` so it pickles across Ray actors.
"""

from __future__ import annotations

from typing import Any


class SpotrainError(Exception):
    """Base class of every error spotrain raises on purpose."""

    #: True when running again may succeed (infrastructure), False when it never will.
    retryable: bool = False


class RetryableError(SpotrainError):
    """An infrastructure fault: the same operation may succeed later."""

    retryable = True


class InvalidNameError(SpotrainError, ValueError):
    """A run name, event kind, step number or file path that storage refuses (never retryable)."""


class CheckpointStateError(SpotrainError, ValueError):
    """The caller's training state or checkpoint directory cannot be committed as given."""


class StorageError(SpotrainError):
    """Base of storage faults. ``url`` is the redacted URL involved (never carries secrets)."""

    def __init__(self, message: str, url: str | None = None) -> None:
        super().__init__(message)
        self.url = url

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.url))


class TransientStorageError(StorageError, RetryableError):
    """Storage kept failing with transient faults (timeouts, 5xx, throttling) after retries."""

    retryable = True


class PermanentStorageError(StorageError):
    """Storage refused the operation for good (no such bucket, access denied, disk full...)."""

    retryable = False


class CorruptCheckpointError(StorageError):
    """A committed step whose manifest or files do not verify (size or sha256 mismatch, missing)."""


class NoValidCheckpointError(StorageError):
    """No committed step could be restored (none committed, or every candidate was corrupt)."""

    def __init__(
        self, message: str, url: str | None = None, tried: tuple[int, ...] | list[int] = ()
    ) -> None:
        super().__init__(message, url)
        self.tried = tuple(tried)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.url, self.tried))


class CommitTimeoutError(RetryableError, TimeoutError):
    """A background checkpoint commit did not finish within the allowed time."""


class LeaseHeldError(StorageError):
    """Another holder owns the run's lease; ``holder`` and ``expires_at`` (unix s) say who/when."""

    def __init__(
        self,
        message: str,
        url: str | None = None,
        holder: str | None = None,
        expires_at: float | None = None,
    ) -> None:
        super().__init__(message, url)
        self.holder = holder
        self.expires_at = expires_at

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.url, self.holder, self.expires_at))


class LeaseLostError(LeaseHeldError):
    """This holder's lease expired or was taken over; stop driving the run."""


class StaleWriterError(StorageError):
    """A writer of an older lease generation tried to change the run: refused, nothing written.

    ``generation`` is the writer's, ``current`` the lease's. Never retryable: the process that
    gets it is stale (a newer coordinator took the run over) and must stop without writing.
    """

    def __init__(
        self, message: str, url: str | None = None, generation: int = -1, current: int = -1
    ) -> None:
        super().__init__(message, url)
        self.generation = generation
        self.current = current

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (str(self), self.url, self.generation, self.current))


class UnsupportedStorageError(SpotrainError, ValueError):
    """A storage URL this installation cannot open: an unknown protocol, or one whose fsspec
    package (``gcsfs``, ``adlfs``...) is not installed. Never retryable: fix the URL or install."""
