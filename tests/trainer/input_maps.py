"""Map functions of the file-source tests (``map: tests/trainer/input_maps.py:fn``)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

import tensorflow as tf


def stack(cols):
    """x = [f0, f1] * 2, y = y: what the default stacking would give, doubled."""
    return tf.stack([cols["f0"], cols["f1"]]) * 2.0, cols["y"]


def broken(cols):
    raise KeyError("no column 'pixels' in this example")
