"""CPU workers' distributed iterators (``trainer.device_iterators``): under
MultiWorkerMirroredStrategy each device's dataset in Keras' ``MultiDeviceIterator`` is a new
source dataset, autotuned by default, whose iterator's deletion at the end of ``fit`` waits for
tf.data's autotuning thread (seen: 10-37 s). With the hook installed it is not autotuned. Runs in
a fresh process: the strategy must be made before TensorFlow's context starts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json
from trainer import device_iterators
from trainer.indexed_input import no_autoshard
import tensorflow as tf

strategy = tf.distribute.MultiWorkerMirroredStrategy()

def device_autotune():
    dist = strategy.distribute_datasets_from_function(
        lambda ctx: tf.data.Dataset.range(8).batch(2).with_options(no_autoshard())
    )
    it = iter(dist)
    values = [int(tf.reduce_sum(next(it))) for _ in range(4)]
    [worker_iterator] = it._iterators
    [device_iterator] = worker_iterator._iterator._device_iterators
    return device_iterator._dataset.options().autotune.enabled, values

before = device_autotune()
installed = device_iterators.install()
again = device_iterators.install()
after = device_autotune()
print("RESULT " + json.dumps({"before": before, "installed": installed, "again": again,
                              "after": after}))
"""


def test_cpu_device_iterators_are_not_autotuned_once_installed() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    [line] = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    got = json.loads(line[len("RESULT ") :])
    assert got["before"][0] in (None, True)  # unset: autotuned, the wait this hook removes
    assert got["installed"] and got["again"]
    assert got["after"][0] is False
    assert got["after"][1] == got["before"][1] == [1, 5, 9, 13]  # the same batches
