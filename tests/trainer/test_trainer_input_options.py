"""Every input spotrain builds runs without tf.data autotuning.

Under MultiWorkerMirroredStrategy the end of ``fit`` deletes the input's iterators, and deleting
an autotuned one waits for the autotune thread's timed sleep (up to its 60 s period): seen as
~25-35 s between an attempt's final commit and its end. These pin that the option is set on
the datasets the strategy gets, for training and validation.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from trainer.data import DataContext, build_input, build_val_input


def _examples(ctx: DataContext) -> tf.data.Dataset:
    x = np.arange(64, dtype="float32").reshape(32, 2)
    return tf.data.Dataset.from_tensor_slices((x, np.zeros(32, dtype="int64"))).map(
        lambda a, b: (a * 2, b), num_parallel_calls=tf.data.AUTOTUNE
    )


def test_training_and_validation_inputs_are_not_autotuned() -> None:
    ctx = DataContext(global_batch_size=4)
    strategy = tf.distribute.get_strategy()  # the default strategy hands the dataset back
    train = build_input(_examples, ctx, 2).distribute(strategy, 0, 0)
    val, steps = build_val_input(_examples, ctx, strategy)
    assert steps == 8
    for ds in (train, val):
        assert isinstance(ds, tf.data.Dataset)
        assert ds.options().autotune.enabled is False
        assert ds.options().deterministic is True
    assert len(list(train)) == 16  # the input still yields every batch of both epochs
