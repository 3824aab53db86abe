"""Process environment for training: tf-keras (never Keras 3) and deterministic mode.

Import this module before anything that imports TensorFlow: it sets ``TF_USE_LEGACY_KERAS=1``
at import time, so ``tf.keras`` is tf-keras (Keras 3 fails under MultiWorkerMirroredStrategy).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

logger = logging.getLogger(__name__)


#: Lines TensorFlow's C++ side prints while it is imported, before it reads TF_CPP_MIN_LOG_LEVEL
#: (static initializers log through absl before absl is set up, so no setting silences them):
#: absl's "All log messages before absl::InitializeLog()" notice and its I/W-level lines
#: (``port.cc`` oneDNN, ``cudart_stub.cc`` "Could not find cuda drivers"). Errors pass.
_START_UP_NOISE = re.compile(r"^(WARNING: All log messages before absl::InitializeLog|[IW]\d{4} )")


@contextlib.contextmanager
def quiet_native_start_up(quiet: bool = True) -> Iterator[None]:
    """During the block, file descriptor 2 goes to a temp file; afterwards every line of it
    but TensorFlow's start-up notices (:data:`_START_UP_NOISE`) is written to stderr.
    ``quiet=False`` (``-v``) changes nothing."""
    if not quiet:
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            kept = [
                line
                for line in captured.read().decode(errors="replace").splitlines(keepends=True)
                if not _START_UP_NOISE.match(line)
            ]
            if kept:
                sys.stderr.write("".join(kept))
                sys.stderr.flush()


def import_tensorflow(quiet: bool = True) -> None:
    """Import TensorFlow here (tf-keras, see the module doc) without its C++ start-up lines
    unless ``quiet`` is False."""
    with quiet_native_start_up(quiet):
        import tensorflow  # noqa: F401


def check_legacy_keras() -> None:
    """Raise if TensorFlow was imported with Keras 3 as ``tf.keras`` (variable set too late)."""
    import tensorflow as tf

    module = tf.keras.layers.Dense.__module__
    if not module.startswith("tf_keras"):
        raise RuntimeError(
            "tf.keras is Keras 3 in this process (TF_USE_LEGACY_KERAS was set after TensorFlow "
            "was imported); set TF_USE_LEGACY_KERAS=1 in the environment (Ray: runtime_env "
            "env_vars) or import trainer.env before tensorflow"
        )


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and TensorFlow (global seed) and make tf-keras layers use
    checkpointable ``tf.random.Generator`` state (Dropout etc. resume exactly)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    tf.keras.backend.experimental.enable_tf_random_generator()


_determinism_on = False


def enable_determinism(seed: int) -> None:
    """Op determinism + seeds. Idempotent; op determinism cannot be switched off again."""
    global _determinism_on
    import tensorflow as tf

    if not _determinism_on:
        tf.config.experimental.enable_op_determinism()
        _determinism_on = True
    seed_everything(seed)


def configure(seed: int, deterministic: bool) -> None:
    """Prepare this process for a training attempt."""
    if "tensorflow" in sys.modules:
        check_legacy_keras()
    if deterministic:
        enable_determinism(seed)
    else:
        seed_everything(seed)
