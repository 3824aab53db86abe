"""spotrain's BackupAndRestore in a plain ``fit``, checked the way tf-keras 2.21 checks its own
BackupAndRestore (callbacks_test.py: trivial backup/restore in eager and function mode, the
train counter across an interrupted fit, epoch and step save frequencies, the last batch of an
epoch, save_freq=False, clean-up), plus what its users rely on: the same instance retried,
a new instance or a new optimizer on the same model, an error at an epoch end. Every model is
an unbuilt ``Sequential([Dense(n)])``; one process, no Ray."""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trainer import env
from trainer.callback import BackupAndRestore
from trainer.errors import TrainerError

import tensorflow as tf  # isort: skip

MODES = pytest.mark.parametrize("run_eagerly", [True, False], ids=["eager", "function"])


class Interrupt(tf.keras.callbacks.Callback):
    """Raises RuntimeError at the given epoch begins / ends or after the N-th step of a fit."""

    spotrain_stateless = True

    def __init__(self, epoch_end=(), epoch_begin=(), step: int | None = None) -> None:
        super().__init__()
        self.epoch_end, self.epoch_begin, self.step = set(epoch_end), set(epoch_begin), step
        self.steps = 0

    def on_epoch_begin(self, epoch, logs=None):
        if epoch in self.epoch_begin:
            raise RuntimeError("EpochBeginInterruption")

    def on_epoch_end(self, epoch, logs=None):
        if epoch in self.epoch_end:
            raise RuntimeError("EpochInterruption")

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if self.steps == self.step:
            raise RuntimeError("StepsInterruption")


class Where(tf.keras.callbacks.Callback):
    """Records (epoch, batch) of every step a fit runs."""

    spotrain_stateless = True

    def __init__(self) -> None:
        super().__init__()
        self.steps: list[tuple[int, int]] = []
        self.epoch = -1

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.steps.append((self.epoch, batch))


def _model(run_eagerly: bool = False, units: int = 3, seed: int = 5, lr: float = 0.01) -> Any:
    env.configure(seed, True)
    model = tf.keras.Sequential([tf.keras.layers.Dense(units)])  # unbuilt: no Input
    model.compile(tf.keras.optimizers.Adam(lr), "mse", run_eagerly=run_eagerly)
    return model


def _data(n: int = 24) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype("float32"), rng.normal(size=(n, 3)).astype("float32")


def _fit(model: Any, callbacks: list[Any], epochs: int = 5, **kw: Any) -> Any:
    x, y = _data()
    kw.setdefault("batch_size", 4)  # 6 steps per epoch
    return model.fit(x, y, epochs=epochs, shuffle=False, callbacks=callbacks, verbose=0, **kw)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


def _repeated_dataset() -> tf.data.Dataset:
    """tf-keras' own case: 24 examples repeated, batches of 2, 5 steps per epoch."""
    x = tf.random.stateless_uniform((24, 10), seed=(1, 2))
    y = tf.random.stateless_uniform((24,), seed=(3, 4))
    return tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(2)


# ---------------------------------------------------------------- tf-keras' own cases


@MODES
def test_trivial_backup_restore(tmp_path: Path, run_eagerly: bool) -> None:
    model = _model(run_eagerly, units=1)
    cbk = BackupAndRestore(str(tmp_path / "backup"))
    model.fit(np.ones((10, 1)), np.ones((10, 1)), epochs=1, callbacks=[cbk], verbose=0)
    assert model.built and int(model.optimizer.iterations.numpy()) == 1


@MODES
def test_train_counter_continues_across_an_interrupted_fit(
    tmp_path: Path, run_eagerly: bool
) -> None:
    """tf-keras: the train counter (TensorBoard's batch step) is 6 after an interruption at
    the end of epoch 5 and 13 after the retry (epochs=20) stopped at the end of epoch 12."""
    model = _model(run_eagerly, units=1)
    cbk = BackupAndRestore(str(tmp_path / "backup"))
    stop = Interrupt(epoch_end={5, 12})
    assert model._train_counter.numpy() == 0
    with pytest.raises(RuntimeError, match="EpochInterruption"):
        model.fit(np.zeros((10, 1)), np.zeros((10, 1)), epochs=10, callbacks=[cbk, stop], verbose=0)
    assert model._train_counter.numpy() == 6
    where = Where()
    with pytest.raises(RuntimeError, match="EpochInterruption"):
        model.fit(
            np.zeros((10, 1)), np.zeros((10, 1)), epochs=20, callbacks=[cbk, stop, where], verbose=0
        )
    assert where.steps[0] == (6, 0)  # resumed after epoch 5, not at epoch 0 nor 5
    assert model._train_counter.numpy() == 13


