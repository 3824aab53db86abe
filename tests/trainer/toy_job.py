"""A tiny job for the trainer tests: Dense -> BatchNorm -> Dropout -> softmax, shuffled data.

config: lr_mode "schedule" (Adam with an ExponentialDecay schedule) or "plateau" (Adam with a
float LR, which ReduceLROnPlateau can change; it cannot change a schedule's LR in tf-keras).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import numpy as np

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf

N_TRAIN, N_VAL, FEATURES, CLASSES = 96, 32, 8, 3


def _arrays(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, FEATURES)).astype("float32")
    w = rng.normal(size=(FEATURES, CLASSES)).astype("float32")
    y = np.argmax(x @ w + 0.5 * rng.normal(size=(n, CLASSES)), axis=1).astype("int64")
    return x, y


def build_model(config: dict) -> tf.keras.Model:
    inputs = tf.keras.Input(shape=(FEATURES,))
    h = tf.keras.layers.Dense(16)(inputs)
    h = tf.keras.layers.BatchNormalization()(h)
    h = tf.keras.layers.Activation("relu")(h)
    h = tf.keras.layers.Dropout(0.3)(h)
    outputs = tf.keras.layers.Dense(CLASSES, activation="softmax")(h)
    model = tf.keras.Model(inputs, outputs)
    if config.get("lr_mode", "schedule") == "schedule":
        lr = tf.keras.optimizers.schedules.ExponentialDecay(0.05, decay_steps=4, decay_rate=0.8)
    else:
        lr = 0.05
    model.compile(
        optimizer=tf.keras.optimizers.Adam(learning_rate=lr),
        loss="sparse_categorical_crossentropy",
        metrics=["accuracy"],
    )
    return model


def make_dataset(ctx) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(_arrays(N_TRAIN, 1))


def make_val_dataset(ctx) -> tf.data.Dataset:
    return tf.data.Dataset.from_tensor_slices(_arrays(N_VAL, 2))


class Interrupt(tf.keras.callbacks.Callback):
    """Fails once at each chosen global step, right after that step ran (before a save at
    that step). A marker file per step (O_EXCL) makes each failure happen once across all
    attempts, processes and ranks. plan: {step: mode}; modes: "raise", "sigkill", "sigterm"
    (a preemption notice), "sigkill_mid_upload" (wait until the storage commit pause hook
    reports a paused upload in pause_dir, then SIGKILL)."""

    spotrain_stateless = True

    def __init__(self, plan, marker_dir: str, pause_dir: str = ""):
        super().__init__()
        self.plan = {int(k): v for k, v in dict(plan).items()}
        self.marker_dir = Path(marker_dir)
        self.pause_dir = Path(pause_dir) if pause_dir else None

    def on_train_batch_end(self, batch, logs=None):
        g = int(self.model.optimizer.iterations.numpy())
        mode = self.plan.get(g)
        if mode is None:
            return
        self.marker_dir.mkdir(parents=True, exist_ok=True)
        try:
            os.close(os.open(self.marker_dir / f"killed-{g}", os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        if mode == "sigterm":
            os.kill(os.getpid(), signal.SIGTERM)
            return
        if mode == "sigkill_mid_upload":
            deadline = time.monotonic() + 60
            while not any(self.pause_dir.glob("*.reached")) and time.monotonic() < deadline:
                time.sleep(0.01)
            os.kill(os.getpid(), signal.SIGKILL)
        if mode == "sigkill":
            os.kill(os.getpid(), signal.SIGKILL)
        raise RuntimeError(f"injected failure after global step {g}")


def interrupt(steps=(), marker_dir="", mode="raise", plan=None, pause_dir=""):
    return Interrupt(plan or {s: mode for s in steps}, marker_dir, pause_dir)
