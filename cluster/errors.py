"""Errors of the ``cluster`` package, all under ``storage.errors.SpotrainError``.

Deterministic errors (bad spec, user code) are kept apart from retryable infrastructure ones
both in type and in the exit code they map to (see ``cluster.exit_codes``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from storage.errors import RetryableError, SpotrainError


class SpecError(SpotrainError):
    """The job spec is invalid. Names the field, the value given and what is allowed."""

    retryable = False

    def __init__(self, field: str, value: Any, allowed: str, source: str | None = None) -> None:
        self.field = field
        self.value = value
        self.allowed = allowed
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}invalid job spec field '{field}': got {value!r}; {allowed}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.field, self.value, self.allowed, self.source))


class NoRunError(SpotrainError):
    """There is no spotrain run (no run.json) at the given URL."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(
            f"no spotrain run at {url} (no run.json); fix: check the URL, or the job's "
            "storage and name (run URL = <storage>/<name>)"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.url,))


class DriverPreempted(RetryableError):
    """The driver got SIGTERM; the run was saved (if the grace period allowed) and stopped."""


def one_of(values: Sequence[str]) -> str:
    """Format an "allowed values" hint."""
    return "allowed: " + ", ".join(repr(v) for v in values)
