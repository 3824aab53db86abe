"""Transient vs permanent classification and backoff."""

from __future__ import annotations

import asyncio
import errno
import random

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError, ReadTimeoutError
from s3fs.errors import translate_boto_error

from storage.errors import PermanentStorageError, TransientStorageError
from storage.retry import PASSTHROUGH, PERMANENT, TRANSIENT, RetryOptions, call_with_retry, classify


def _client_error(code: str, status: int) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": code}, "ResponseMetadata": {"HTTPStatusCode": status}},
        "PutObject",
    )


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (ConnectionResetError(errno.ECONNRESET, "reset"), TRANSIENT),
        (TimeoutError(), TRANSIENT),
        (asyncio.TimeoutError(), TRANSIENT),
        (OSError(errno.EBUSY, "SlowDown"), TRANSIENT),
        (OSError(errno.ETIMEDOUT, "x"), TRANSIENT),
        (EndpointConnectionError(endpoint_url="http://x"), TRANSIENT),
        (ReadTimeoutError(endpoint_url="http://x"), TRANSIENT),
        (_client_error("SlowDown", 503), TRANSIENT),
        (_client_error("InternalError", 500), TRANSIENT),
        (_client_error("Throttling", 400), TRANSIENT),
        (_client_error("Whatever", 502), TRANSIENT),
        (translate_boto_error(_client_error("SlowDown", 503)), TRANSIENT),
        (translate_boto_error(_client_error("ServiceUnavailable", 503)), TRANSIENT),
        (translate_boto_error(_client_error("InternalError", 500)), TRANSIENT),
        (PermissionError(errno.EACCES, "Access Denied"), PERMANENT),
        (translate_boto_error(_client_error("AccessDenied", 403)), PERMANENT),
        (translate_boto_error(_client_error("NoSuchBucket", 404)), PERMANENT),
        (translate_boto_error(_client_error("InvalidAccessKeyId", 403)), PERMANENT),
        (OSError(errno.ENOSPC, "full"), PERMANENT),
        (OSError(errno.EROFS, "ro"), PERMANENT),
        (ValueError("bug"), PERMANENT),
        (FileNotFoundError("no such key"), PASSTHROUGH),
        (translate_boto_error(_client_error("NoSuchKey", 404)), PASSTHROUGH),
        (translate_boto_error(_client_error("PreconditionFailed", 412)), PASSTHROUGH),
        (FileExistsError(), PASSTHROUGH),
    ],
)
def test_classify(exc: BaseException, kind: str) -> None:
    assert classify(exc) == kind


def test_backoff_is_capped_full_jitter() -> None:
    opts = RetryOptions(attempts=10, initial_backoff_s=0.1, max_backoff_s=1.0)
    rng = random.Random(0)
    for i in range(10):
        cap = min(1.0, 0.1 * 2**i)
        assert all(0 <= opts.backoff_s(i, rng) <= cap for _ in range(50))
    with pytest.raises(ValueError):
        RetryOptions(attempts=0)


def test_call_with_retry_sleeps_and_gives_up() -> None:
    sleeps: list[float] = []
    calls = []

    def flaky() -> int:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionResetError("reset")
        return 7

    opts = RetryOptions(attempts=3, initial_backoff_s=0.5, max_backoff_s=0.5)
    assert call_with_retry(flaky, what="x", url="u", options=opts, sleep=sleeps.append) == 7
    assert len(sleeps) == 2 and all(0 <= s <= 0.5 for s in sleeps)

    def always() -> None:
        raise TimeoutError("slow")

    with pytest.raises(TransientStorageError, match=r"after 3 attempts.*SPOTRAIN_RETRY_ATTEMPTS"):
        call_with_retry(always, what="x", url="u", options=opts, sleep=sleeps.append)

    def denied() -> None:
        raise PermissionError("denied key=AKIA123SECRET")

    with pytest.raises(PermanentStorageError) as info:
        call_with_retry(
            denied,
            what="x",
            url="s3://b/r",
            options=opts,
            redact=lambda s: s.replace("AKIA123SECRET", "***"),
            sleep=sleeps.append,
        )
    assert "AKIA123SECRET" not in str(info.value) and "s3://b/r" in str(info.value)
    assert info.value.__cause__ is None  # the raw error (which may carry secrets) is dropped