def test_backup_and_restore_at_an_epoch_interruption(tmp_path: Path) -> None:
    """tf-keras: interrupted at the end of epoch 15 (20 epochs of 5 steps, a repeated
    dataset), the retry with the same callback continues at epoch 16."""
    model = _model(units=10)
    cbk = BackupAndRestore(str(tmp_path / "backup"))
    ds = _repeated_dataset()
    with pytest.raises(RuntimeError, match="EpochInterruption"):
        model.fit(ds, epochs=20, steps_per_epoch=5, callbacks=[cbk, Interrupt({15})], verbose=0)
    where = Where()
    history = model.fit(ds, epochs=20, steps_per_epoch=5, callbacks=[cbk, where], verbose=0)
    assert where.steps[0] == (16, 0) and len(where.steps) == 4 * 5
    assert len(history.history["loss"]) == 4  # this fit's epochs, as in tf-keras
    assert int(model.optimizer.iterations.numpy()) == 100


@pytest.mark.parametrize(
    ("save_freq", "epoch_int", "steps_int", "resumed_at"),
    [
        (7, 20, 3, (0, 0)),  # interrupted before the first save: starts again
        (7, 20, 8, (1, 2)),  # after the save at global step 7 (epoch 1, step 2)
        (7, 20, 7, (1, 2)),  # at step 7 itself: saved before the error went on
        ("epoch", 1, 12, (2, 0)),  # at the end of epoch 1, before step 12
        (7, 20, 5, (0, 0)),  # the last batch of an epoch, not a save step
        (5, 20, 5, (0, 0)),  # the last batch raised: its epoch end did not run, redone
        (5, 20, 6, (1, 0)),  # saved at the end of epoch 0 (step 5), then step 6 raised
    ],
)
def test_backup_and_restore_at_steps(
    tmp_path: Path, save_freq: Any, epoch_int: int, steps_int: int, resumed_at: tuple[int, int]
) -> None:
    """tf-keras' step cases (save_freq=7, 5 steps per epoch) and the last batch of an epoch;
    spotrain resumes exactly at the saved step."""
    model = _model(units=10)
    cbk = BackupAndRestore(str(tmp_path / "backup"), save_freq=save_freq)
    ds = _repeated_dataset()
    stop = Interrupt(epoch_end={epoch_int}, step=steps_int)
    with pytest.raises(RuntimeError, match="Interruption"):
        model.fit(ds, epochs=20, steps_per_epoch=5, callbacks=[cbk, stop], verbose=0)
    where = Where()
    model.fit(ds, epochs=20, steps_per_epoch=5, callbacks=[cbk, where], verbose=0)
    assert where.steps[0] == resumed_at
    assert where.steps[-1] == (19, 4)


