"""Errors in the user's code are not retried; a peer lost mid-collective inside it is."""

import pytest

from trainer.errors import UserCodeError
from trainer.user_code import peer_lost_errors, user_code

import tensorflow as tf  # isort: skip


def test_a_users_exception_becomes_a_user_code_error() -> None:
    with pytest.raises(UserCodeError, match="build_model") as info, user_code("build_model"):
        raise KeyError("hidden")
    assert not info.value.retryable


@pytest.mark.parametrize("error", peer_lost_errors())
def test_a_lost_peer_inside_user_code_propagates_as_infrastructure(error: type) -> None:
    # Seen in the kill-node e2e test: the node died while the other worker's build_model was
    # broadcasting initial variable values, and the run FAILED as a user error.
    with pytest.raises(error), user_code("build_model"):
        raise error(None, None, "peer gone")
    assert issubclass(error, tf.errors.OpError)
