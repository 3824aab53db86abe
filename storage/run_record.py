"""The run record: ``run.json`` (spec + fingerprint) and an append-only event log.

Object stores cannot append, so each event is one small object
``<run>/events/<seq>-<kind>.json``. ``seq`` is ``<unix ns:020d>-<writer id:8 hex>``: it sorts by
time (lexicographic = chronological, within clock skew between machines), and the random writer
id makes it unique across concurrent writers without coordination. Within one process seqs are
strictly increasing even when the clock does not move.

Events are written with a plain write (``pipe_file``), not a create-only one: nothing checks
that the object is absent first. An event is not overwritten in practice because no two writes
share a seq, not because the backend refuses it; writes are neither fenced nor checked against
the lease.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fsspec.spec import AbstractFileSystem

from storage.constants import SPOTRAIN_VERSION
from storage.errors import InvalidNameError
from storage.fencing import Fence
from storage.location import RunLocation
from storage.manifest import dumps_json
from storage.retry import RetryOptions, call_with_retry

logger = logging.getLogger(__name__)

KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_EVENT_NAME_RE = re.compile(r"^(\d{20}-[0-9a-f]{8})-([a-z][a-z0-9_]{0,63})\.json$")

_seq_lock = threading.Lock()
_last_ns = 0
_WRITER_ID = uuid.uuid4().hex[:8]


def _next_seq() -> str:
    global _last_ns, _WRITER_ID
    with _seq_lock:
        now = time.time_ns()
        _last_ns = max(now, _last_ns + 1)
        return f"{_last_ns:020d}-{_WRITER_ID}"


def _reset_writer_id_after_fork() -> None:
    global _WRITER_ID
    _WRITER_ID = uuid.uuid4().hex[:8]


try:
    import os as _os

    _os.register_at_fork(after_in_child=_reset_writer_id_after_fork)
except AttributeError:  # pragma: no cover - non-POSIX
    pass


def spec_fingerprint(spec: Mapping[str, Any]) -> str:
    """sha256 (hex) of the spec's canonical JSON: equal specs give equal fingerprints."""
    return hashlib.sha256(dumps_json(dict(spec), what="run spec").encode()).hexdigest()


@dataclass(frozen=True)
class Event:
    """One entry of the run's event log. ``time`` is unix seconds."""

    seq: str
    kind: str
    time: float
    payload: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"seq": self.seq, "kind": self.kind, "time": self.time, "payload": self.payload}


class RunRecord:
    """``run.json`` and the event log of one run.

    ``run`` is the run's :class:`RunLocation`, or its URL (then resolved with
    ``storage_options`` and ``fs``, see :meth:`RunLocation.from_url`).
    """

    def __init__(
        self,
        run: str | RunLocation,
        storage_options: Mapping[str, Any] | None = None,
        *,
        retry: RetryOptions | None = None,
        fs: AbstractFileSystem | None = None,
        fence: Fence | None = None,
    ) -> None:
        self.loc = RunLocation.resolve(run, storage_options, fs=fs)
        self.retry = retry or RetryOptions()
        self.fence = fence

    @property
    def url(self) -> str:
        return self.loc.url

    def _call(self, what: str, fn: Any) -> Any:
        return call_with_retry(
            fn, what=what, url=self.loc.url, options=self.retry, redact=self.loc.redact
        )

    # -- spec ------------------------------------------------------------------------------
    def write_spec(self, spec: Mapping[str, Any]) -> str:
        """Write ``run.json`` (keeps the first ``created``); return the spec fingerprint."""
        fingerprint = spec_fingerprint(spec)
        previous = self.read_spec()
        doc = {
            "spec": dict(spec),
            "fingerprint": fingerprint,
            "created": previous["created"] if previous else time.time(),
            "updated": time.time(),
            "spotrain_version": SPOTRAIN_VERSION,
        }
        data = dumps_json(doc, what="run spec").encode()
        self._call("write run.json", lambda: self.loc.fs.pipe_file(self.loc.run_json, data))
        return fingerprint

    def read_spec(self) -> dict[str, Any] | None:
        """The ``run.json`` document ``{"spec", "fingerprint", "created", "updated",
        "spotrain_version"}``, or None when the run has none yet."""
        try:
            data = self._call("read run.json", lambda: self.loc.fs.cat_file(self.loc.run_json))
        except FileNotFoundError:
            return None
        doc = json.loads(data)
        if not isinstance(doc, dict) or "spec" not in doc:
            raise InvalidNameError(
                f"{self.loc.display(self.loc.run_json)} is not a spotrain run.json; fix: point "
                "the run URL at a spotrain run directory"
            )
        return doc

    # -- events ----------------------------------------------------------------------------
    def append_event(self, kind: str, **payload: Any) -> Event:
        """Record one event (its own object); return it."""
        if not isinstance(kind, str) or not KIND_RE.match(kind):
            raise InvalidNameError(
                f"event kind={kind!r} is not allowed; fix: use [a-z][a-z0-9_]* (e.g. 'restore')"
            )
        event = Event(seq=_next_seq(), kind=kind, time=time.time(), payload=dict(payload))
        data = dumps_json(event.to_dict(), what=f"event {kind!r} payload").encode()
        path = f"{self.loc.events_dir}/{event.seq}-{kind}.json"
        if self.fence is not None:
            self.fence.check(f"event {kind!r}")
        self._call("write event", lambda: self.loc.fs.pipe_file(path, data))
        return event

    def events(self, kinds: Iterable[str] | None = None) -> list[Event]:
        """All events in seq order (optionally only ``kinds``); unreadable ones are skipped."""
        wanted = set(kinds) if kinds is not None else None
        fs = self.loc.fs
        d = self.loc.events_dir
        fs.invalidate_cache(d)
        try:
            names = self._call("list events", lambda: fs.ls(d, detail=False))
        except FileNotFoundError:
            return []
        paths = []
        for p in sorted(names, key=lambda s: s.rsplit("/", 1)[-1]):
            m = _EVENT_NAME_RE.match(p.rsplit("/", 1)[-1])
            if m and (wanted is None or m.group(2) in wanted):
                paths.append(p)
        if not paths:
            return []
        blobs = self._call("read events", lambda: fs.cat(paths, on_error="return"))
        out = []
        for p in paths:
            blob = blobs.get(p)
            try:
                if isinstance(blob, BaseException) or blob is None:
                    raise ValueError(repr(blob))
                d_ = json.loads(blob)
                out.append(
                    Event(
                        seq=str(d_["seq"]),
                        kind=str(d_["kind"]),
                        time=float(d_["time"]),
                        payload=dict(d_.get("payload", {})),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                logger.warning(
                    "[run=%s] skipping unreadable event %s: %s",
                    self.loc.url,
                    self.loc.display(p),
                    self.loc.redact(str(exc)),
                )
        return out
