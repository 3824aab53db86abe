"""Input order: a pure function of (seed, epoch), independent of the world size; resume skips
exactly the consumed global batches."""

from __future__ import annotations

import numpy as np
import pytest

from trainer.data import DataContext, ResumableInput, build_input, shard_global_batches
from trainer.errors import JobSpecError, UserCodeError

import tensorflow as tf  # isort: skip

N, G, EPOCHS = 40, 8, 3


def _input(seed: int = 3, buffer: int | None = None) -> ResumableInput:
    ds = tf.data.Dataset.range(N).map(lambda i: (tf.cast(i, tf.float32)[None], i))
    return ResumableInput(ds, N, G, seed, EPOCHS, shuffle_buffer=buffer)


def _ids(ds: tf.data.Dataset) -> list[list[int]]:
    return [b[1].numpy().tolist() for b in ds]


def test_each_epoch_is_a_shuffled_permutation_and_a_pure_function_of_seed_and_epoch() -> None:
    batches = _ids(_input().global_batches())
    assert len(batches) == EPOCHS * (N // G)
    per_epoch = [[i for b in batches[e * 5 : (e + 1) * 5] for i in b] for e in range(EPOCHS)]
    for order in per_epoch:
        assert sorted(order) == list(range(N))
        assert order != list(range(N))
    assert per_epoch[0] != per_epoch[1]
    assert _ids(_input().global_batches()) == batches  # same again
    assert _ids(_input(seed=4).global_batches()) != batches


@pytest.mark.parametrize(("epoch", "step"), [(0, 0), (0, 3), (1, 0), (2, 4), (1, 5)])
def test_resume_skips_exactly_the_consumed_batches(epoch: int, step: int) -> None:
    full = _ids(_input().global_batches())
    resumed = _ids(_input().global_batches(epoch, step))
    assert resumed == full[epoch * 5 + step :]


def test_world_size_one_and_two_see_the_same_global_batches() -> None:
    inp = _input()
    one = _ids(shard_global_batches(inp.global_batches(), G, 0, 1, 1))
    r0 = _ids(shard_global_batches(inp.global_batches(), G, 0, 2, 2))
    r1 = _ids(shard_global_batches(inp.global_batches(), G, 1, 2, 2))
    assert [a + b for a, b in zip(r0, r1, strict=True)] == one
    # two replicas on one pipeline: consecutive per-replica batches, in replica order
    local = _ids(shard_global_batches(inp.global_batches(), G, 0, 1, 2))
    assert [local[i] + local[i + 1] for i in range(0, len(local), 2)] == one


def test_small_shuffle_buffer_is_still_deterministic() -> None:
    a = _ids(_input(buffer=4).global_batches(1, 2))
    assert a == _ids(_input(buffer=4).global_batches())[7:]


def test_distributed_dataset_on_default_strategy_matches_global_batches() -> None:
    inp = _input()
    dist = inp.distribute(tf.distribute.get_strategy(), 1, 1)
    got = [b[1].numpy().tolist() for b in dist]
    assert got == _ids(inp.global_batches())[6:]


def test_dataset_smaller_than_one_global_batch_is_a_clear_error() -> None:
    ctx = DataContext(global_batch_size=64)
    with pytest.raises(JobSpecError, match=r"global_batch_size.*fewer than one global batch"):
        build_input(
            lambda c: tf.data.Dataset.from_tensor_slices((np.zeros((10, 2)), np.zeros(10))), ctx, 1
        )


def test_user_dataset_errors_are_user_code_errors() -> None:
    ctx = DataContext(global_batch_size=2)

    def broken(c):
        raise KeyError("no such column")

    with pytest.raises(UserCodeError, match="make_dataset") as info:
        build_input(broken, ctx, 1)
    assert "no such column" in info.value.user_traceback
    with pytest.raises(UserCodeError, match="infinite"):
        build_input(lambda c: tf.data.Dataset.from_tensors((1.0, 1.0)).repeat(), ctx, 1)
    with pytest.raises(UserCodeError, match="unbatched"):
        build_input(lambda c: tf.data.Dataset.range(4), ctx, 1)


def test_global_batch_not_divisible_by_replicas_is_a_clear_error() -> None:
    class TwoReplicas:
        num_replicas_in_sync = 3

    with pytest.raises(JobSpecError, match="divisible"):
        _input().distribute(TwoReplicas())  # type: ignore[arg-type]


def test_order_does_not_depend_on_the_global_tf_seed() -> None:
    """Global seed 0 once broke Dataset.shuffle(seed=<tensor>) ((0, 0) check on a tensor);
    the stateless shuffle ignores the global seed entirely."""
    tf.random.set_seed(0)
    a = _ids(_input().global_batches())
    tf.random.set_seed(12345)
    assert _ids(_input().global_batches()) == a
