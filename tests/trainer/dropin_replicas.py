"""Run by test_trainer_dropin_replicas.py in a fresh process (two logical CPUs must be set up
before TensorFlow starts): a plain-Keras user's unbuilt model fed a distributed dataset under a
two-replica MirroredStrategy, with spotrain's BackupAndRestore; stopped at step 3, fit again."""

from __future__ import annotations

import sys

import tensorflow as tf  # isort: skip

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

from trainer.callback import BackupAndRestore  # noqa: E402


class StopAt(tf.keras.callbacks.Callback):
    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == 3:
            raise RuntimeError("stop")


def main(url: str) -> None:
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])

    def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
        x = tf.reshape(tf.range(64, dtype=tf.float32), (16, 4))
        ds = tf.data.Dataset.from_tensor_slices((x, tf.ones((16, 1))))
        return ds.batch(ctx.get_per_replica_batch_size(8)).repeat()

    def fit(callbacks: list) -> tf.keras.Model:
        with strategy.scope():
            model = tf.keras.Sequential([tf.keras.layers.Dense(1)])  # unbuilt
            model.compile(tf.keras.optimizers.Adam(0.01), "mse")
        data = strategy.distribute_datasets_from_function(dataset_fn)
        model.fit(data, epochs=2, steps_per_epoch=4, callbacks=callbacks, verbose=0)
        return model

    try:
        fit([StopAt(), BackupAndRestore(url, save_freq=1, delete_checkpoint=False)])
    except RuntimeError as exc:
        assert str(exc) == "stop", exc
    resumed = BackupAndRestore(url, save_freq=1, delete_checkpoint=False)
    model = fit([resumed])
    print("RESUMED_AT", resumed.initial_global_step)
    print("ITERATIONS", int(model.optimizer.iterations.numpy()))


if __name__ == "__main__":
    main(sys.argv[1])
