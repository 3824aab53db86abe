"""Error types shared by every spotrain package.

``SpotrainError`` is the one base class. Errors are split into *retryable* ones (infrastructure:
preemption, lost node, transient storage faults) and *deterministic* ones (bad input, user code,
permanent storage faults), so callers decide to retry on the type alone.
"""

from __future__ import annotations


class SpotrainError(Exception):
    """Base class of every error spotrain raises on purpose."""

    #: True when running again may succeed (infrastructure), False when it never will.
    retryable: bool = False


class RetryableError(SpotrainError):
    """An infrastructure fault: the same operation may succeed later."""

    retryable = True
