"""What a worker raises reaches Ray's controller without making it import TensorFlow, and is
classified as the original would be."""

from __future__ import annotations

import pickle
import subprocess
import sys

import pytest
import tensorflow as tf

from cluster.failure_policy import FailureKind, classify
from storage.errors import TransientStorageError
from tests.cluster.test_failure_policy import WorkerGroupError, wrap
from trainer import worker
from trainer.errors import PreemptedError, UserCodeError
from trainer.portable_errors import WorkerError, portable


class UsersOwnError(RuntimeError):
    """A class from the user's code (a module the controller has not imported)."""


def collective_aborted() -> tf.errors.UnavailableError:
    """What a surviving rank raises when a peer dies mid-step, with a real traceback."""
    try:
        raise tf.errors.UnavailableError(None, None, "Collective ops is aborted by: recvmsg")
    except tf.errors.UnavailableError as exc:
        return exc


def test_a_tensorflow_error_is_stood_in_for_by_its_names_message_and_traceback() -> None:
    original = collective_aborted()
    stand_in = portable(original)
    assert isinstance(stand_in, WorkerError)
    assert stand_in.type_names[:2] == ("UnavailableError", "OpError")
    assert "Collective ops is aborted" in str(stand_in)
    assert "collective_aborted" in stand_in.traceback_text  # the worker-side frames
    again = pickle.loads(pickle.dumps(stand_in))
    assert (again.type_names, again.message) == (stand_in.type_names, stand_in.message)


@pytest.mark.parametrize(
    "exc",
    [
        ValueError("bad value"),
        PreemptedError(40),
        UserCodeError("fit", "boom", "Traceback ..."),
        TransientStorageError("503", "s3://b/run"),
    ],
)
def test_builtin_and_spotrain_errors_travel_as_they_are(exc: Exception) -> None:
    assert portable(exc) is exc


def test_a_users_own_error_class_is_stood_in_for() -> None:
    stand_in = portable(UsersOwnError("nope"))
    assert isinstance(stand_in, WorkerError)
    assert stand_in.type_names[:2] == ("UsersOwnError", "RuntimeError")


@pytest.mark.parametrize(
    "original", [collective_aborted(), tf.errors.InvalidArgumentError(None, None, "shape")]
)
def test_the_stand_in_is_classified_as_the_original(original: Exception) -> None:
    stand_in = portable(original)
    bare = (classify(original), classify(stand_in))
    in_ray = (
        classify(WorkerGroupError({0: wrap(original)})),
        classify(WorkerGroupError({0: wrap(stand_in)})),
    )
    for want, got in (bare, in_ray):
        assert (got.kind, got.message) == (want.kind, want.message)


def test_a_tensorflow_value_error_in_a_worker_stays_a_user_error() -> None:
    class KerasShapeError(ValueError):  # a ValueError subclass from a non-spotrain module
        __module__ = "tf_keras.src.engine.training"

    stand_in = portable(KerasShapeError("Input 0 is incompatible with the layer"))
    assert isinstance(stand_in, WorkerError)
    c = classify(WorkerGroupError({1: wrap(stand_in, "")}))
    assert c.kind is FailureKind.USER_CODE
    assert c.message.startswith("rank 1: KerasShapeError: Input 0")
    assert "KerasShapeError" in c.user_traceback


def test_a_stand_in_unpickles_in_a_fresh_process_without_tensorflow(tmp_path) -> None:
    (tmp_path / "err.pkl").write_bytes(pickle.dumps(portable(collective_aborted())))
    code = (
        "import pickle, sys\n"
        f"e = pickle.loads(open({str(tmp_path / 'err.pkl')!r}, 'rb').read())\n"
        "print(type(e).__name__, e.type_names[0], 'tensorflow' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert out.stdout.split() == ["WorkerError", "UnavailableError", "False"], out.stderr


def test_the_train_function_raises_the_stand_in_with_the_original_as_its_cause(
    monkeypatch,
) -> None:
    original = collective_aborted()

    def fails(config: dict) -> None:
        raise original

    monkeypatch.setattr(worker, "_train_and_report", fails)
    with pytest.raises(WorkerError) as caught:
        worker.train_loop_per_worker({})
    assert caught.value.__cause__ is original

    def preempted(config: dict) -> None:
        raise PreemptedError(7)

    monkeypatch.setattr(worker, "_train_and_report", preempted)
    with pytest.raises(PreemptedError):  # spotrain's own errors are raised as they are
        worker.train_loop_per_worker({})
