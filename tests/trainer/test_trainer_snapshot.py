"""Snapshot saves (trainer/snapshot.py, trainer/saving.py): the bundle a snapshot writes is the
one ``tf.train.Checkpoint.write`` writes; training runs on while an upload is slow; a crash
mid-upload leaves the previous commit loadable."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from storage.checkpoints import CheckpointStore
from tests.trainer import slow_upload
from trainer import snapshot, snapshot_plan
from trainer.model_io import CKPT_PREFIX, RANKS_PREFIX, checkpoint_of, load_committed_model

import tensorflow as tf  # isort: skip

ROOT = Path(__file__).resolve().parents[2]


def _bundle(prefix: str) -> dict[str, tuple[object, object]]:
    reader = tf.train.load_checkpoint(prefix)
    dtypes = reader.get_variable_to_dtype_map()
    return {k: (dtypes[k], reader.get_tensor(k)) for k in reader.get_variable_to_shape_map()}


def test_snapshot_writes_what_checkpoint_write_writes(tmp_path: Path) -> None:
    m = tf.keras.Sequential(
        [
            tf.keras.Input((6,)),
            tf.keras.layers.Dense(8),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.Dense(2),
        ]
    )
    m.compile(tf.keras.optimizers.Adam(), loss="mse")
    m.fit(np.ones((16, 6)), np.zeros((16, 2)), verbose=0)
    ckpt = checkpoint_of(m)
    ckpt.write(str(tmp_path / "ref" / CKPT_PREFIX))
    rows = np.arange(6.0, dtype="float32").reshape(2, 3)
    snap = snapshot.take(ckpt, 7, rows, keep=True)
    assert snap is not None and snap.nbytes > rows.nbytes
    before = [np.copy(v) for v in m.get_weights()]
    m.fit(np.ones((16, 6)), np.ones((16, 2)), verbose=0)  # training changes the variables...
    assert any(not np.array_equal(a, b) for a, b in zip(before, m.get_weights(), strict=True))
    (tmp_path / "snap").mkdir()
    snap.write(str(tmp_path / "snap"))  # ...not the snapshot
    ref, got = (
        _bundle(str(tmp_path / "ref" / CKPT_PREFIX)),
        _bundle(str(tmp_path / "snap" / CKPT_PREFIX)),
    )
    assert sorted(ref) == sorted(got)
    for key, (dtype, value) in ref.items():
        assert got[key][0] == dtype, key
        assert np.array_equal(got[key][1], value), key  # object graph included
    ranks = _bundle(str(tmp_path / "snap" / RANKS_PREFIX))
    assert np.array_equal(ranks["rank/1"][1], rows[1])
    empty = snapshot.take(ckpt, 7, None, keep=False)  # a rank that only reads
    assert empty is not None and not empty.values and empty.nbytes == 0


def test_a_snapshot_holds_the_variables_buffers_until_it_is_written(tmp_path: Path) -> None:
    m = tf.keras.Sequential([tf.keras.Input((600,)), tf.keras.layers.Dense(600)])
    m.compile(tf.keras.optimizers.Adam(), loss="mse")
    m.fit(np.ones((8, 600)), np.zeros((8, 600)), verbose=0)
    ckpt = checkpoint_of(m)
    snap = snapshot.take(ckpt, 1, None, keep=True)
    assert snap is not None and snap.nbytes > 600 * 600 * 4 * 3  # kernel and two Adam slots
    kernel = m.layers[0].kernel
    (held,) = [
        v
        for (k, _), v in zip(snap.keys, snap.values, strict=True)
        if "kernel" in k and "optimizer" not in k
    ]

    def address(t: Any) -> int:
        return int(np.asarray(t).__array_interface__["data"][0])

    assert address(held) == address(kernel.read_value())  # no copy: the variable's own buffer
    (tmp_path / "snap").mkdir()
    snap.write(str(tmp_path / "snap"))
    assert snap.values == []  # written: let go, the next update is in place again
    before = address(kernel.read_value())
    del held
    kernel.assign_add(tf.ones_like(kernel))
    assert address(kernel.read_value()) == before


@pytest.mark.parametrize("update", ["dense-xla", "sparse"])
def test_held_values_stay_those_of_the_boundary_while_training_runs(
    tmp_path: Path, update: str
) -> None:
    """A snapshot holds the variables' own buffers until the writer thread has written them;
    TensorFlow's copy on write keeps them intact through XLA-compiled and sparse updates too."""
    if update == "sparse":
        m = tf.keras.Sequential(
            [
                tf.keras.Input((2,), dtype="int32"),
                tf.keras.layers.Embedding(10, 4),
                tf.keras.layers.Flatten(),
                tf.keras.layers.Dense(1),
            ]
        )
        m.compile(tf.keras.optimizers.SGD(0.1), loss="mse")
        x = np.ones((16, 2), "int32")
    else:
        m = tf.keras.Sequential([tf.keras.Input((6,)), tf.keras.layers.Dense(8)])
        m.compile(tf.keras.optimizers.Adam(0.1), loss="mse", jit_compile=True)
        x = np.ones((16, 6), "float32")
    m.fit(x, np.zeros((16, m.output_shape[-1])), verbose=0)
    ckpt = checkpoint_of(m)
    ckpt.write(str(tmp_path / "ref" / CKPT_PREFIX))
    snap = snapshot.take(ckpt, 1, None, keep=True)
    assert snap is not None
    before = [np.copy(v) for v in m.get_weights()]
    m.fit(x, np.ones((16, m.output_shape[-1])), epochs=2, verbose=0)
    assert all(not np.array_equal(a, b) for a, b in zip(before, m.get_weights(), strict=True))
    (tmp_path / "snap").mkdir()
    snap.write(str(tmp_path / "snap"))  # written now, after the updates
    ref, got = (
        _bundle(str(tmp_path / "ref" / CKPT_PREFIX)),
        _bundle(str(tmp_path / "snap" / CKPT_PREFIX)),
    )
    assert sorted(ref) == sorted(got)
    assert all(np.array_equal(got[k][1], ref[k][1]) for k in ref)


