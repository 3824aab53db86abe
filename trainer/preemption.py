"""Preemption notices: SIGTERM sets a flag; the callback polls it (and Ray) at step boundaries."""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

logger = logging.getLogger(__name__)


class PreemptionFlag:
    """Set by SIGTERM (or by hand) and read at the next poll. Chains a previous handler."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.reason = ""
        self._previous: Any = None
        self._installed = False

    def set(self, reason: str = "manual") -> None:
        self.reason = reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def clear(self) -> None:
        self._event.clear()
        self.reason = ""

    def install(self) -> bool:
        """Catch SIGTERM; only possible in the main thread (Ray runs train fns in a thread,
        where the Ray preemption poll is the notice path)."""
        if self._installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            logger.debug("not in the main thread: SIGTERM handler not installed")
            return False
        self._previous = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        self._installed = True
        return True

    def uninstall(self) -> None:
        if self._installed and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, self._previous or signal.SIG_DFL)
        self._installed = False

    def _on_sigterm(self, signum: int, frame: Any) -> None:
        logger.warning("SIGTERM received: saving at the next step boundary, then stopping")
        self.set("SIGTERM")
