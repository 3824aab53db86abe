"""The boundary around the user's code (import, build_model, make_dataset, callbacks, fit).

``with user_code("build_model"): ...`` turns an exception of the user's code into
:class:`UserCodeError` (not retryable) carrying the user's whole traceback as text, so it
survives pickling across Ray. Two kinds pass through as they are: spotrain's own errors, and the
errors a collective raises when a peer worker is gone (infrastructure, retried), even when they
surface inside the user's code (build_model creates variables with a broadcast).

No TensorFlow import here (the driver imports this through ``trainer.job``): a TensorFlow error
can only exist once TensorFlow is imported, so the peer-lost types are looked up then.
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

from storage.errors import SpotrainError
from trainer.errors import UserCodeError

#: ``tf.errors`` types a collective raises when a peer worker is gone.
PEER_LOST_ERROR_NAMES = (
    "UnavailableError",
    "CancelledError",
    "AbortedError",
    "DeadlineExceededError",
)


def peer_lost_errors() -> tuple[type[BaseException], ...]:
    """The ``tf.errors`` types of a lost peer; empty while TensorFlow is not imported."""
    tf = sys.modules.get("tensorflow")
    if tf is None:
        return ()
    return tuple(getattr(tf.errors, name) for name in PEER_LOST_ERROR_NAMES)


@contextmanager
def user_code(where: str, catch: tuple[type[BaseException], ...] = (Exception,)) -> Iterator[None]:
    """Raise ``UserCodeError(where, repr(exc), traceback)`` for an exception of type ``catch``
    from the block; spotrain errors and a lost peer's collective errors propagate unchanged."""
    try:
        yield
    except SpotrainError:
        raise
    except catch as exc:  # the user's code may raise anything
        if isinstance(exc, peer_lost_errors()):
            raise
        raise UserCodeError(where, repr(exc), traceback.format_exc()) from exc