def _assert_writes_as_checkpoint(ckpt: tf.train.Checkpoint, snap: Any, base: Path) -> int:
    """``snap`` writes the bundle ``ckpt.write`` writes now; returns its number of keys."""
    ckpt.write(str(base / "ref" / CKPT_PREFIX))
    (base / "snap").mkdir(parents=True)
    snap.write(str(base / "snap"))
    ref, got = _bundle(str(base / "ref" / CKPT_PREFIX)), _bundle(str(base / "snap" / CKPT_PREFIX))
    assert sorted(ref) == sorted(got)
    for key, (dtype, value) in ref.items():
        assert got[key][0] == dtype and np.array_equal(got[key][1], value), key
    return len(ref)


def test_a_plan_is_reused_until_the_object_graph_changes(tmp_path: Path) -> None:
    m = tf.keras.Sequential(
        [tf.keras.Input((6,)), tf.keras.layers.Dense(8), tf.keras.layers.BatchNormalization()]
    )
    m.compile(tf.keras.optimizers.Adam(), loss="mse")  # no slots yet: built by the first step
    ckpt = checkpoint_of(m)
    plans = snapshot_plan.SnapshotPlans()
    first = snapshot.take(ckpt, 1, None, keep=True, plans=plans)
    assert plans.builds == 1 and plans.plan is not None
    assert any(r.variables for r in plans.plan.readers)  # the kernels are read directly
    keys_before = _assert_writes_as_checkpoint(ckpt, first, tmp_path / "1")
    m.layers[0].kernel.assign_add(tf.ones_like(m.layers[0].kernel))  # values change...
    second = snapshot.take(ckpt, 2, None, keep=True, plans=plans)
    assert plans.builds == 1  # ...the graph does not: the plan is reused
    _assert_writes_as_checkpoint(ckpt, second, tmp_path / "2")
    m.fit(np.ones((16, 6)), np.zeros((16, 8)), verbose=0)  # Adam creates its slots
    third = snapshot.take(ckpt, 3, None, keep=True, plans=plans)
    assert plans.builds == 2  # new objects in the graph: planned again
    assert _assert_writes_as_checkpoint(ckpt, third, tmp_path / "3") > keys_before


def test_training_continues_while_an_upload_is_slow(tmp_path: Path) -> None:
    canary = slow_upload.StepCanary()
    held: list[bool] = []

    def slow_put() -> None:  # released only once training ran ADVANCE steps meanwhile
        canary.holding.set()
        held.append(canary.advanced.wait(300))

    _, backup = slow_upload.fit_with_held_put(tmp_path / "run", slow_put, canary)
    assert held == [True]  # steps advanced while the put was held
    assert canary.held_at is not None and canary.steps - canary.held_at >= slow_upload.ADVANCE
    store = CheckpointStore(str(tmp_path / "run"))
    assert store.committed_steps()[-1] == 80  # the final save, after the held upload
    assert backup.stats.saves >= 2 and backup.stats.history_s


@pytest.mark.slow  # a child process (TensorFlow start-up)
def test_crash_mid_upload_leaves_the_previous_commit_loadable(tmp_path: Path) -> None:
    flags = tmp_path / "flags"
    flags.mkdir()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-m", "tests.trainer.slow_upload", str(tmp_path / "run"), str(flags)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -9, proc.stderr[-3000:]
    report = json.loads((flags / "held.json").read_text())
    assert report["advanced"] and report["steps"] - report["held_at"] >= slow_upload.ADVANCE
    store = CheckpointStore(str(tmp_path / "run"))
    assert store.committed_steps() == [slow_upload.EVERY]  # the commit before the crash
    manifest = store.restore(tmp_path / "out")  # checksums verified
    assert manifest.step == slow_upload.EVERY
    model, loaded = load_committed_model(
        store, lambda _: slow_upload.model(), {}, seed=0, deterministic=False
    )  # as `spotrain export` loads it: fingerprint checked, model and optimizer read
    assert loaded.step == slow_upload.EVERY and int(model.optimizer.iterations) == slow_upload.EVERY


def test_the_plan_is_made_at_restore_and_serves_every_save(tmp_path: Path) -> None:
    from trainer.callback import BackupAndRestore

    m = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    m.compile(tf.keras.optimizers.Adam(), loss="mse", metrics=["mae"])
    bar = BackupAndRestore((tmp_path / "run").as_uri(), save_freq=2, delete_checkpoint=False)
    m.fit(np.ones((32, 4)), np.zeros((32, 2)), batch_size=8, epochs=2, callbacks=[bar], verbose=0)
    saves = len(bar.stats.history_s)
    assert saves >= 4
    # one full object-graph serialization, at restore (before the first step), for all saves
    assert bar.state._saver.plans.builds == 1
