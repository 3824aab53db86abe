"""A warm spare imports at idle CPU priority while training runs on this host.

A spare's preload (:mod:`trainer.warm`: TensorFlow, ~2.6 CPU-s) that runs beside training
workers on the same cores slows their steps. Measured on 2 cores with two CPU workers
(``python bench/spare_import.py``, medians of 3): two spares importing at normal priority cut
the workers' steps/s over the next 15 s to 0.59x; under ``SCHED_IDLE`` to 1.00x (no import:
1.07x, the noise). The idle imports took 20 s instead of 13 s.

So the preload looks for a training worker stepping on this host (:func:`mark_training`: a
marker file per worker process, written at its first step) and, when it finds one, imports
under ``SCHED_IDLE`` (:func:`idle_priority`): the import then runs on cycles the workers leave.
It goes back to ``SCHED_OTHER`` when the import is done, or after ``deadline_s`` at the latest
(a helper process resets it), so that on a host whose CPUs training keeps busy the spare is
still warm before long. A process may leave ``SCHED_IDLE`` only with ``CAP_SYS_NICE`` (root, or
a pod that adds it) or an ``RLIMIT_NICE`` that allows nice 0; without either the import runs at
normal priority, as it would without this module. Linux only.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import select
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

#: After this long under SCHED_IDLE a spare's import goes on at normal priority.
DEFAULT_IDLE_DEADLINE_S = 15.0
_CAP_SYS_NICE = 23  # capability bit (linux/capability.h)


def marker_dir() -> Path:
    """Where this host's training workers leave their markers (one per process)."""
    return Path(tempfile.gettempdir()) / f"spotrain-training-{os.getuid()}"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks (``/proc/PID/stat`` field 22): with the pid, it
    names one process, however pids are reused. None: no such process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def mark_training() -> None:
    """Note that this process trains (until :func:`unmark_training` or its end)."""
    started = _start_time(os.getpid())
    if started is None:
        return
    try:
        marker_dir().mkdir(mode=0o700, exist_ok=True)
        (marker_dir() / str(os.getpid())).write_text(started)
    except OSError as exc:  # without it spares import at normal priority: only slower training
        logger.debug("could not write the training marker: %s", exc)


def unmark_training() -> None:
    with contextlib.suppress(OSError):
        (marker_dir() / str(os.getpid())).unlink()


def training_on_this_host() -> bool:
    """Whether a live process has marked itself as training (stale markers are removed)."""
    try:
        markers = list(marker_dir().iterdir())
    except OSError:
        return False
    found = False
    for marker in markers:
        with contextlib.suppress(OSError):
            pid = int(marker.name) if marker.name.isdigit() else 0
            if pid and _start_time(pid) == marker.read_text():
                found = True
            else:
                marker.unlink()
    return found


def can_leave_idle() -> bool:
    """Whether this process may go back from SCHED_IDLE to SCHED_OTHER (see the module doc)."""
    if not hasattr(os, "sched_setscheduler") or not hasattr(os, "SCHED_IDLE"):
        return False
    soft, _ = resource.getrlimit(resource.RLIMIT_NICE)
    if soft == resource.RLIM_INFINITY or soft >= 20:
        return True
    try:
        status = Path("/proc/self/status").read_text()
    except OSError:
        return False
    effective = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("CapEff:")), "0")
    return bool(int(effective, 16) >> _CAP_SYS_NICE & 1)


def restore_threads(pid: int) -> None:
    """Put every thread of ``pid`` that runs under SCHED_IDLE back to SCHED_OTHER."""
    normal = os.sched_param(0)
    for tid in os.listdir(f"/proc/{pid}/task"):
        with contextlib.suppress(OSError):
            if os.sched_getscheduler(int(tid)) == os.SCHED_IDLE:
                os.sched_setscheduler(int(tid), os.SCHED_OTHER, normal)


@contextlib.contextmanager
def idle_priority(deadline_s: float = DEFAULT_IDLE_DEADLINE_S) -> Iterator[bool]:
    """Run the block under SCHED_IDLE (this thread and the threads it starts); yields whether
    it does. A helper process, started first at normal priority, puts the threads back after
    ``deadline_s``, whatever the block is doing; on leaving the block they go back at once."""
    if not can_leave_idle():
        yield False
        return
    helper = None
    try:
        helper = subprocess.Popen(
            [sys.executable, "-m", __name__, str(os.getpid()), str(deadline_s)],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    except OSError as exc:  # no deadline without the helper: stay at normal priority
        logger.debug("could not import at idle priority: %s", exc)
        if helper is not None:
            _stop(helper)
        yield False
        return
    try:
        yield True
    finally:
        restore_threads(os.getpid())
        _stop(helper)


def _stop(helper: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(OSError):
        assert helper.stdin is not None
        helper.stdin.close()  # end of file: the helper exits
    with contextlib.suppress(subprocess.TimeoutExpired):
        helper.wait(timeout=5)


def _helper_main(pid: int, deadline_s: float) -> None:
    """Wait for the parent to close stdin; past ``deadline_s``, restore its threads."""
    ready, _, _ = select.select([sys.stdin], [], [], deadline_s)
    if not ready:
        restore_threads(pid)


if __name__ == "__main__":
    _helper_main(int(sys.argv[1]), float(sys.argv[2]))