def test_save_freq_false_saves_only_for_preemption(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Either `save_freq` or `save_before_preemption`"):
        BackupAndRestore(str(tmp_path / "b"), save_freq=False)
    model = _model(units=10)
    cbk = BackupAndRestore(str(tmp_path / "backup"), save_freq=False, save_before_preemption=True)
    ds = _repeated_dataset()
    with pytest.raises(RuntimeError, match="EpochInterruption"):
        model.fit(ds, epochs=4, steps_per_epoch=5, callbacks=[cbk, Interrupt({1})], verbose=0)
    assert not (tmp_path / "backup" / "checkpoints").exists() or not _files(
        tmp_path / "backup" / "checkpoints"
    )
    where = Where()
    model.fit(ds, epochs=4, steps_per_epoch=5, callbacks=[cbk, where], verbose=0)
    assert where.steps[0] == (0, 0)


def test_delete_checkpoint_leaves_the_backup_dir_empty(tmp_path: Path) -> None:
    backup = tmp_path / "backup"
    model = _model()
    with pytest.raises(RuntimeError):
        _fit(model, [BackupAndRestore(str(backup), save_freq=4), Interrupt({1})], epochs=3)
    assert _files(backup / "checkpoints")  # the interrupted fit left its backup
    _fit(model, [BackupAndRestore(str(backup))], epochs=3)
    assert _files(backup) == []
    kept = tmp_path / "kept"
    _fit(_model(), [BackupAndRestore(str(kept), delete_checkpoint=False)], epochs=2)
    assert any(p.endswith("MANIFEST.json") for p in _files(kept))


# ---------------------------------------------------------------- what users rely on


def test_the_documented_retry_resumes_with_the_same_instance(tmp_path: Path) -> None:
    """tf-keras' docstring example: interrupted at the begin of epoch 4, the retry with the
    same callback instance runs the 6 remaining epochs (4..9)."""
    callback = BackupAndRestore(backup_dir=str(tmp_path / "backup"))
    env.configure(1, True)
    model = tf.keras.models.Sequential([tf.keras.layers.Dense(10)])
    model.compile(tf.keras.optimizers.SGD(), loss="mse")
    x, y = np.arange(100).reshape(5, 20) / 100.0, np.zeros(5)
    with pytest.raises(RuntimeError):
        model.fit(
            x,
            y,
            epochs=10,
            batch_size=1,
            callbacks=[callback, Interrupt(epoch_begin={4})],
            verbose=0,
        )
    history = model.fit(x, y, epochs=10, batch_size=1, callbacks=[callback], verbose=0)
    assert len(history.history["loss"]) == 6
    assert callback.history[-1]["epoch"] == 9 and len(callback.history) == 10


def _reference(run_eagerly: bool, epochs: int = 5) -> list[np.ndarray]:
    model = _model(run_eagerly)
    _fit(model, [BackupAndRestore(f"memory://ref-{os.getpid()}-{run_eagerly}")], epochs=epochs)
    return model.get_weights() + [v.numpy() for v in model.optimizer.variables()]


def _state(model: Any) -> list[np.ndarray]:
    return model.get_weights() + [v.numpy() for v in model.optimizer.variables()]


def _assert_equal(a: list[np.ndarray], b: list[np.ndarray]) -> None:
    assert len(a) == len(b)
    for u, v in zip(a, b, strict=True):
        np.testing.assert_array_equal(u, v)


@MODES
@pytest.mark.parametrize("retry", ["same-callback", "new-callback", "new-optimizer"])
def test_a_retry_in_the_same_process_ends_bitwise_equal(
    tmp_path: Path, run_eagerly: bool, retry: str
) -> None:
    """Interrupted twice at epoch ends (the failing callback first in the list, so before the
    backup's own hooks), retried on the same model object with the same callback, a new
    callback, or a recompiled new optimizer: the same weights and optimizer state as an
    uninterrupted fit, and no epoch redone."""
    url = str(tmp_path / "backup")
    model = _model(run_eagerly)
    cbk = BackupAndRestore(url, save_freq=4)
    for stop_at in (1, 3):
        with pytest.raises(RuntimeError, match="EpochInterruption"):
            _fit(model, [Interrupt({stop_at}), cbk])
        if retry == "new-callback":
            cbk = BackupAndRestore(url, save_freq=4)
        elif retry == "new-optimizer":
            model.compile(tf.keras.optimizers.Adam(0.01), "mse", run_eagerly=run_eagerly)
    where = Where()
    _fit(model, [where, cbk])
    assert where.steps[0] == (4, 0)  # after the end of epoch 3
    assert [e["epoch"] for e in cbk.history] == [0, 1, 2, 3, 4]  # the failed epochs' ends too
    _assert_equal(_state(model), _reference(run_eagerly))


def test_a_new_callback_on_the_same_model_after_a_mid_epoch_stop(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The compiled metrics exist at the second restore but (before) not at the first save:
    the restore must not fail, and the epoch's metric totals continue (they were saved)."""
    url = str(tmp_path / "backup")
    model = _model()
    model.compile(tf.keras.optimizers.Adam(0.01), "mse", metrics=["mae"])
    with pytest.raises(RuntimeError, match="StepsInterruption"):
        _fit(model, [BackupAndRestore(url, save_freq=2), Interrupt(step=9)])
    where = Where()
    history = _fit(model, [BackupAndRestore(url, save_freq=2), where])
    assert where.steps[0] == (1, 2)  # the last save, global step 8 = epoch 1, step 2
    assert set(history.history) == {"loss", "mae"}
    assert "metric totals were not saved" not in caplog.text


def test_unknown_steps_per_epoch_names_what_to_pass(tmp_path: Path) -> None:
    x, y = _data()
    ds = tf.data.Dataset.from_tensor_slices((x, y)).filter(lambda a, b: True).batch(4)
    with pytest.raises(TrainerError, match=r"pass steps_per_epoch=N to model\.fit"):
        _model().fit(ds, epochs=1, callbacks=[BackupAndRestore(str(tmp_path / "b"))], verbose=0)


@pytest.mark.parametrize("save_freq", ["batch", 0.15])
def test_stricter_save_freq_is_refused_with_the_fix(save_freq: Any) -> None:
    with pytest.raises(ValueError, match="spotrain refuses 'batch' and floats"):
        BackupAndRestore("memory://x", save_freq=save_freq)


def test_docstring_example_runs_on_s3(seaweed: Any) -> None:
    """The callback's docstring example, run as written against a real S3 server."""
    doc = BackupAndRestore.__doc__ or ""
    code = textwrap.dedent(doc.split("::\n", 1)[1].split("\n    Differences", 1)[0])
    url = f"s3://{seaweed.bucket}/docstring/run-1"
    code = code.replace('"s3://my-bucket/backups/run-1"', repr(url))
    code = re.sub(
        r"storage_options=\{.*?\},", f"storage_options={seaweed.storage_options!r},", code
    )
    assert url in code and "storage_options=" in code
    exec(compile(code, "BackupAndRestore docstring", "exec"), {})
