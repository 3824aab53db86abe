"""When a training worker asks for its warm spares: once, after the attempt's first step has
ended, never before it (a spare importing TensorFlow while the first step is traced slows the
attempt's start), after marking the worker as training on this host (the spares then import at
idle priority). The raylet request itself is replaced: the thing under test is the moment."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer import idle_import, spares
from trainer.cluster_context import WorkerContext
from trainer.spares import WarmSpares

import tensorflow as tf  # isort: skip


class Probe(tf.keras.callbacks.Callback):
    """Runs after WarmSpares in the same CallbackList and notes whether it has asked yet."""

    def __init__(self, warm: WarmSpares) -> None:
        super().__init__()
        self.warm = warm
        self.seen: list[tuple[str, bool]] = []

    def on_train_begin(self, logs: Any = None) -> None:
        self.seen.append(("begin", self.warm.thread is not None))

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.seen.append((f"batch {batch}", self.warm.thread is not None))


def _fit(warm: WarmSpares) -> Probe:
    probe = Probe(warm)
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dense(1)])
    model.compile("sgd", "mse")
    x = np.zeros((12, 2), np.float32)
    model.fit(x, x[:, :1], batch_size=4, epochs=2, verbose=0, callbacks=[warm, probe])
    if warm.thread is not None:
        warm.thread.join(10)
    return probe


def test_spares_are_asked_for_once_after_the_first_step(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the training marker goes
    calls: list[tuple[int, bool]] = []

    def request(worker: WorkerContext, n: int, keep: float) -> None:
        calls.append((n, idle_import.training_on_this_host()))

    monkeypatch.setattr(spares, "request_spares", request)
    try:
        probe = _fit(WarmSpares(WorkerContext(ray=True), count=2, keep_alive_s=5))
    finally:
        idle_import.unmark_training()
    assert probe.seen[:2] == [("begin", False), ("batch 0", True)]
    # marked as training first: the spares' preload imports at idle priority
    assert calls == [(2, True)]


def test_no_request_outside_ray_or_with_no_spares(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr(spares, "request_spares", lambda worker, n, keep: calls.append(n))
    _fit(WarmSpares(WorkerContext(ray=False), count=1, keep_alive_s=5))
    _fit(WarmSpares(WorkerContext(ray=True), count=0, keep_alive_s=5))
    assert calls == []
