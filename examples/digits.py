"""A small spotrain job: scikit-learn's bundled digits (8x8 images, no download) and a Keras MLP.

The three entry points spotrain calls (see ``digits.yaml``):
- ``build_model(config)``: a compiled ``tf.keras`` model (spotrain calls it in the strategy scope);
- ``make_dataset(ctx)`` / ``make_val_dataset(ctx)``: unbatched ``(x, y)`` examples in a fixed
  order; spotrain shuffles (seeded by seed and epoch), shards and batches them.
"""

from __future__ import annotations

import os
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf-keras: works under MultiWorkerMirrored

import numpy as np
import tensorflow as tf

#: Examples held out for validation (the last ones, in the dataset's fixed order).
VAL_EXAMPLES = 297


def _arrays(config: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    x = (digits.data / 16.0).astype("float32")
    y = digits.target.astype("int64")
    limit = int(config.get("limit_examples", 0) or 0)
    if limit:
        x, y = x[: limit + VAL_EXAMPLES], y[: limit + VAL_EXAMPLES]
    return x, y


def make_dataset(ctx: Any) -> tf.data.Dataset:
    x, y = _arrays(dict(ctx.config))
    return tf.data.Dataset.from_tensor_slices((x[:-VAL_EXAMPLES], y[:-VAL_EXAMPLES]))


def make_val_dataset(ctx: Any) -> tf.data.Dataset:
    x, y = _arrays(dict(ctx.config))
    return tf.data.Dataset.from_tensor_slices((x[-VAL_EXAMPLES:], y[-VAL_EXAMPLES:]))


def build_model(config: dict[str, Any]) -> tf.keras.Model:
    hidden = int(config.get("hidden", 64))
    dropout = float(config.get("dropout", 0.2))
    model = tf.keras.Sequential(
        [
            tf.keras.layers.Input(shape=(64,)),
            tf.keras.layers.Dense(hidden, activation="relu"),
            tf.keras.layers.Dropout(dropout),
            tf.keras.layers.Dense(10),
        ]
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(float(config.get("learning_rate", 1e-3))),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model
