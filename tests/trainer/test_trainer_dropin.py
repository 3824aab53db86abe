"""BackupAndRestore as a drop-in for tf.keras.callbacks.BackupAndRestore in a plain fit:
same arguments, any fsspec URL (memory:// here), mid-epoch resume of weights, optimizer and
step numbering, and delete_checkpoint removing the backups once training finished."""

from __future__ import annotations

import uuid

import numpy as np
import pytest

from storage.checkpoints import CheckpointStore
from trainer import env
from trainer.callback import BackupAndRestore

import tensorflow as tf  # isort: skip


def _model() -> tf.keras.Model:
    env.configure(3, True)
    model = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    model.compile(tf.keras.optimizers.Adam(0.01), "mse")
    return model


class StopAt(tf.keras.callbacks.Callback):
    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step
        self.batches: list[tuple[int, int]] = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.batches.append((self.epoch, batch))

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            raise RuntimeError("stop")


def test_drop_in_with_memory_url() -> None:
    url = f"memory://dropin-{uuid.uuid4().hex[:8]}"
    x = np.random.default_rng(0).normal(size=(32, 4)).astype("float32")
    y = np.zeros((32, 2), "float32")
    model = _model()
    bar = BackupAndRestore(url, save_freq=3)
    with pytest.raises(RuntimeError, match="stop"):
        model.fit(x, y, batch_size=8, epochs=3, callbacks=[StopAt(6), bar], verbose=0)
    bar.close()  # what the atexit hook does when the process ends after the exception
    store = CheckpointStore(url)
    # step 6 raised in on_train_batch_end: its boundary was saved before the error went on
    assert store.committed_steps() == [3, 6]
    resumed = _model()
    rec = StopAt(-1)
    resumed.fit(
        x, y, batch_size=8, epochs=3, callbacks=[rec, BackupAndRestore(url, save_freq=3)], verbose=0
    )
    assert rec.batches[0] == (1, 2)  # continued at epoch 1, step 2 (4 steps per epoch)
    assert int(resumed.optimizer.iterations.numpy()) == 12
    assert store.committed_steps() == []  # delete_checkpoint=True (the tf.keras default)


def test_save_freq_validation_matches_keras() -> None:
    with pytest.raises(ValueError, match="save_freq=0"):
        BackupAndRestore("memory://x", save_freq=0)
    with pytest.raises(TypeError, match="unknown BackupAndRestore option"):
        BackupAndRestore("memory://x", keep_lats=2)


def test_background_upload_errors_are_raised_not_lost() -> None:
    from storage.checkpoints import StoreOptions
    from storage.errors import SpotrainError
    from storage.retry import RetryOptions
    from tests.fakes import FaultyFileSystem

    url = f"memory://dropin-err-{uuid.uuid4().hex[:8]}"
    import fsspec

    fs = FaultyFileSystem(fsspec.filesystem("memory"))
    fs.fail("put_file", PermissionError("injected: bucket gone"), times=None)
    store = CheckpointStore(url, fs=fs, options=StoreOptions(retry=RetryOptions(attempts=1)))
    x = np.zeros((32, 4), "float32")
    model = _model()
    with pytest.raises(SpotrainError, match="injected: bucket gone"):
        model.fit(
            x,
            x[:, :2],
            batch_size=8,
            epochs=2,
            callbacks=[BackupAndRestore(url, save_freq=2, store=store)],
            verbose=0,
        )
