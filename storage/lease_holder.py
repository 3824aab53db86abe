"""Who holds a lease, as a process: enough to tell, on the holder's own host, that it is gone.

A lease body carries the holder's :class:`HolderProcess`: host name, boot id, pid namespace, pid
and the process's start time (``/proc/<pid>/stat`` field 22, clock ticks since boot). A taker on
the same host (same name, same boot, same pid namespace) can then see that the holder died
(SIGKILL, OOM, a crash) and take the lease at once instead of waiting for its TTL:
:func:`holder_gone` is True only when the pid no longer exists, is a zombie, or is another
process (its start time differs: the pid was reused). Anything it cannot prove (another host,
another container's pid namespace, no ``/proc`` as on macOS, a body without the fields) is
"maybe alive": the taker waits for the TTL as before. Reading ``/proc`` is Linux-only.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from typing import Any

__all__ = ["HolderProcess", "holder_gone", "process_start_ticks"]


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def process_start_ticks(pid: int) -> int | None:
    """The start time of live process ``pid`` (clock ticks since boot); None when there is no
    such process, it is a zombie (dead, not yet reaped), or ``/proc`` cannot tell."""
    stat = _read(f"/proc/{pid}/stat")
    if not stat:
        return None
    try:
        fields = stat.rsplit(")", 1)[1].split()  # the name (field 2) may hold spaces and ")"
        state, start = fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    except (IndexError, ValueError):
        return None
    return None if state in ("Z", "X", "x") else start


@dataclass(frozen=True)
class HolderProcess:
    """The process that holds (or held) a lease."""

    host: str
    boot_id: str
    pid_namespace: str
    pid: int
    start_ticks: int | None

    @classmethod
    def of(cls, pid: int) -> HolderProcess:
        """Process ``pid`` of this host (its start time read now)."""
        return cls(
            host=socket.gethostname(),
            boot_id=_read("/proc/sys/kernel/random/boot_id"),
            pid_namespace=_pid_namespace(),
            pid=pid,
            start_ticks=process_start_ticks(pid),
        )

    @classmethod
    def current(cls) -> HolderProcess:
        return cls.of(os.getpid())

    def same_host(self, other: HolderProcess) -> bool:
        """Whether both run on one host and see one pid space (so a pid means the same)."""
        mine = (self.host, self.boot_id, self.pid_namespace)
        theirs = (other.host, other.boot_id, other.pid_namespace)
        return bool(self.boot_id and self.pid_namespace) and mine == theirs

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "boot_id": self.boot_id,
            "pid_namespace": self.pid_namespace,
            "pid": self.pid,
            "start_ticks": self.start_ticks,
        }

    @classmethod
    def from_dict(cls, d: Any) -> HolderProcess | None:
        """The holder recorded in a lease body; None when absent or malformed (older bodies)."""
        if not isinstance(d, dict):
            return None
        try:
            ticks = d.get("start_ticks")
            return cls(
                host=str(d["host"]),
                boot_id=str(d.get("boot_id", "")),
                pid_namespace=str(d.get("pid_namespace", "")),
                pid=int(d["pid"]),
                start_ticks=None if ticks is None else int(ticks),
            )
        except (KeyError, TypeError, ValueError):
            return None


def holder_gone(holder: HolderProcess | None, here: HolderProcess | None = None) -> bool:
    """True only when ``holder`` provably no longer runs; see the module docstring.

    ``here`` is the taker's own process (default: this one)."""
    if holder is None or holder.start_ticks is None:
        return False
    here = here or HolderProcess.current()
    if not here.same_host(holder):
        return False  # another host or pid namespace: its pids mean nothing here; wait the TTL
    return process_start_ticks(holder.pid) != holder.start_ticks
