"""The drop-in under MultiWorkerMirroredStrategy on Ray: two workers run a plain ``fit`` of an
unbuilt ``Sequential([Dense(3)])`` with BackupAndRestore, a callback raises at two epoch ends on
every rank, and each worker retries ``fit`` in its own process with the same callback instance.

The state the last retry starts from (weights, Adam's slots and iterations) is bitwise the
uninterrupted run's at that step. Measured on this stack (TF / tf-keras 2.21, CPU, 2 workers):
the final weights then still differ, because under MWMS the first step of a second ``fit`` in
the same process differs from continuing the first one, in plain tf-keras too (``fit(epochs=3)``
then ``fit(initial_epoch=3, epochs=4)`` vs ``fit(epochs=4)``: the state before that step is
equal, after it Adam's first moment differs by up to 0.15). A retry in a new process (the
spotrain trainer's restarts) is bitwise equal: tests/trainer/test_trainer_ray_e2e.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

RESUMED_EPOCH = 3


def plain_fit_with_retries(config: dict[str, Any]) -> None:
    """Ray Train worker: a user's own fit loop, retried after each interruption; the chief
    saves the state at the first step of epoch RESUMED_EPOCH and the epoch each fit began."""
    from trainer import env
    from trainer.callback import BackupAndRestore
    from trainer.cluster_context import WorkerContext

    import tensorflow as tf  # isort: skip

    class Interrupt(tf.keras.callbacks.Callback):
        spotrain_stateless = True

        def __init__(self, epoch: int) -> None:
            super().__init__()
            self.at = epoch

        def on_epoch_end(self, epoch, logs=None):
            if epoch == self.at:
                raise RuntimeError("EpochInterruption")

    snapshot: list[np.ndarray] = []
    begins: list[int] = []

    class Snapshot(tf.keras.callbacks.Callback):
        spotrain_stateless = True

        def on_epoch_begin(self, epoch, logs=None):
            self.epoch = epoch
            if not begins or begins[-1] < 0:
                begins[-1:] = [epoch]

        def on_train_batch_begin(self, batch, logs=None):
            if (self.epoch, batch) == (RESUMED_EPOCH, 0):
                snapshot[:] = [v.numpy() for v in self.model.weights]
                snapshot.extend(v.numpy() for v in self.model.optimizer.variables())

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    env.configure(7, True)
    with strategy.scope():
        model = tf.keras.Sequential([tf.keras.layers.Dense(3)])
        model.compile(tf.keras.optimizers.Adam(0.01), "mse")
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 4)).astype("float32"), rng.normal(size=(32, 3)).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()
    cbk = BackupAndRestore(config["url"], save_freq=2, delete_checkpoint=False)
    stops = list(config["stops"])
    while True:
        extra = [Interrupt(stops.pop(0))] if stops else []
        begins.append(-1)
        try:
            model.fit(
                ds, epochs=4, steps_per_epoch=4, callbacks=[*extra, cbk, Snapshot()], verbose=0
            )
            break
        except RuntimeError:
            continue
    if WorkerContext.detect().is_chief:
        np.savez(config["out"], np.array(begins), *snapshot)


def _run(tmp_path: Path, name: str, stops: list[int]) -> list[np.ndarray]:
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    out = tmp_path / f"{name}.npz"
    trainer = TensorflowTrainer(
        plain_fit_with_retries,
        train_loop_config={"url": str(tmp_path / name), "stops": stops, "out": str(out)},
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(name=name, storage_path=str(tmp_path / "ray")),
    )
    assert trainer.fit().error is None
    with np.load(out) as data:
        return [data[k] for k in sorted(data.files, key=lambda k: int(k.split("_")[1]))]


def test_same_process_retries_under_mwms_restore_exactly(tmp_path: Path, ray_local: Any) -> None:
    ref = _run(tmp_path, "ref", [])
    got = _run(tmp_path, "retried", [0, 2])
    assert ref[0].tolist() == [0]
    assert got[0].tolist() == [0, 1, RESUMED_EPOCH]  # each retry began after the failed epoch
    assert len(ref) == len(got) > 1
    for a, b in zip(ref[1:], got[1:], strict=True):
        np.testing.assert_array_equal(a, b)
