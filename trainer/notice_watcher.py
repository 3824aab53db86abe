"""Preemption notices seen at any moment, acted on where every rank agrees.

A notice (SIGTERM, Ray's drain notice) can come while the workers start (collective set-up,
model build), restore, or run a long step. :class:`NoticeWatcher` reads this worker's sources
from a daemon thread every ``interval_s`` and remembers the first notice and when it saw it, so
a notice is seen within about a second whatever the training thread is doing. Acting on it stays
on the training thread, at program points every rank reaches in the same order, where the
ranks agree through one collective (:func:`trainer.state.gather_rows`):

- before the attempt trains its first step (``BackupAndRestore.on_train_begin``, after the
  restore): a notice ends the attempt at once; nothing was trained, so nothing is saved and the
  next attempt restores the same committed step;
- at step boundaries chosen by :class:`PollSchedule`: the first boundary of the attempt, then
  every ``preemption_poll_steps`` steps (on their multiples), sooner when steps are long, so
  that a notice is acted on about ``poll_s`` seconds of the slowest rank's steps after it came.

Sources are read without any barrier (Ray's ``get_preemption_info()`` is one): a drain of this
worker's node (:meth:`trainer.cluster_context.WorkerContext.local_preemption_notice`, one small
GCS read; or Ray Train's own notice where a user turned its watcher on) and the SIGTERM flag
(:class:`trainer.preemption.PreemptionFlag`).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from trainer.constants import DEFAULT_NOTICE_WATCH_S, DEFAULT_PREEMPTION_POLL_S
from trainer.preemption import PreemptionFlag

logger = logging.getLogger(__name__)

#: Reasons a notice is reported with (the ``reason`` of the ``preemption`` event).
SIGTERM = "SIGTERM"
RAY_NOTICE = "ray-preemption-notice"


@dataclass(frozen=True)
class Notice:
    """One notice: why, Ray's notice text (None for SIGTERM), and when it was first seen."""

    reason: str
    text: str | None
    seen_at: float


class NoticeWatcher:
    """Watches this worker's notice sources from a daemon thread; use as a context manager.

    ``ignore(text)``: a Ray notice already handled (the save this attempt resumed from was made
    for it; the node is still draining) is not a new notice.
    """

    def __init__(
        self,
        worker: Any,
        flag: PreemptionFlag | None = None,
        interval_s: float = DEFAULT_NOTICE_WATCH_S,
    ) -> None:
        self.worker = worker
        self.flag = flag
        self.interval_s = interval_s
        self._ignored: set[str] = set()
        self._seen: Notice | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._read_failed = False

    def start(self) -> NoticeWatcher:
        if self._thread is None and self.interval_s > 0:
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name="spotrain-notice-watcher", daemon=True
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout=max(1.0, 2 * self.interval_s))

    def __enter__(self) -> NoticeWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ignore(self, text: str | None) -> None:
        """Do not report the Ray notice ``text`` (already handled)."""
        if not text:
            return
        with self._lock:
            self._ignored.add(text)
            if self._seen is not None and self._seen.text == text:
                self._seen = None

    def check(self) -> Notice | None:
        """The first notice seen so far, reading the sources now as well (the flag; one small
        GCS read for the node's drain)."""
        self._observe()
        with self._lock:
            return self._seen

    def _observe(self) -> None:
        reason, text = self._read()
        if not reason:
            return
        with self._lock:
            if self._seen is not None or (text is not None and text in self._ignored):
                return
            self._seen = Notice(reason, text, time.time())
        logger.warning(
            "[rank=%d] preemption notice seen (%s); acting on it at the next point where the "
            "ranks agree",
            getattr(self.worker, "rank", 0),
            reason,
        )

    def _read(self) -> tuple[str, str | None]:
        if self.flag is not None and self.flag.is_set():
            return SIGTERM, None
        try:
            info = self.worker.local_preemption_notice()
        except Exception:  # thread boundary: an unreadable source is logged once, not fatal
            if not self._read_failed:
                self._read_failed = True
                logger.warning("could not read the preemption notice", exc_info=True)
            return "", None
        return (RAY_NOTICE, str(info)) if info is not None else ("", None)

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self._observe()


class PollSchedule:
    """The step boundaries at which the ranks poll for a notice (a collective each).

    Every rank computes the same schedule: it depends only on the steps and on values the ranks
    agreed on at the previous poll (the slowest rank's seconds per step). Polls come at the
    first boundary of the attempt, then on multiples of ``every_steps``; when ``every_steps``
    steps of the slowest rank take longer than ``poll_s``, after ``poll_s`` worth of its steps
    instead (at least one step). ``every_steps`` 0: never.
    """

    def __init__(self, every_steps: int, poll_s: float = DEFAULT_PREEMPTION_POLL_S) -> None:
        self.every_steps = every_steps
        self.poll_s = poll_s
        self._next: int | None = None  # None: the first boundary reached
        self._since: tuple[int, float] | None = None  # (step, perf_counter) of the last poll

    def begin(self, g: int) -> None:
        """The attempt starts training at step ``g``: its first boundary polls."""
        self._next = None
        self._since = (g, time.perf_counter())

    def due(self, g: int) -> bool:
        if not self.every_steps:
            return False
        return self._next is None or g >= self._next

    def step_seconds(self, g: int) -> float:
        """This rank's mean seconds per step since the last poll (0: unknown yet)."""
        if self._since is None or g <= self._since[0]:
            return 0.0
        return (time.perf_counter() - self._since[1]) / (g - self._since[0])

    def polled(self, g: int, slowest_step_s: float) -> None:
        """A poll at ``g`` happened; ``slowest_step_s``: the agreed max of ``step_seconds``."""
        k = self.every_steps
        on_grid = g - g % k + k
        if slowest_step_s > 0 and self.poll_s > 0 and slowest_step_s * k > self.poll_s:
            steps = max(1, math.floor(self.poll_s / slowest_step_s))
            self._next = min(g + steps, on_grid)
        else:
            self._next = on_grid
        self._since = (g, time.perf_counter())


def agree(
    strategy: Any, local: str, step_s: float, own_rows: np.ndarray | None = None
) -> tuple[str, float, np.ndarray | None]:
    """One collective across the ranks: the agreed notice (``local``, ``"peer-notice"`` when
    only another rank saw one, "" for none), the slowest rank's ``step_s``, and every rank's
    ``own_rows`` when given."""
    from trainer import state as st  # TensorFlow: not at import (the driver imports this module)

    head = np.array([1.0 if local else 0.0, step_s])
    row = head if own_rows is None else np.concatenate([head, own_rows])
    gathered = st.gather_rows(strategy, row)
    rows = None if own_rows is None else gathered[:, 2:]
    reason = (local or "peer-notice") if gathered[:, 0].max() > 0 else ""
    return reason, float(gathered[:, 1].max()), rows
