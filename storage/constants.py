"""Defaults of the storage package; each ``DEFAULT_X`` may be overridden by ``SPOTRAIN_X``."""

from __future__ import annotations

import os


def env_int(name: str, default: int) -> int:
    """``int(os.environ[name])``, or ``default`` when unset or empty; a clear error otherwise."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(
            f"{name}={raw!r} is not an integer; fix: unset it or set e.g. {default}"
        ) from None


def env_float(name: str, default: float) -> float:
    """``float(os.environ[name])``, or ``default`` when unset or empty; a clear error otherwise."""
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(
            f"{name}={raw!r} is not a number; fix: unset it or set e.g. {default}"
        ) from None


def _spotrain_version() -> str:
    try:
        from importlib.metadata import version

        return version("spotrain")
    except Exception:  # not installed (running from a bare checkout): still usable
        return "0+unknown"


#: Version written into manifests and run.json.
SPOTRAIN_VERSION = _spotrain_version()

#: Format version of MANIFEST.json; readers refuse newer majors. 2: ``digest`` over the body,
#: files below a per-commit ``prefix`` folder, the writer's lease ``generation``.
MANIFEST_FORMAT = 2
MANIFEST_NAME = "MANIFEST.json"
#: Step directories are ``<step:012d>``; steps must fit (0 <= step < 10**12).
STEP_DIGITS = 12
MAX_STEP = 10**STEP_DIGITS - 1

#: Files of one checkpoint transferred at once (uploads and downloads).
DEFAULT_TRANSFER_CONCURRENCY = env_int("SPOTRAIN_TRANSFER_CONCURRENCY", 8)
#: Read size when hashing/copying local files (bytes). ~1 MiB stays in CPU cache between the
#: read, the hash and the write; 8 MiB blocks measured 3x slower.
DEFAULT_HASH_BLOCK_BYTES = env_int("SPOTRAIN_HASH_BLOCK_BYTES", 2**20)
#: Downloads from object stores of files at least this big are split into ranged GETs of
#: DEFAULT_RANGED_GET_PART_BYTES, DEFAULT_TRANSFER_CONCURRENCY at once; 0 = off (the default:
#: against SeaweedFS on loopback with 2 CPUs, 128 MiB came at 24-53 MiB/s ranged vs 69-105
#: single-stream). Set it (e.g. 33554432) where one stream per file is slower than the store,
#: e.g. S3 across a network; it should be >= DEFAULT_RANGED_GET_PART_BYTES.
DEFAULT_RANGED_GET_MIN_BYTES = env_int("SPOTRAIN_RANGED_GET_MIN_BYTES", 0)
DEFAULT_RANGED_GET_PART_BYTES = env_int("SPOTRAIN_RANGED_GET_PART_BYTES", 8 * 2**20)

#: Attempts per storage call before a transient fault becomes TransientStorageError.
DEFAULT_RETRY_ATTEMPTS = env_int("SPOTRAIN_RETRY_ATTEMPTS", 6)
#: First backoff; doubles per attempt up to DEFAULT_RETRY_MAX_BACKOFF_S (full jitter).
DEFAULT_RETRY_INITIAL_BACKOFF_S = env_float("SPOTRAIN_RETRY_INITIAL_BACKOFF_S", 0.2)
DEFAULT_RETRY_MAX_BACKOFF_S = env_float("SPOTRAIN_RETRY_MAX_BACKOFF_S", 10.0)

#: Uncommitted step directories younger than this are never swept: another writer may still be
#: uploading them. Must exceed the longest commit (upload of one checkpoint) by a wide margin.
DEFAULT_SWEEP_MIN_AGE_S = env_float("SPOTRAIN_SWEEP_MIN_AGE_S", 6 * 3600.0)

#: Lease time-to-live: how long a coordinator's lease on a run lasts without renewal; a taker
#: waits this (plus DEFAULT_LEASE_SAFETY_MARGIN_S) after a holder on another host vanished. A
#: holder on the taker's own host whose process is gone is taken over at once
#: (storage.lease_holder), whatever the TTL. Short, because fencing (storage.fencing) keeps a
#: short lease safe: a writer that outlived its lease cannot commit or delete anything. 10 s
#: with renewals every 2 s (cluster.constants.DEFAULT_LEASE_RENEW_S = TTL / 5) leaves four
#: renewals before the holder's last margin: a renewal is a conditional PUT plus a read-back
#: (two S3 round trips, tens of ms; a few seconds at worst with retries), so a slow renewal or
#: two does not lose the lease; each renewal costs two requests per run every 2 s.
DEFAULT_LEASE_TTL_S = env_float("SPOTRAIN_LEASE_TTL_S", 10.0)
#: The shortest lease a Lease accepts. Depends on DEFAULT_LEASE_SAFETY_MARGIN_S: a TTL must also
#: exceed twice the margin (a holder's renewal within one margin of expiry is a late one that
#: only the swap decides, a taker waits one past it), and renewals (every TTL/5) must fit in
#: between. Fencing (storage.fencing) keeps a
#: short lease safe: a writer that outlived its lease cannot commit or delete anything.
MIN_LEASE_TTL_S = 5.0
#: A taker waits this long past a lease's expiry; a holder renewing in the last margin before
#: expiry (or after it) keeps the lease only through the compare-and-swap (storage.lease).
DEFAULT_LEASE_SAFETY_MARGIN_S = env_float("SPOTRAIN_LEASE_SAFETY_MARGIN_S", 2.0)
