"""The run record: ``run.json`` (spec + fingerprint) and an append-only event log.

Event kinds, their payloads, one writer per kind and the named queries readers use live in
:mod:`storage.events`; this module stores and orders the objects.

Guarantees:

- **One object per event**, ``<run>/events/<generation>-<writer>-<seq:08d>-<kind>.json``.
  ``generation`` is the writer's lease generation (its :class:`~storage.fencing.Fence`; -1 for an
  unfenced writer, e.g. the drop-in callback outside ``spotrain run``), ``writer`` a random id per
  process (new after ``fork``), ``seq`` a per-writer counter. No clock is in the name.
- **Order = (generation, seq, writer), never a clock.** A newer generation sorts after every
  event of an older one; one writer's events keep their write order. The counter is a Lamport
  clock: it starts at 0 and jumps past every seq the process has read (:meth:`RunRecord.events`),
  so an event written after reading another sorts after it. Writers that have not read each other
  interleave arbitrarily within a generation: queries that need an order across writers answer
  from content (attempt numbers, steps), see :mod:`storage.events`. ``Event.time`` (the writer's
  wall clock) is for display and durations only.
- **Old names** ``<unix ns:020d>-<writer>-<kind>.json`` (written by spotrain before fencing) are
  read as generation -1, before any new-style event of that generation, ordered by their ns.
- **Create-only, atomic writes.** An event is created with the lease's compare-and-swap backend
  (:mod:`storage.lease_backends`: ``os.link`` of a fsynced temp file on local disks, ``If-None-Match``
  on S3, a locked check on ``memory://``): it never overwrites another and is never visible half
  written (a killed writer leaves a ``*.tmp`` file that readers ignore). ``run.json`` is replaced
  atomically on local disks (temp file + ``os.replace``); object stores are atomic per PUT.
- **Fenced.** With a ``fence``, every event write and :meth:`RunRecord.write_spec` first checks
  the lease; a writer of an older generation gets :class:`StaleWriterError` and writes nothing.
- **Readers never crash on one bad event**: an unreadable object under a valid name is skipped
  with a warning.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fsspec.spec import AbstractFileSystem

from storage.constants import SPOTRAIN_VERSION
from storage.errors import InvalidNameError
from storage.fencing import Fence
from storage.lease_backends import backend_for
from storage.location import RunLocation
from storage.manifest import dumps_json
from storage.retry import RetryOptions, call_with_retry

logger = logging.getLogger(__name__)

KIND_RE = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
#: The generation of a writer without a fence (read-only commands, the drop-in callback).
UNFENCED_GENERATION = -1
SEQ_DIGITS = 8
_EVENT_NAME_RE = re.compile(r"^(-?\d{1,8})-([0-9a-f]{8})-(\d{8,})-([a-z][a-z0-9_]{0,63})\.json$")
_LEGACY_NAME_RE = re.compile(r"^(\d{20})-([0-9a-f]{8})-([a-z][a-z0-9_]{0,63})\.json$")
#: Name collisions (two processes drew the same writer id) retried with the next seq.
_CREATE_ATTEMPTS = 5


class _Writer:
    """This process's writer id and its Lamport counter (shared by all records of a process)."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.reset()

    def reset(self) -> None:
        self.id = uuid.uuid4().hex[:8]
        self.seq = 0

    def next(self) -> int:
        with self.lock:
            self.seq += 1
            return self.seq

    def observe(self, seq: int) -> None:
        with self.lock:
            self.seq = max(self.seq, seq)


_WRITER = _Writer()

if hasattr(os, "register_at_fork"):  # a forked child is another writer
    os.register_at_fork(after_in_child=_WRITER.reset)


def _kind_name(kind: str) -> str:
    """The plain string of a kind (``storage.events.Kind`` members are str enums)."""
    return str(getattr(kind, "value", kind))


def spec_fingerprint(spec: Mapping[str, Any]) -> str:
    """sha256 (hex) of the spec's canonical JSON: equal specs give equal fingerprints."""
    return hashlib.sha256(dumps_json(dict(spec), what="run spec").encode()).hexdigest()


@dataclass(frozen=True)
class Event:
    """One entry of the run's event log.

    ``(generation, seq, writer)`` is its place in the log (see the module docstring); ``time``
    is the writer's wall clock in unix seconds, for display and durations only."""

    seq: int
    kind: str
    time: float
    payload: dict[str, Any] = field(default_factory=dict)
    generation: int = UNFENCED_GENERATION
    writer: str = ""
    legacy: bool = False  # an old-style name: ``seq`` is the writer's unix ns

    @property
    def order(self) -> tuple[int, int, int, str]:
        return (self.generation, 0 if self.legacy else 1, self.seq, self.writer)

    @property
    def name(self) -> str:
        """The object name (unique in the run)."""
        if self.legacy:
            return f"{self.seq:020d}-{self.writer}-{self.kind}.json"
        return f"{self.generation:08d}-{self.writer}-{self.seq:0{SEQ_DIGITS}d}-{self.kind}.json"

    def to_dict(self) -> dict[str, Any]:
        return {
            "generation": self.generation,
            "writer": self.writer,
            "seq": self.seq,
            "kind": self.kind,
            "time": self.time,
            "payload": self.payload,
        }


def parse_event_name(name: str) -> Event | None:
    """The place and kind an object name encodes (``time`` 0, no payload), or None."""
    m = _EVENT_NAME_RE.match(name)
    if m:
        gen, writer, seq, kind = m.groups()
        return Event(seq=int(seq), kind=kind, time=0.0, generation=int(gen), writer=writer)
    m = _LEGACY_NAME_RE.match(name)
    if m:
        ns, writer, kind = m.groups()
        return Event(seq=int(ns), kind=kind, time=0.0, writer=writer, legacy=True)
    return None


