"""Errors of the ``cluster`` package, all under ``storage.errors.SpotrainError``.

Deterministic errors (bad spec, user code) are kept apart from retryable infrastructure ones
both in type and in the exit code they map to (see ``cluster.exit_codes``).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from storage.errors import RetryableError, SpotrainError
from storage.redaction import redact


class SpecError(SpotrainError):
    """The job spec is invalid. Names the field, the value given (secrets masked: a value under
    a secret-looking field or key, URL user info) and what is allowed."""

    retryable = False

    def __init__(self, field: str, value: Any, allowed: str, source: str | None = None) -> None:
        self.field = field
        self.value = redact(value, field.rsplit(".", 1)[-1])
        self.allowed = allowed
        self.source = source
        where = f"{source}: " if source else ""
        super().__init__(f"{where}invalid job spec field '{field}': got {self.value!r}; {allowed}")

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


class RunDamagedError(SpotrainError):
    """What is stored of the run cannot be used as it is: no committed checkpoint verifies, or
    the run record cannot be read (``run.json`` not JSON, a file where the events folder should
    be). Running again cannot help (exit code 6): the message says how to start fresh."""

    def __init__(self, url: str, problem: str) -> None:
        self.url = url
        self.problem = problem
        super().__init__(
            f"the run at {url} cannot be resumed: {problem}; fix: start fresh: give the job a "
            f"new name, or delete the run folder ({url})"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.__class__, (self.url, self.problem))


@contextmanager
def reading_run(url: str) -> Iterator[None]:
    """Turn the errors of reading a damaged run record into :class:`RunDamagedError`."""
    try:
        yield
    except SpotrainError:
        raise
    except json.JSONDecodeError as exc:
        raise RunDamagedError(url, f"a run file is not valid JSON ({exc})") from None
    except (NotADirectoryError, FileExistsError, IsADirectoryError) as exc:
        what = f"{type(exc).__name__}: {exc.strerror or exc}"
        raise RunDamagedError(
            url, f"a file stands where a folder of the run should be, or the reverse ({what})"
        ) from None


class DriverPreempted(RetryableError):
    """The driver got SIGTERM; the run was saved (if the grace period allowed) and stopped."""


def one_of(values: Sequence[str]) -> str:
    """Format an "allowed values" hint."""
    return "allowed: " + ", ".join(repr(v) for v in values)
