"""Jobs for the ``spotrain verify`` tests, each broken in one way that defeats exact resume.

They reuse the trainer tests' toy model and data (tests/trainer/toy_job.py) and change one thing.
"""

from __future__ import annotations

import itertools
import os

import numpy as np

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import tensorflow as tf

from tests.trainer import toy_job

build_model = toy_job.build_model
make_dataset = toy_job.make_dataset
make_val_dataset = toy_job.make_val_dataset


class HalveLREveryThreeBatches(tf.keras.callbacks.Callback):
    """Holds a batch counter but cannot save it: after a resume it counts from zero again."""

    def __init__(self) -> None:
        super().__init__()
        self.batches_seen = 0

    def on_train_batch_end(self, batch, logs=None):
        self.batches_seen += 1
        if self.batches_seen % 3 == 0:
            lr = self.model.optimizer.learning_rate
            lr.assign(lr * 0.5)


def make_noisy_dataset(ctx) -> tf.data.Dataset:
    """Unseeded randomness: a fresh generator from OS entropy on every call."""
    x, y = toy_job._arrays(toy_job.N_TRAIN, 1)
    noise = np.random.default_rng().normal(scale=0.1, size=x.shape).astype("float32")
    return tf.data.Dataset.from_tensor_slices((x + noise, y))


_calls = itertools.count()


def make_attempt_ordered_dataset(ctx) -> tf.data.Dataset:
    """Order depends on how often it was called, i.e. on the attempt."""
    x, y = toy_job._arrays(toy_job.N_TRAIN, 1)
    order = np.random.default_rng(next(_calls)).permutation(len(x))
    return tf.data.Dataset.from_tensor_slices((x[order], y[order]))


class _JitterLayer(tf.keras.layers.Layer):
    """Multiplies by 1 + tiny noise drawn outside TensorFlow's seeded random ops."""

    def call(self, x):
        noise = tf.py_function(lambda: np.random.default_rng().random(), [], tf.float32)
        noise.set_shape(())
        return x * (1.0 + 1e-4 * noise)


def build_jittery_model(config: dict) -> tf.keras.Model:
    inputs = tf.keras.Input(shape=(toy_job.FEATURES,))
    h = _JitterLayer()(tf.keras.layers.Dense(16, activation="relu")(inputs))
    outputs = tf.keras.layers.Dense(toy_job.CLASSES, activation="softmax")(h)
    model = tf.keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    return model
