"""Fakes with failure switches, wrapping real filesystems (no mocks of internals).

``FaultyFileSystem(fs)`` forwards every attribute to a real fsspec filesystem and can make
chosen methods fail: ``fail("put_file", OSError(errno.ECONNRESET, "reset"), times=2)`` fails
the first two calls, ``after=k`` lets k calls through first. ``hold("put_file", fn, after=k)`` runs ``fn()`` before
call k+1 goes through (a slow or stuck upload; ``fn`` may wait, sleep or kill the process).
``calls`` counts calls per method.
Pass it as ``fs=`` to CheckpointStore / RunRecord / Lease.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fsspec.spec import AbstractFileSystem


@dataclass
class _Fault:
    exc: BaseException | Callable[[], BaseException]
    times: int | None  # None = forever
    after: int
    seen: int = 0
    raised: int = 0


@dataclass
class _Hold:
    fn: Callable[[], None]
    times: int | None
    after: int
    seen: int = 0
    ran: int = 0


class FaultyFileSystem:
    """A real fsspec filesystem with per-method failure switches."""

    def __init__(self, fs: AbstractFileSystem) -> None:
        self._fs = fs
        self._faults: dict[str, _Fault] = {}
        self._holds: dict[str, _Hold] = {}
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()

    def fail(
        self,
        method: str,
        exc: BaseException | Callable[[], BaseException],
        times: int | None = 1,
        after: int = 0,
    ) -> FaultyFileSystem:
        """Make calls ``after+1 .. after+times`` of ``method`` raise ``exc`` (None: forever)."""
        if not callable(getattr(self._fs, method, None)):
            raise AttributeError(f"{type(self._fs).__name__} has no method {method}")
        self._faults[method] = _Fault(exc, times, after)
        return self

    def hold(
        self, method: str, fn: Callable[[], None], after: int = 0, times: int | None = 1
    ) -> FaultyFileSystem:
        """Run ``fn()`` before calls ``after+1 .. after+times`` of ``method`` go through."""
        if not callable(getattr(self._fs, method, None)):
            raise AttributeError(f"{type(self._fs).__name__} has no method {method}")
        self._holds[method] = _Hold(fn, times, after)
        return self

    def clear(self) -> None:
        self._faults.clear()
        self._holds.clear()

    def raised(self, method: str) -> int:
        fault = self._faults.get(method)
        return fault.raised if fault else 0

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._fs, name)
        if name.startswith("__") or not callable(attr):
            return attr

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls[name] += 1
                fault = self._faults.get(name)
                boom: BaseException | None = None
                held: Callable[[], None] | None = None
                hold = self._holds.get(name)
                if hold is not None:
                    hold.seen += 1
                    if hold.seen > hold.after and (hold.times is None or hold.ran < hold.times):
                        hold.ran += 1
                        held = hold.fn
                if fault is not None:
                    fault.seen += 1
                    if fault.seen > fault.after and (
                        fault.times is None or fault.raised < fault.times
                    ):
                        fault.raised += 1
                        boom = fault.exc() if callable(fault.exc) else fault.exc
            if held is not None:
                held()  # outside the lock: other calls go on meanwhile
            if boom is not None:
                raise boom
            return attr(*args, **kwargs)

        return wrapper


def corrupt_file(fs: AbstractFileSystem, path: str, offset: int | None = None) -> None:
    """Flip one byte of ``path`` on ``fs`` (the middle one by default); the size is unchanged."""
    data = bytearray(fs.cat_file(path))
    if not data:
        raise ValueError(f"cannot corrupt empty file {path}")
    i = len(data) // 2 if offset is None else offset
    data[i] ^= 0xFF
    fs.pipe_file(path, bytes(data))
    fs.invalidate_cache(path)
