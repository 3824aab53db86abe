"""What a training worker raises, made cheap to receive.

Ray's controller (and the driver, through ``fit()``) unpickles the exception a worker's train
function raises. Unpickling an exception imports its class's module: a TensorFlow error (what
every surviving rank raises when a peer dies: the collective is aborted) makes the controller
import TensorFlow, ~3.5 s on a cold process, before it sees the failure at all; a class from
the user's code would import the user's module there. ``portable`` swaps such an exception for a
``WorkerError`` that carries the original's class names, message and traceback as text; the
failure classifier (``cluster.failure_policy``) reads the names, so the verdict is the same.

This module must not import TensorFlow (``trainer.worker`` imports it in the driver).
"""

from __future__ import annotations

import traceback
from typing import Any

from storage.errors import SpotrainError

#: Top-level packages whose exceptions travel as they are: they import cheaply in Ray's
#: controller and the driver (no TensorFlow, no user code).
PORTABLE_PACKAGES = frozenset({"builtins", "trainer", "storage", "cluster", "ray"})


class WorkerError(SpotrainError):
    """Stands in for an exception raised in a training worker whose class lives in TensorFlow,
    Keras, the user's code or another package the receiving process should not import.

    ``type_names``: the original's classes along its MRO, most derived first (the classifier
    matches on them); ``traceback_text``: the original's formatted traceback.
    """

    def __init__(self, type_names: tuple[str, ...], message: str, traceback_text: str) -> None:
        self.type_names = tuple(type_names)
        self.message = message
        self.traceback_text = traceback_text
        super().__init__(message)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.type_names, self.message, self.traceback_text))


def portable(exc: Exception) -> Exception:
    """``exc`` itself when its class imports cheaply anywhere, else a ``WorkerError`` for it."""
    package = type(exc).__module__.split(".", 1)[0]
    if package in PORTABLE_PACKAGES:
        return exc
    names = tuple(c.__name__ for c in type(exc).__mro__ if c is not object)
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return WorkerError(names, str(exc), text)
