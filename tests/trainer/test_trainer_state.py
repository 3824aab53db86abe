"""Callback state round trips, unknown-state warnings, fingerprint and mismatch errors."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import pytest

from tests.trainer.helpers import job_dict
from trainer import state as st
from trainer.errors import CallbackStateError, ModelMismatchError, UserCodeError
from trainer.local import run_local

import tensorflow as tf  # isort: skip


def _round_trip(cb, fresh):
    saved = st.get_callback_state(cb)
    import json

    text = json.dumps(saved, allow_nan=False)  # storage writes strict JSON
    st.set_callback_state(fresh, json.loads(text))
    return saved


def test_stock_callbacks_round_trip() -> None:
    es = tf.keras.callbacks.EarlyStopping(patience=3)
    es.wait, es.stopped_epoch, es.best, es.best_epoch = 2, 0, 0.25, 4
    fresh = tf.keras.callbacks.EarlyStopping(patience=3)
    fresh.on_train_begin()
    _round_trip(es, fresh)
    assert (fresh.wait, fresh.best, fresh.best_epoch) == (2, 0.25, 4)

    rlr = tf.keras.callbacks.ReduceLROnPlateau(patience=2, cooldown=3)
    rlr.wait, rlr.cooldown_counter = 1, 2  # best stays inf: must survive strict JSON
    fresh_rlr = tf.keras.callbacks.ReduceLROnPlateau(patience=2, cooldown=3)
    _round_trip(rlr, fresh_rlr)
    assert (fresh_rlr.wait, fresh_rlr.cooldown_counter) == (1, 2)
    assert math.isinf(fresh_rlr.best)

    mc = tf.keras.callbacks.ModelCheckpoint("/tmp/x.h5", save_best_only=True)
    mc.best = 0.5
    fresh_mc = tf.keras.callbacks.ModelCheckpoint("/tmp/x.h5", save_best_only=True)
    _round_trip(mc, fresh_mc)
    assert fresh_mc.best == 0.5


class Counting(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.count = 0

    def get_state(self):
        return {"count": self.count}

    def set_state(self, state):
        self.count = state["count"]


class Opaque(tf.keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seen = 0


class BadState(tf.keras.callbacks.Callback):
    def get_state(self):
        return {"obj": object()}


def test_user_callbacks(caplog: pytest.LogCaptureFixture) -> None:
    c = Counting()
    c.count = 5
    fresh = Counting()
    _round_trip(c, fresh)
    assert fresh.count == 5
    with caplog.at_level(logging.WARNING):
        assert st.get_callback_state(Opaque()) is None
    assert "Opaque has no get_state()/set_state()" in caplog.text
    with pytest.raises(CallbackStateError, match="Opaque"):
        st.get_callback_state(Opaque(), strict=True)
    with pytest.raises(CallbackStateError, match="not JSON-able"):
        st.get_callback_state(BadState())
    assert st.get_callback_state(tf.keras.callbacks.Callback()) is None
    assert st.callback_keys([c, fresh, Opaque()]) == ["Counting#0", "Counting#1", "Opaque#0"]


def test_fingerprint_ignores_process_unique_layer_names() -> None:
    from tests.trainer import toy_job

    a, _ = st.fingerprint(toy_job.build_model({"lr_mode": "plateau"}))
    b, _ = st.fingerprint(toy_job.build_model({"lr_mode": "plateau"}))  # dense_2, ...
    c, _ = st.fingerprint(toy_job.build_model({"lr_mode": "schedule"}))
    assert a == b and a != c


def test_different_model_on_resume_stops_with_a_fix(tmp_path: Path) -> None:
    job = job_dict(tmp_path, "mm", "plateau", epochs=1)
    run_local(job)
    job["config"] = {"lr_mode": "schedule"}  # another optimizer config, same run URL
    with pytest.raises(ModelMismatchError, match="new name, or delete the run URL"):
        run_local(job)


def test_uncompiled_model_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "import tensorflow as tf\n"
        "def build_model(config):\n"
        "    return tf.keras.Sequential([tf.keras.Input((8,)), tf.keras.layers.Dense(3)])\n"
    )
    job = job_dict(tmp_path, "nc", "plateau", epochs=1, model=str(tmp_path / "m.py"))
    with pytest.raises(UserCodeError, match="not compiled"):
        run_local(job)


def test_shape_error_in_fit_is_a_user_error(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        "import tensorflow as tf\n"
        "def build_model(config):\n"
        "    m = tf.keras.Sequential([tf.keras.Input((5,)), tf.keras.layers.Dense(3)])\n"
        "    m.compile('adam', 'sparse_categorical_crossentropy')\n"
        "    return m\n"
    )
    job = job_dict(
        tmp_path, "shape", "plateau", epochs=1, model=str(tmp_path / "m.py"), val_data=None
    )
    with pytest.raises(UserCodeError, match=r"model\.fit") as info:
        run_local(job)
    assert "incompatible" in info.value.user_traceback or "shape" in info.value.user_traceback