class RunRecord:
    """``run.json`` and the event log of one run.

    ``run`` is the run's :class:`RunLocation`, or its URL (then resolved with
    ``storage_options`` and ``fs``, see :meth:`RunLocation.from_url`). ``fence``: the lease
    generation this writer runs under (None: unfenced, generation -1). ``clock``: the wall
    clock stamped into ``Event.time`` and ``run.json`` (tests skew it).
    """

    def __init__(
        self,
        run: str | RunLocation,
        storage_options: Mapping[str, Any] | None = None,
        *,
        retry: RetryOptions | None = None,
        fs: AbstractFileSystem | None = None,
        fence: Fence | None = None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.loc = RunLocation.resolve(run, storage_options, fs=fs)
        self.retry = retry or RetryOptions()
        self.fence = fence
        self.clock = clock or time.time

    @property
    def url(self) -> str:
        return self.loc.url

    @property
    def generation(self) -> int:
        return self.fence.generation if self.fence is not None else UNFENCED_GENERATION

    def _call(self, what: str, fn: Any) -> Any:
        return call_with_retry(
            fn, what=what, url=self.loc.url, options=self.retry, redact=self.loc.redact
        )

    # -- spec ------------------------------------------------------------------------------
    def write_spec(self, spec: Mapping[str, Any]) -> str:
        """Write ``run.json`` atomically (keeps the first ``created``); return the fingerprint."""
        if self.fence is not None:
            self.fence.check("write run.json")
        fingerprint = spec_fingerprint(spec)
        previous = self.read_spec()
        now = self.clock()
        doc = {
            "spec": dict(spec),
            "fingerprint": fingerprint,
            "created": previous["created"] if previous else now,
            "updated": now,
            "spotrain_version": SPOTRAIN_VERSION,
        }
        data = dumps_json(doc, what="run spec").encode()
        self._call("write run.json", lambda: self._replace(self.loc.run_json, data))
        return fingerprint

    def _replace(self, path: str, data: bytes) -> None:
        """Write ``path`` whole: temp file + fsync + ``os.replace`` locally, one PUT elsewhere."""
        if not self.loc.is_local:
            self.loc.fs.pipe_file(path, data)
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex}.tmp"
        try:
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

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
        """Record one event (its own object, created once); return it.

        Use the typed writers of :mod:`storage.events`. Raises :class:`StaleWriterError` (and
        writes nothing) when the fence's generation is no longer the lease's."""
        if not isinstance(kind, str) or not KIND_RE.match(kind):
            raise InvalidNameError(
                f"event kind={kind!r} is not allowed; fix: use [a-z][a-z0-9_]* (e.g. 'restore')"
            )
        kind = _kind_name(kind)
        if self.fence is not None:
            self.fence.check(f"event {kind}")
        now = self.clock()
        what = f"write event {kind}"
        for _ in range(_CREATE_ATTEMPTS):
            event = Event(
                seq=_WRITER.next(),
                kind=kind,
                time=now,
                payload=dict(payload),
                generation=self.generation,
                writer=_WRITER.id,
            )
            data = dumps_json(event.to_dict(), what=f"event {kind!r} payload").encode()
            path = f"{self.loc.events_dir}/{event.name}"
            cas = backend_for(self.loc, path, lambda _what, fn: self._call(what, fn))
            if cas.create(data) is not None or cas.read()[0] == data:
                return event
        raise InvalidNameError(  # pragma: no cover - needs repeated writer-id collisions
            f"could not name a new {kind} event in {self.loc.url}; fix: run the writer again"
        )

    def events(self, kinds: Iterable[str] | None = None) -> list[Event]:
        """All events in log order (optionally only ``kinds``); unreadable ones are skipped."""
        wanted = {_kind_name(k) for k in kinds} if kinds is not None else None
        fs = self.loc.fs
        d = self.loc.events_dir
        fs.invalidate_cache(d)
        try:
            names = self._call("list events", lambda: fs.ls(d, detail=False))
        except FileNotFoundError:
            return []
        found: list[tuple[Event, str]] = []
        for p in names:
            place = parse_event_name(p.rsplit("/", 1)[-1])
            if place is None:
                continue
            if not place.legacy:
                _WRITER.observe(place.seq)
            if wanted is None or place.kind in wanted:
                found.append((place, p))
        found.sort(key=lambda pair: pair[0].order)
        if not found:
            return []
        paths = [p for _, p in found]
        blobs = self._call("read events", lambda: fs.cat(paths, on_error="return"))
        out = []
        for place, p in found:
            event = self._parse(place, blobs.get(p), p)
            if event is not None:
                out.append(event)
        return out

    def _parse(self, place: Event, blob: Any, path: str) -> Event | None:
        try:
            if isinstance(blob, BaseException) or blob is None:
                raise ValueError(repr(blob))
            doc = json.loads(blob)
            if str(doc["kind"]) != place.kind:
                raise ValueError(f"kind {doc['kind']!r} differs from the name's {place.kind!r}")
            payload = doc.get("payload", {})
            if not isinstance(payload, dict):
                raise TypeError(f"payload is a {type(payload).__name__}, not an object")
            return Event(
                seq=place.seq,
                kind=place.kind,
                time=float(doc["time"]),
                payload=payload,
                generation=place.generation,
                writer=place.writer,
                legacy=place.legacy,
            )
        except (ValueError, KeyError, TypeError) as exc:
            logger.warning(
                "[run=%s] skipping unreadable event %s: %s",
                self.loc.url,
                self.loc.display(path),
                self.loc.redact(str(exc)),
            )
            return None
