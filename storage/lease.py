"""The run lease (``<run>/lease.json``): one coordinator drives a run at a time.

``lease.json`` holds ``holder``, ``expires_at`` (unix s), ``generation``, ``released`` and the
holder's ``process`` (host, boot id, pid namespace, pid, process start time;
:mod:`storage.lease_holder`).
Acquire creates it with a create-only write; taking over an expired or released lease, renewing
and releasing are compare-and-swap writes against the version that was read. Each backend is
one small class in :mod:`storage.lease_backends`, chosen once by protocol. What each guarantees:

* local files (``file://``, bare paths): create = write a temp file, then ``os.link`` it to
  ``lease.json`` (atomic, fails if it exists); compare-and-swap = ``fcntl.flock`` on
  ``lease.json.lock``, compare, write temp + ``os.replace``. Exact between processes of one
  host (and on network filesystems with working flock/link).
* ``s3://`` (AWS S3 and servers that honour conditional writes): create = PutObject with
  ``If-None-Match: *``; compare-and-swap = PutObject with ``If-Match: <ETag read>``. Exact.
  SeaweedFS 4.48 honours both (answers 412 PreconditionFailed; s3fs does not map that answer to
  FileExistsError, so it is recognised there). Every create is also read back (write-then-verify),
  so a server that silently ignores the condition still cannot give the lease to two creators
  that do not overlap in time; it narrows, but cannot close, the window for exact overlaps.
* ``memory://``: a process-wide lock; exact within the process (the store is per process).
* any other protocol: write-then-verify (read, write with a fresh nonce, read back). Two
  acquirers racing within one round trip may both believe they won; use a backend above for
  strict exclusion.

Expiry is judged on the local clock: a taker waits ``safety_margin_s`` past it. A holder that
renews within ``safety_margin_s`` of expiry, or after it (a starved process), renews only by
the compare-and-swap against its own last write, so it keeps the lease exactly when nobody took
it over in between; otherwise it learns that it lost the lease. Exclusion is the swap's, and a
holder that believes in a lease it lost is fenced.

A lease whose holder ran on the taker's host and whose process is gone (the pid no longer exists,
is a zombie, or belongs to a process started later: a reused pid) is taken at once, without
waiting for its expiry; a holder elsewhere, or one that cannot be judged, is waited for.

Each acquisition gets a strictly larger ``generation``: the fencing token. Writers carry the
generation they were started under (:class:`storage.fencing.Fence`) and storage refuses their
commits, deletes and events once a newer generation holds the lease, so a holder that outlived
its lease (frozen, partitioned) cannot change the run. ``ttl_s`` has a floor,
``storage.constants.MIN_LEASE_TTL_S``.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any

from fsspec.spec import AbstractFileSystem

from storage.constants import (
    DEFAULT_LEASE_SAFETY_MARGIN_S,
    DEFAULT_LEASE_TTL_S,
    MIN_LEASE_TTL_S,
)
from storage.errors import InvalidNameError, LeaseHeldError, LeaseLostError, SpotrainError
from storage.lease_backends import CasBackend, backend_for
from storage.lease_holder import HolderProcess, holder_gone
from storage.location import RunLocation
from storage.retry import RetryOptions, call_with_retry

logger = logging.getLogger(__name__)


class LeaseSettingError(SpotrainError, ValueError):
    """A lease setting (TTL, safety margin) that cannot give exclusion; never retryable."""


@dataclass(frozen=True)
class LeaseInfo:
    """What ``lease.json`` says."""

    holder: str
    expires_at: float
    generation: int
    released: bool
    nonce: str
    #: the holder's process (None in bodies written before it was recorded)
    process: HolderProcess | None = None

    def active(self, now: float) -> bool:
        return not self.released and now < self.expires_at

    def to_json(self) -> bytes:
        return json.dumps(
            {
                "holder": self.holder,
                "expires_at": self.expires_at,
                "expires_at_iso": _iso(self.expires_at),
                "generation": self.generation,
                "released": self.released,
                "nonce": self.nonce,
                "process": None if self.process is None else self.process.to_dict(),
            },
            sort_keys=True,
        ).encode()

    @classmethod
    def from_json(cls, data: bytes) -> LeaseInfo | None:
        try:
            d = json.loads(data)
            return cls(
                holder=str(d["holder"]),
                expires_at=float(d["expires_at"]),
                generation=int(d.get("generation", 0)),
                released=bool(d.get("released", False)),
                nonce=str(d.get("nonce", "")),
                process=HolderProcess.from_dict(d.get("process")),
            )
        except (ValueError, KeyError, TypeError):
            return None


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, tz=timezone.utc).isoformat(timespec="seconds")


class Lease:
    """Exclusive, expiring ownership of a run; see the module docstring for guarantees.

    ``acquire()`` raises :class:`LeaseHeldError` naming the holder and expiry; ``renew()``
    extends it (call it every ``ttl_s / 5``); ``release()`` hands it back. Usable as a context
    manager (acquire on enter, release on exit).
    """

    def __init__(
        self,
        run: str | RunLocation,
        holder_id: str,
        ttl_s: float = DEFAULT_LEASE_TTL_S,
        storage_options: Mapping[str, Any] | None = None,
        *,
        safety_margin_s: float = DEFAULT_LEASE_SAFETY_MARGIN_S,
        retry: RetryOptions | None = None,
        fs: AbstractFileSystem | None = None,
        clock: Callable[[], float] = time.time,
        process: HolderProcess | None = None,
    ) -> None:
        if not isinstance(holder_id, str) or not holder_id.strip():
            raise InvalidNameError(
                f"holder_id={holder_id!r}; fix: pass a non-empty id (e.g. host:pid)"
            )
        if ttl_s < MIN_LEASE_TTL_S:
            raise LeaseSettingError(
                f"lease ttl_s={ttl_s} is below the floor of {MIN_LEASE_TTL_S}s; fix: set "
                f"SPOTRAIN_LEASE_TTL_S to at least {MIN_LEASE_TTL_S:g}"
            )
        if ttl_s <= 2 * safety_margin_s:
            raise LeaseSettingError(
                f"ttl_s={ttl_s} must exceed 2 * safety_margin_s={safety_margin_s}; fix: raise "
                "ttl_s (SPOTRAIN_LEASE_TTL_S) or lower the margin (SPOTRAIN_LEASE_SAFETY_MARGIN_S)"
            )
        self.loc = RunLocation.resolve(run, storage_options, fs=fs)
        self.holder_id = holder_id
        self.ttl_s = float(ttl_s)
        self.safety_margin_s = float(safety_margin_s)
        self.retry = retry or RetryOptions()
        self.clock = clock
        #: the process recorded as holder (default: this one); a taker on its host checks it
        self.process = process or HolderProcess.current()
        self._mine: LeaseInfo | None = None
        self._token: str | None = None
        self._cas: CasBackend = backend_for(self.loc, self.loc.lease_path, self._call)

    # -- public ------------------------------------------------------------------------------
    @property
    def path(self) -> str:
        return self.loc.lease_path

    @property
    def generation(self) -> int | None:
        """The generation this holder acquired (its fencing token), or None when not held."""
        return None if self._mine is None else self._mine.generation

    @property
    def held(self) -> bool:
        return self._mine is not None and self.clock() < self._mine.expires_at

    def read(self) -> LeaseInfo | None:
        """The current lease document, or None when there is none."""
        info, _ = self._read()
        return info

    def acquire(self) -> LeaseInfo:
        """Take the lease or raise LeaseHeldError(holder, expires_at)."""
        info, token = self._read()
        now = self.clock()
        if token is None:  # no lease.json at all
            new = self._new_info(0)
            new_token = self._cas.create(new.to_json())
            if new_token is None:
                return self._raise_held("acquire")
        else:
            # a taker waits safety_margin_s past the expiry (see the module docstring)
            if (
                info is not None
                and info.holder != self.holder_id
                and info.active(now - self.safety_margin_s)
            ):
                if not holder_gone(info.process, self.process):
                    self._raise_held("acquire", info)
                logger.warning(
                    "[run=%s] lease holder %s (pid %s on this host) is gone: taking its lease "
                    "over without waiting for its expiry at %s",
                    self.loc.url,
                    info.holder,
                    info.process.pid if info.process else "?",
                    _iso(info.expires_at),
                )
            new = self._new_info(info.generation + 1 if info else 0)
            new_token = self._cas.replace(new.to_json(), token)
            if new_token is None:
                return self._raise_held("acquire")
        self._mine, self._token = new, new_token
        logger.info(
            "[run=%s] lease acquired by %s until %s (generation %d)",
            self.loc.url,
            self.holder_id,
            _iso(new.expires_at),
            new.generation,
        )
        return new

    def renew(self) -> LeaseInfo:
        """Extend the lease by ``ttl_s``; LeaseLostError if it was taken over. A late renewal
        (past ``expires_at - safety_margin_s``) still succeeds when nobody took the lease."""
        if self._mine is None or self._token is None:
            raise LeaseLostError(
                f"lease of {self.loc.url} is not held by {self.holder_id}; fix: acquire() first",
                self.loc.url,
            )
        late = self.clock() > self._mine.expires_at - self.safety_margin_s
        if late:
            # Past the margin a taker may be writing: the swap below decides. It succeeds only
            # if nobody wrote lease.json since this holder's last write (then nobody took the
            # run, and renewing keeps a starved holder, e.g. on an overloaded machine, going);
            # if a taker won, it fails and the lease is lost. Fencing covers the gap.
            logger.warning(
                "[run=%s] lease of %s renewed late (its expiry: %s); fix: renew more often "
                "than ttl_s=%s, or give the driver more CPU",
                self.loc.url,
                self.holder_id,
                _iso(self._mine.expires_at),
                self.ttl_s,
            )
        new = self._new_info(self._mine.generation)
        token = self._cas.replace(new.to_json(), self._token)
        if token is None:
            self._mine = self._token = None
            current = self.read()
            raise LeaseLostError(
                f"lease of {self.loc.url} was taken over by "
                f"{current.holder if current else 'nobody'}; stop driving this run",
                self.loc.url,
                current.holder if current else None,
                current.expires_at if current else None,
            )
        self._mine, self._token = new, token
        return new

    def release(self) -> None:
        """Give the lease back (it is marked released, so the next acquirer need not wait)."""
        if self._mine is None or self._token is None:
            return
        released = LeaseInfo(
            holder=self.holder_id,
            expires_at=self.clock(),
            generation=self._mine.generation,
            released=True,
            nonce=uuid.uuid4().hex,
            process=self.process,
        )
        if self._cas.replace(released.to_json(), self._token) is None:
            logger.warning(
                "[run=%s] lease of %s was already taken over at release",
                self.loc.url,
                self.holder_id,
            )
        self._mine = self._token = None

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()

    # -- internals ---------------------------------------------------------------------------
    def _new_info(self, generation: int) -> LeaseInfo:
        return LeaseInfo(
            holder=self.holder_id,
            expires_at=self.clock() + self.ttl_s,
            generation=generation,
            released=False,
            nonce=uuid.uuid4().hex,
            process=self.process,
        )

    def _raise_held(self, what: str, info: LeaseInfo | None = None) -> LeaseInfo:
        if info is None:
            info = self.read()
        holder = info.holder if info else "unknown"
        expires = info.expires_at if info else None
        when = _iso(expires) if expires is not None else "unknown"
        raise LeaseHeldError(
            f"run {self.loc.url} is held by {holder} until {when}; {self.holder_id} could not "
            f"{what} its lease; fix: wait for that coordinator to finish or its lease to expire "
            "(or stop it)",
            self.loc.url,
            holder,
            expires,
        )

    def _call(self, what: str, fn: Callable[[], Any]) -> Any:
        return call_with_retry(
            fn, what=what, url=self.loc.url, options=self.retry, redact=self.loc.redact
        )

    def _read(self) -> tuple[LeaseInfo | None, str | None]:
        """(lease, version); (None, None) when absent. A garbled file gives (None, version)."""
        data, version = self._cas.read()
        return (None if data is None else LeaseInfo.from_json(data)), version
