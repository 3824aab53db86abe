"""Retries for storage calls: transient vs permanent classification, backoff with full jitter.

Transient (retried): connection resets/refusals, timeouts, HTTP 5xx / 429, S3 throttling
(``SlowDown``, ``Throttling``, ``RequestTimeout``, ``InternalError``, ``ServiceUnavailable``),
aiohttp/botocore connection errors, and OSErrors with errno ECONNRESET, ECONNREFUSED, ETIMEDOUT,
EPIPE, EAGAIN, EBUSY, EREMOTEIO, EHOSTUNREACH, ENETUNREACH.

Permanent (raised at once as :class:`PermanentStorageError`): access denied / bad credentials
(PermissionError), no such bucket, disk full, read-only filesystem, invalid requests, and anything
unknown. ``FileNotFoundError`` / ``FileExistsError`` of a *path* are not storage faults: they pass
through unchanged so callers can act on them (a missing checkpoint file means "corrupt"), and so do
failed S3 preconditions (412, a conditional write that lost). A missing *bucket* is permanent.

s3fs already retries a few low-level errors itself; these retries sit above it and also cover
errors s3fs translates to OSError (e.g. ``SlowDown`` -> EBUSY).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from storage.constants import (
    DEFAULT_RETRY_ATTEMPTS,
    DEFAULT_RETRY_INITIAL_BACKOFF_S,
    DEFAULT_RETRY_MAX_BACKOFF_S,
)
from storage.errors import PermanentStorageError, SpotrainError, TransientStorageError

logger = logging.getLogger(__name__)
T = TypeVar("T")

TRANSIENT = "transient"
PERMANENT = "permanent"
PASSTHROUGH = "passthrough"

_TRANSIENT_ERRNOS = {
    errno.ECONNRESET,
    errno.ECONNREFUSED,
    errno.ECONNABORTED,
    errno.ETIMEDOUT,
    errno.EPIPE,
    errno.EAGAIN,
    errno.EBUSY,
    errno.EHOSTUNREACH,
    errno.ENETUNREACH,
    errno.ENETDOWN,
    getattr(errno, "EREMOTEIO", errno.EIO),
}
_TRANSIENT_CODES = {
    "SlowDown",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestTimeout",
    "RequestTimeoutException",
    "RequestLimitExceeded",
    "TooManyRequestsException",
    "InternalError",
    "ServiceUnavailable",
    "500",
    "502",
    "503",
    "504",
    "429",
}
_TRANSIENT_TYPE_NAMES = {
    # botocore / aiobotocore / aiohttp / urllib3 / requests, matched by name so this module
    # does not import optional packages.
    "EndpointConnectionError",
    "ConnectionClosedError",
    "ReadTimeoutError",
    "ConnectTimeoutError",
    "ConnectTimeout",
    "ReadTimeout",
    "ProxyConnectionError",
    "HTTPClientError",
    "ResponseStreamingError",
    "IncompleteReadError",
    "IncompleteRead",
    "ServerDisconnectedError",
    "ClientConnectionError",
    "ClientConnectorError",
    "ClientOSError",
    "ClientPayloadError",
    "ServerTimeoutError",
    "FSTimeoutError",
    "ResponseParserError",
    "ProtocolError",
}
_BUCKET_MISSING = ("nosuchbucket", "bucket does not exist", "specified bucket does not exist")


def _client_error_info(exc: BaseException) -> tuple[str | None, int | None]:
    """(error code, HTTP status) of a botocore ClientError found on ``exc`` or its causes."""
    seen = 0
    cur: BaseException | None = exc
    while cur is not None and seen < 5:
        response = getattr(cur, "response", None)
        if isinstance(response, dict):
            code = response.get("Error", {}).get("Code")
            status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            return (str(code) if code is not None else None, status)
        cur = cur.__cause__ or cur.__context__
        seen += 1
    return None, None


def classify(exc: BaseException) -> str:
    """``"transient"``, ``"permanent"`` or ``"passthrough"`` (path-level not-found/exists)."""
    if isinstance(exc, SpotrainError):
        return TRANSIENT if exc.retryable else PERMANENT
    code, status = _client_error_info(exc)
    if code in ("PreconditionFailed", "ConditionalRequestConflict") or status == 412:
        return PASSTHROUGH  # a conditional write lost: the caller decides
    if code in _TRANSIENT_CODES or (status is not None and (status >= 500 or status == 429)):
        return TRANSIENT
    names = {t.__name__ for t in type(exc).__mro__}
    if names & _TRANSIENT_TYPE_NAMES:
        return TRANSIENT
    if isinstance(exc, (asyncio.TimeoutError, TimeoutError, ConnectionError)):
        return TRANSIENT
    if isinstance(exc, FileNotFoundError):
        text = f"{exc} {code or ''}".lower()
        if any(m in text for m in _BUCKET_MISSING):
            return PERMANENT
        return PASSTHROUGH
    if isinstance(exc, (FileExistsError, IsADirectoryError, NotADirectoryError)):
        return PASSTHROUGH
    if isinstance(exc, PermissionError):
        return PERMANENT
    if isinstance(exc, OSError) and exc.errno in _TRANSIENT_ERRNOS:
        return TRANSIENT
    return PERMANENT


def fix_hint(exc: BaseException) -> str:
    """What to do about a permanent fault, for error messages."""
    text = str(exc).lower()
    if isinstance(exc, PermissionError) or "access denied" in text or "forbidden" in text:
        return (
            "check the credentials (environment, ~/.aws, storage_options) and that they may "
            "read/write/list/delete this prefix"
        )
    if any(m in text for m in _BUCKET_MISSING):
        return "create the bucket first, or fix the bucket name in the storage URL"
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        return "free disk space or point the run at a larger volume"
    if isinstance(exc, OSError) and exc.errno == errno.EROFS:
        return "point the run at a writable location"
    return "check the storage URL and storage_options; this error will not go away by retrying"


@dataclass(frozen=True)
class RetryOptions:
    """How storage calls retry transient faults.

    attempts: tries in total (1 = no retry). initial_backoff_s doubles per retry up to
    max_backoff_s; each sleep is uniform in [0, that] ("full jitter"). Tests shrink all three.
    """

    attempts: int = DEFAULT_RETRY_ATTEMPTS
    initial_backoff_s: float = DEFAULT_RETRY_INITIAL_BACKOFF_S
    max_backoff_s: float = DEFAULT_RETRY_MAX_BACKOFF_S

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"RetryOptions.attempts={self.attempts}; fix: use >= 1")
        if self.initial_backoff_s < 0 or self.max_backoff_s < 0:
            raise ValueError("RetryOptions backoffs must be >= 0")

    def backoff_s(self, retry_index: int, rng: random.Random | None = None) -> float:
        cap = min(self.max_backoff_s, self.initial_backoff_s * (2**retry_index))
        return (rng or random).uniform(0.0, cap)


def call_with_retry(
    fn: Callable[[], T],
    *,
    what: str,
    url: str,
    options: RetryOptions,
    redact: Callable[[str], str] = lambda s: s,
    sleep: Callable[[float], None] = time.sleep,
) -> T:
    """Run ``fn``; retry transient faults; raise typed errors naming ``url`` (already redacted).

    Path-level FileNotFoundError/FileExistsError pass through unchanged.
    """
    for attempt in range(options.attempts):
        try:
            return fn()
        except BaseException as exc:
            if isinstance(exc, (KeyboardInterrupt, SystemExit, GeneratorExit)):
                raise
            kind = classify(exc)
            if kind == PASSTHROUGH:
                raise
            detail = redact(f"{type(exc).__name__}: {exc}")
            if kind == PERMANENT:
                if isinstance(exc, SpotrainError):
                    raise
                raise PermanentStorageError(
                    f"{what} failed on {url}: {detail}; fix: {fix_hint(exc)}", url
                ) from None
            if attempt + 1 >= options.attempts:
                raise TransientStorageError(
                    f"{what} failed on {url} after {options.attempts} attempts, last error "
                    f"{detail}; fix: check the storage service, or raise SPOTRAIN_RETRY_ATTEMPTS "
                    f"(now {options.attempts})",
                    url,
                ) from None
            delay = options.backoff_s(attempt)
            logger.warning(
                "%s on %s: transient %s (attempt %d/%d), retrying in %.2fs",
                what,
                url,
                detail,
                attempt + 1,
                options.attempts,
                delay,
            )
            sleep(delay)
    raise AssertionError("unreachable")
