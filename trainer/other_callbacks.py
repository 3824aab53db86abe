"""The other callbacks of ``fit`` (EarlyStopping, ReduceLROnPlateau, History...), whose state
and the metrics history are saved and restored with the training state.

A callback's state is its ``get_state()`` / ``set_state()`` JSON (or what
:mod:`trainer.state` knows of the stock Keras callbacks). The history is one
``{"epoch", "logs"}`` entry per finished epoch, read from Keras' History callback at save
time, or recorded here when ``fit`` has none.
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
        self._history: list[dict[str, Any]] = []

    def track(self, callbacks: list[Any]) -> None:
        self._callbacks = list(callbacks)

    def restore_history(self, entries: list[dict[str, Any]]) -> None:
        """The history as saved (before the callbacks of this attempt are tracked)."""
        self._history = list(entries)

    def apply(self, saved: dict[str, Any]) -> None:
        """Give the tracked callbacks their saved state (History: the saved history)."""
        keys = st.callback_keys(self._callbacks)
        for key, cb in zip(keys, self._callbacks, strict=True):
            if type(cb).__name__ == "History":
                self._prefill_history(cb)
            elif key in saved and saved[key] is not None:
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
        if self._history_callback() is None:
            self._history.append(
                {"epoch": epoch, "logs": {k: _py(v) for k, v in (logs or {}).items()}}
            )

    def history(self) -> list[dict[str, Any]]:
        """The metrics history so far, restored epochs included."""
        history = self._history_callback()
        if history is None:
            return self._history
        entries = []
        for i, epoch in enumerate(getattr(history, "epoch", [])):
            logs = {k: _py(v[i]) for k, v in history.history.items() if i < len(v)}
            entries.append({"epoch": int(epoch), "logs": logs})
        return entries

    def _history_callback(self) -> Any:
        for cb in self._callbacks:
            if isinstance(cb, tf.keras.callbacks.History):
                return cb
        return None

    def _prefill_history(self, history: Any) -> None:
        history.epoch = []
        history.history = {}
        for entry in self._history:
            history.epoch.append(entry["epoch"])
            for k, v in entry["logs"].items():
                history.history.setdefault(k, []).append(v)


def _py(value: Any) -> Any:
    if isinstance(value, np.generic | np.ndarray):
        return np.asarray(value).item()
    if isinstance(value, tf.Tensor):
        return value.numpy().item()
    return value
