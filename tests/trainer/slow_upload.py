"""A plain ``fit`` with ``BackupAndRestore`` whose uploads go through a ``FaultyFileSystem`` that
holds one put: shared by ``test_trainer_snapshot.py`` and its child process.

``python -m tests.trainer.slow_upload RUN_DIR FLAG_DIR``: the second commit's first put waits
until training ran ``ADVANCE`` more steps, writes ``FLAG_DIR/held.json`` (the steps seen) and
SIGKILLs the process: a crash mid-upload.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any

from fsspec.implementations.local import LocalFileSystem

from storage.checkpoints import CheckpointStore
from storage.location import RunLocation
from tests.fakes import FaultyFileSystem
from trainer.callback import BackupAndRestore

import numpy as np  # isort: skip
import tensorflow as tf  # isort: skip

EVERY = 5  # save every EVERY global steps
ADVANCE = 8  # steps training must run while the put is held
FILES_PER_COMMIT = 4  # ckpt.index, ckpt.data-*, ranks.index, ranks.data-*


class StepCanary(tf.keras.callbacks.Callback):
    """Counts the steps that really ran; once ``holding`` is set, counts those run since and
    sets ``advanced`` after ``ADVANCE`` of them."""

    def __init__(self) -> None:
        super().__init__()
        self.steps = 0
        self.holding = threading.Event()
        self.advanced = threading.Event()
        self.held_at: int | None = None

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.steps += 1
        if self.holding.is_set():
            if self.held_at is None:
                self.held_at = self.steps - 1
            if self.steps - self.held_at >= ADVANCE:
                self.advanced.set()


def model() -> tf.keras.Model:
    tf.keras.utils.set_random_seed(3)
    m = tf.keras.Sequential(
        [
            tf.keras.Input((8,)),
            tf.keras.layers.Dense(16, activation="relu"),
            tf.keras.layers.Dense(1),
        ]
    )
    m.compile(tf.keras.optimizers.Adam(0.01), loss="mse")
    return m


def data() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(160, 8)).astype("float32")
    return x, x.sum(axis=1, keepdims=True)


def fit_with_held_put(run_dir: Path, on_hold: Any, canary: StepCanary, epochs: int = 4) -> Any:
    """fit 20 steps per epoch; the second commit's first put calls ``on_hold()`` first."""
    fs = FaultyFileSystem(LocalFileSystem(auto_mkdir=True))
    fs.hold("put_file", on_hold, after=FILES_PER_COMMIT)
    store = CheckpointStore(RunLocation.from_url(str(run_dir), fs=fs))
    backup = BackupAndRestore(str(run_dir), save_freq=EVERY, delete_checkpoint=False, store=store)
    x, y = data()
    m = model()
    m.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=[canary, backup])
    return m, backup


def main() -> None:
    run_dir, flag_dir = Path(sys.argv[1]), Path(sys.argv[2])
    canary = StepCanary()

    def crash_mid_upload() -> None:
        canary.holding.set()
        advanced = canary.advanced.wait(300)
        report = {"held_at": canary.held_at, "steps": canary.steps, "advanced": advanced}
        (flag_dir / "held.json").write_text(json.dumps(report))
        os.kill(os.getpid(), signal.SIGKILL)

    fit_with_held_put(run_dir, crash_mid_upload, canary)
    raise SystemExit("the held put never ran")


if __name__ == "__main__":
    main()
