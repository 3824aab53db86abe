"""Pins the private tf-keras 2.21 hooks spotrain relies on (see trainer/keras_hooks.py).
If one of these fails after a tf-keras upgrade, exact mid-epoch resume is broken."""

from __future__ import annotations

import tf_keras

from trainer import keras_hooks
from trainer.data import ResumableInput

import tensorflow as tf  # isort: skip


def test_tf_keras_version_is_the_tested_one() -> None:
    assert tf_keras.__version__.startswith(keras_hooks.TESTED_TF_KERAS), tf_keras.__version__


def test_check_hooks_passes() -> None:
    keras_hooks._checked = False
    keras_hooks.check_hooks()


class _Recorder(tf.keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.epochs: list[int] = []
        self.batches: list[tuple[int, int]] = []
        self.seen: list[list[int]] = []
        self.others: list | None = None

    def on_train_begin(self, logs=None):
        self.others = keras_hooks.calling_callback_list(depth=2)

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)
        self._epoch = epoch

    def on_train_batch_begin(self, batch, logs=None):
        self.batches.append((self._epoch, batch))


def test_resume_point_starts_fit_mid_epoch_and_iterator_runs_across_epochs() -> None:
    """fit with a ResumePoint(1, 2) starts at epoch 1, step 2 with Keras' numbering; the
    distributed dataset (started at the same position) is iterated once, not per epoch."""
    x = tf.reshape(tf.range(24, dtype=tf.float32), (24, 1))
    ds = tf.data.Dataset.from_tensor_slices((x, x))
    inp = ResumableInput(ds, 24, 4, 0, 3)  # 6 steps per epoch
    model = tf.keras.Sequential([tf.keras.Input((1,)), tf.keras.layers.Dense(1)])
    model.compile(tf.keras.optimizers.SGD(0.0), "mse")
    keras_hooks.install_resume_point(model, 1, 2)
    rec = _Recorder()
    dist = inp.distribute(tf.distribute.get_strategy(), 1, 2)
    model.fit(dist, epochs=3, steps_per_epoch=6, callbacks=[rec], verbose=0)
    keras_hooks.remove_resume_point(model)
    assert rec.epochs == [1, 2]
    assert rec.batches[0] == (1, 2) and rec.batches[-1] == (2, 5)
    assert len(rec.batches) == 4 + 6
    assert int(model.optimizer.iterations.numpy()) == 10
    # the callback list is visible from on_train_begin (used to save other callbacks' state)
    assert rec.others is not None and any(
        isinstance(c, tf.keras.callbacks.History) for c in rec.others
    )


def test_model_checkpoint_leaves_random_generators_out() -> None:
    """tf-keras keeps the Dropout RandomGenerator state out of model checkpoints; spotrain
    adds it (trainer.state.random_generators). If tf-keras starts saving it, simplify."""
    tf.keras.backend.experimental.enable_tf_random_generator()
    model = tf.keras.Sequential([tf.keras.Input((2,)), tf.keras.layers.Dropout(0.5)])
    names = [n for n, _ in tf.train.list_variables(_write(model))]
    assert not any("StateVar" in n or "_generator" in n for n in names), names
    from trainer.state import random_generators

    assert len(random_generators(model)) == 1


def _write(model: tf.keras.Model) -> str:
    import tempfile

    return tf.train.Checkpoint(model=model).write(tempfile.mkdtemp() + "/c")


def test_fit_shows_its_input_spec_counter_and_callback_list_to_on_train_begin() -> None:
    """Hooks 2, 4, 5: from on_train_begin spotrain sees fit's input spec (per example), the
    train counter already zeroed, and a CallbackList whose end hooks it can wrap."""
    seen: dict = {}

    class Probe(tf.keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            seen["spec"] = keras_hooks.fit_element_spec()
            seen["counter"] = int(self.model._train_counter.numpy())
            owner = keras_hooks.calling_callback_list_object(depth=2)
            keras_hooks.guard_hooks(
                owner,
                lambda hook, i, logs: seen.setdefault(hook, []).append(i),
                lambda hook, exc, i, logs: None,
            )
            seen["owner"] = owner

    model = tf.keras.Sequential([tf.keras.layers.Dense(1)])
    model.compile(tf.keras.optimizers.SGD(0.0), "mse")
    model._train_counter.assign(5)
    x = tf.zeros((8, 3))
    model.fit(x, tf.zeros((8, 1)), batch_size=4, epochs=2, callbacks=[Probe()], verbose=0)
    x_spec, y_spec = seen["spec"]
    assert x_spec.shape == (3,) and y_spec.shape == (1,)
    assert seen["counter"] == 0
    assert seen["on_train_batch_end"] == [0, 1, 0, 1] and seen["on_epoch_end"] == [0, 1]
    keras_hooks.unguard_hooks(seen["owner"])
    assert "on_epoch_end" not in vars(seen["owner"])
