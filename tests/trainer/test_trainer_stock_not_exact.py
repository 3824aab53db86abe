"""The exactness tests can tell the difference: stock tf.keras.callbacks.BackupAndRestore,
interrupted once on the same model, data and seeds, does NOT end bitwise equal."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tests.trainer import toy_job
from tests.trainer.helpers import EPOCHS, GLOBAL_BATCH
from trainer import env
from trainer.data import ResumableInput

import tensorflow as tf  # isort: skip


def _fit(backup_dir: Path | None, callbacks: list) -> list[np.ndarray]:
    env.configure(7, True)
    model = toy_job.build_model({"lr_mode": "plateau"})
    inp = ResumableInput(toy_job.make_dataset(None), 96, GLOBAL_BATCH, 7, EPOCHS)
    ds = inp.distribute(tf.distribute.get_strategy())
    cbs = list(callbacks)
    if backup_dir is not None:
        cbs.append(tf.keras.callbacks.BackupAndRestore(str(backup_dir), save_freq=5))
    model.fit(ds, epochs=EPOCHS, steps_per_epoch=inp.steps_per_epoch, callbacks=cbs, verbose=0)
    return [v.numpy() for v in model.variables]


def test_stock_backup_and_restore_is_not_exact(tmp_path: Path) -> None:
    reference = _fit(None, [])
    interrupt = toy_job.Interrupt({8: "raise"}, str(tmp_path / "markers"))
    try:
        _fit(tmp_path / "backup", [interrupt])
    except RuntimeError as exc:
        assert "injected failure" in str(exc)
    resumed = _fit(tmp_path / "backup", [])
    assert len(resumed) == len(reference)
    assert not all(np.array_equal(a, b) for a, b in zip(reference, resumed, strict=True))
