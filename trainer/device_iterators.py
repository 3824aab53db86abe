"""The distributed iterator's per-device datasets, without tf.data autotuning (CPU workers).

Under MultiWorkerMirroredStrategy Keras iterates a distributed dataset through a
``MultiDeviceIterator``, which makes one new source dataset per device (its ``_inputs()`` is
empty). The options of spotrain's own pipelines (:func:`trainer.indexed_input.no_autoshard`,
autotuning off) never reach those datasets, so each device's iterator runs tf.data's autotuning
thread. Deleting that iterator when ``fit`` returns waits for the thread's timed sleep, whose
period doubles up to 60 s. It was seen as 10-37 s between an attempt's final commit and its end,
in 5 of 11 emulated runs with two drains (none in 3 runs with :func:`install`). ``py-spy dump --native`` of both ranks showed
``RootDataset::Iterator::~Iterator`` waiting in
``UnboundedThreadPool::LogicalThreadWrapper::~LogicalThreadWrapper`` under ``model.fit``'s return.

:func:`install` wraps TensorFlow's private ``multi_device_iterator_ops._create_device_dataset``
so that each per-device dataset gets autotuning off; nothing in it is autotuned (a fixed
prefetch). It is installed for CPU workers only: on a GPU the per-device dataset lives on the
device, where the options dataset's kernel is not checked here. Without the private function
(another TensorFlow), it logs a warning and the wait stays.
"""

from __future__ import annotations

import logging
from typing import Any

from trainer import env  # noqa: F401  (TF_USE_LEGACY_KERAS before tensorflow)

import tensorflow as tf  # isort: skip

logger = logging.getLogger(__name__)

_MARK = "_spotrain_no_autotune"


def _no_autotune() -> tf.data.Options:
    opts = tf.data.Options()
    opts.autotune.enabled = False
    return opts


def install() -> bool:
    """Per-device datasets of distributed iterators get autotuning off; True when installed."""
    from tensorflow.python.data.ops import multi_device_iterator_ops as mdi

    original = getattr(mdi, "_create_device_dataset", None)
    if original is None:
        logger.warning(
            "this TensorFlow has no multi_device_iterator_ops._create_device_dataset: the end of "
            "fit may wait up to 60 s for tf.data's autotuning thread"
        )
        return False
    if getattr(original, _MARK, False):
        return True

    def create_device_dataset(*args: Any, **kwargs: Any) -> Any:
        return original(*args, **kwargs).with_options(_no_autotune())

    setattr(create_device_dataset, _MARK, True)
    mdi._create_device_dataset = create_device_dataset
    return True
