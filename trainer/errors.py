"""Errors raised by the trainer.

Retryable ones (``PreemptedError``) end an attempt that a later attempt resumes; deterministic
ones (``UserCodeError``, ``JobSpecError``, ``ModelMismatchError``...) fail the run at once.
Every error that carries fields defines ``__reduce__`` so it pickles across Ray.
"""

from __future__ import annotations

from typing import Any

from storage.errors import RetryableError, SpotrainError
from storage.redaction import redact


class TrainerError(SpotrainError):
    """A deterministic trainer error: running again gives the same result."""


class JobSpecError(TrainerError, ValueError):
    """A TrainJob field has a bad value. The message names the field, its value and the fix."""

    def __init__(self, field: str, value: object, fix: str) -> None:
        self.field = field
        self.value = redact(value, field.rsplit(".", 1)[-1])  # never echo a secret
        self.fix = fix
        super().__init__(f"job field {field!r} = {self.value!r} is invalid: {fix}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.field, self.value, self.fix))


class UserCodeError(TrainerError):
    """The user's code (import, build_model, make_dataset, a shape error in fit) failed.

    ``user_traceback`` holds the formatted traceback text, so it survives pickling across Ray
    even when the original exception type does not exist in the receiving process.
    """

    def __init__(self, where: str, message: str, user_traceback: str = "") -> None:
        self.where = where
        self.message = message
        self.user_traceback = user_traceback
        text = f"error in user code ({where}): {message}"
        if user_traceback:
            text += "\n--- user traceback ---\n" + user_traceback
        super().__init__(text)

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.where, self.message, self.user_traceback))


class ModelMismatchError(TrainerError):
    """The run's checkpoints were written by a different model or optimizer."""

    def __init__(self, run_url: str, saved: str, current: str, detail: str = "") -> None:
        self.run_url = run_url
        self.saved = saved
        self.current = current
        self.detail = detail
        super().__init__(
            f"the checkpoints under {run_url} were made by a different model/optimizer "
            f"(fingerprint {saved[:12]} != {current[:12]}){': ' + detail if detail else ''}. "
            "To start a fresh run, give the job a new name, or delete the run URL "
            f"({run_url}); to resume, use the model and optimizer the run started with."
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_url, self.saved, self.current, self.detail))


class ExportStepError(TrainerError):
    """The step asked for cannot be read exactly (not committed, or it does not verify)."""

    def __init__(self, run_url: str, step: int, committed: list[int], why: str) -> None:
        self.run_url = run_url
        self.step = step
        self.committed = list(committed)
        self.why = why
        super().__init__(
            f"step {step} of {run_url} cannot be exported: {why}; fix: pick one of the "
            f"committed steps {self.committed or '(none)'} (spotrain checkpoints RUN_URL lists "
            "them), or leave out --step for the newest one that verifies"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.run_url, self.step, self.committed, self.why))


class ReplicaDivergenceError(TrainerError):
    """After a restore the ranks do not hold the same variables."""

    def __init__(self, digests: list[str]) -> None:
        self.digests = list(digests)
        super().__init__(
            "ranks hold different variables after restoring the same checkpoint "
            f"(per-rank checksums {self.digests}); every rank must build the same model "
            "(same build_model, same seed) — check for rank-dependent code in build_model"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.digests,))


class CallbackStateError(TrainerError):
    """A callback has state that spotrain cannot save, so an exact resume is impossible."""


class PreemptedError(RetryableError):
    """The attempt stopped on a preemption notice after committing its state (zero steps lost)."""

    def __init__(self, step: int, reason: str = "preemption") -> None:
        self.step = step
        self.reason = reason
        super().__init__(
            f"preempted ({reason}) at global step {step}; the state of step {step} is "
            "committed — run again to resume"
        )

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.step, self.reason))


class DataSourceError(TrainerError):
    """A file source (``data: {parquet: ...}``) cannot be read as asked: no files, a missing
    column, a column of the wrong type, an empty file. Raised before training starts."""

    def __init__(self, url: str, problem: str, fix: str) -> None:
        self.url = redact(url)
        self.problem = problem
        self.fix = fix
        super().__init__(f"data source {self.url}: {problem}; fix: {fix}")

    def __reduce__(self) -> tuple[Any, ...]:
        return (type(self), (self.url, self.problem, self.fix))
