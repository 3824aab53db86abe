"""The other callbacks of ``fit`` (EarlyStopping, ReduceLROnPlateau, History...), whose state
and the metrics history are saved and restored with the training state.

A callback's state is its ``get_state()`` / ``set_state()`` JSON (or what
:mod:`trainer.state` knows of the stock Keras callbacks). The history is one
``{"epoch", "logs"}`` entry per finished epoch: the restored entries, then this fit's, read
from Keras' History callback at save time (it holds this fit's epochs only, as in tf-keras),
or recorded here when ``fit`` has none; plus the epoch that just ended when a callback raised
in its ``on_epoch_end`` before History saw it.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from trainer import state as st

import tensorflow as tf  # isort: skip

logger = logging.getLogger(__name__)


class OtherCallbacks:
    """The callbacks that ran beside BackupAndRestore, and the metrics history."""

    def __init__(self) -> None:
        self._callbacks: list[Any] = []
        self._restored: list[dict[str, Any]] = []
        self._recorded: list[dict[str, Any]] = []  # this fit's epochs, when fit has no History
        self._last: tuple[int, Any] | None = None  # the last epoch ended, and its logs dict

    def track(self, callbacks: list[Any]) -> None:
        self._callbacks = list(callbacks)

    def restore_history(self, entries: list[dict[str, Any]]) -> None:
        """The history as saved (before the callbacks of this attempt are tracked)."""
        self._restored = list(entries)

    def apply(self, saved: dict[str, Any]) -> None:
        """Give the tracked callbacks their saved state."""
        keys = st.callback_keys(self._callbacks)
        for key, cb in zip(keys, self._callbacks, strict=True):
            if key in saved and saved[key] is not None:
                st.set_callback_state(cb, saved[key])
        for key in saved:
            if key not in keys:
                logger.warning("%s saved state of callback %s has no callback now", "", key)

    def states(self, strict: bool) -> dict[str, Any]:
        """The JSON state of every tracked callback that has one."""
        out = {}
        for key, cb in zip(st.callback_keys(self._callbacks), self._callbacks, strict=True):
            cb_state = st.get_callback_state(cb, strict=strict)
            if cb_state is not None:
                out[key] = cb_state
        return out

    def record_epoch(self, epoch: int, logs: Any) -> None:
        # Keras gives callbacks with and without tf-logs support different dicts, and others
        # (ReduceLROnPlateau adds "lr") may run later: the History callback is read at save time.
        self._last = (epoch, logs)
        if self._history_callback() is None and (
            not self._recorded or self._recorded[-1]["epoch"] != epoch
        ):
            self._recorded.append(_entry(epoch, logs))

    def history(self) -> list[dict[str, Any]]:
        """The metrics history so far, restored epochs included."""
        entries = list(self._restored)
        history = self._history_callback()
        if history is None:
            return entries + self._recorded
        for i, epoch in enumerate(getattr(history, "epoch", [])):
            logs = {k: _py(v[i]) for k, v in history.history.items() if i < len(v)}
            entries.append({"epoch": int(epoch), "logs": logs})
        if self._last is not None and (not entries or entries[-1]["epoch"] < self._last[0]):
            entries.append(_entry(*self._last))  # History did not see this epoch's end
        return entries

    def _history_callback(self) -> Any:
        for cb in self._callbacks:
            if isinstance(cb, tf.keras.callbacks.History):
                return cb
        return None


def _entry(epoch: int, logs: Any) -> dict[str, Any]:
    return {"epoch": int(epoch), "logs": {k: _py(v) for k, v in (logs or {}).items()}}


def _py(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return np.asarray(value).item()
    if isinstance(value, tf.Tensor):
        return value.numpy().item()
    return value
