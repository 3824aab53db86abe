"""Deterministic, resumable input.

The user's ``make_dataset(ctx)`` yields unbatched ``(x, y[, w])`` examples in a fixed order.
spotrain then builds, for epoch ``e``:

    stateless shuffle in windows of `buffer` examples, seeded by (seed, e, window)
    -> batch(global_batch_size, drop_remainder=True)
    -> each input pipeline takes its slice of every global batch

so the global batches of an epoch are a pure function of (seed, e), never of the world size,
the rank or the attempt. A run resumed at (epoch e0, step s0) sees epochs e0..epochs-1 as one
stream and skips exactly s0 global batches of e0. Keras gets it through
``strategy.distribute_datasets_from_function`` (no auto-sharding): a distributed dataset is
iterated once for the whole ``fit`` (tf-keras never recreates its iterator per epoch).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainer import env  # noqa: F401  (TF_USE_LEGACY_KERAS before tensorflow)
from trainer.constants import DEFAULT_SHUFFLE_BUFFER
from trainer.errors import JobSpecError, UserCodeError
from trainer.user_code import user_code

import tensorflow as tf  # isort: skip

logger = logging.getLogger(__name__)

_SEED_MIX = 1_000_003  # odd prime: epoch seeds of neighbouring epochs/seeds do not collide


@dataclass(frozen=True)
class DataContext:
    """What ``make_dataset(ctx)`` receives."""

    config: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    world_size: int = 1
    rank: int = 0
    global_batch_size: int = 1
    managed_input: bool = True


def epoch_seed(seed: int, epoch: Any) -> Any:
    """Shuffle seed of an epoch: a pure function of (seed, epoch). Works on ints and tensors."""
    return tf.constant(seed * _SEED_MIX + 1, tf.int64) + tf.cast(epoch, tf.int64) * 7919


def count_examples(ds: tf.data.Dataset) -> int:
    """Number of examples; counts by iterating when the cardinality is unknown."""
    card = int(ds.cardinality().numpy())
    if card == tf.data.INFINITE_CARDINALITY:
        raise UserCodeError(
            "make_dataset",
            "the dataset is infinite (did make_dataset call .repeat()?); return a finite, "
            "unbatched dataset — spotrain repeats it per epoch",
        )
    if card >= 0:
        return card
    return int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())


def _check_element_spec(ds: tf.data.Dataset) -> None:
    spec = ds.element_spec
    if not isinstance(spec, tuple) or len(spec) not in (2, 3):
        raise UserCodeError(
            "make_dataset",
            f"elements must be unbatched (x, y) or (x, y, sample_weight) tuples; got {spec}",
        )


@dataclass(frozen=True)
class ResumableInput:
    """The training stream of one run from a given position.

    ``examples`` is the size of one epoch; ``steps_per_epoch = examples // global_batch_size``.
    """

    dataset: tf.data.Dataset
    examples: int
    global_batch_size: int
    seed: int
    epochs: int
    shuffle_buffer: int | None = None

    @property
    def steps_per_epoch(self) -> int:
        return self.examples // self.global_batch_size

    def epoch_dataset(self, epoch: Any) -> tf.data.Dataset:
        """Global batches of one epoch (epoch may be a tensor).

        The shuffle is stateless: windows of ``buffer`` examples, each permuted by
        ``stateless_shuffle`` seeded with (seed, epoch, window). It depends on nothing else
        (not the global TF seed, not how often anything ran), and a buffer >= the dataset size
        is a uniform shuffle of the whole epoch.
        """
        buffer = self.shuffle_buffer or min(self.examples, DEFAULT_SHUFFLE_BUFFER)
        epoch = tf.cast(epoch, tf.int64)

        def permute(window: Any, batch: Any) -> Any:
            n = tf.shape(tf.nest.flatten(batch)[0])[0]
            key = tf.stack([epoch_seed(self.seed, epoch), window])
            perm = tf.random.experimental.stateless_shuffle(tf.range(n), seed=key)
            return tf.nest.map_structure(lambda t: tf.gather(t, perm), batch)

        ds = self.dataset.batch(buffer).enumerate().map(permute).unbatch()
        return ds.batch(self.global_batch_size, drop_remainder=True)

    def global_batches(self, initial_epoch: int = 0, initial_step: int = 0) -> tf.data.Dataset:
        """All remaining global batches from (initial_epoch, initial_step) to the end."""
        if initial_step >= self.steps_per_epoch:
            initial_epoch, initial_step = initial_epoch + 1, 0
        epochs = tf.data.Dataset.range(initial_epoch, self.epochs)
        stream = epochs.flat_map(self.epoch_dataset)
        return stream.skip(initial_step) if initial_step else stream

    def distribute(
        self,
        strategy: tf.distribute.Strategy,
        initial_epoch: int = 0,
        initial_step: int = 0,
    ) -> Any:
        """A distributed dataset: each replica gets its slice of every global batch."""
        replicas = strategy.num_replicas_in_sync
        if self.global_batch_size % replicas:
            raise JobSpecError(
                "global_batch_size",
                self.global_batch_size,
                f"must be divisible by the number of replicas ({replicas})",
            )

        def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            ds = self.global_batches(initial_epoch, initial_step)
            ds = shard_global_batches(
                ds,
                self.global_batch_size,
                ctx.input_pipeline_id,
                ctx.num_input_pipelines,
                ctx.num_replicas_in_sync,
            )
            return ds.with_options(_no_autoshard()).prefetch(2)

        return strategy.distribute_datasets_from_function(dataset_fn)


def shard_global_batches(
    ds: tf.data.Dataset, global_batch: int, pipeline: int, pipelines: int, replicas: int
) -> tf.data.Dataset:
    """Input pipeline ``pipeline`` takes its slice of each global batch, split into one batch
    per local replica (in replica order): replica r gets rows [r*b, (r+1)*b)."""
    per_replica = global_batch // replicas
    local_replicas = replicas // pipelines
    start = pipeline * local_replicas * per_replica

    def take_slice(*batch: Any) -> Any:
        def cut(t: tf.Tensor) -> tf.Tensor:
            part = t[start : start + local_replicas * per_replica]
            return tf.reshape(part, tf.concat([[local_replicas, per_replica], tf.shape(t)[1:]], 0))

        return tuple(tf.nest.map_structure(cut, b) for b in batch)

    ds = ds.map(take_slice)
    if local_replicas == 1:
        return ds.map(lambda *b: tuple(tf.nest.map_structure(lambda t: t[0], x) for x in b))
    return ds.unbatch()


def _no_autoshard() -> tf.data.Options:
    """Options of every input spotrain builds: its own sharding, deterministic order, and no
    tf.data autotuning. Under MultiWorkerMirroredStrategy, deleting an autotuned pipeline's
    iterator at the end of ``fit`` waits for the autotune thread's timed sleep (its period
    doubles up to 60 s): seen as up to ~35 s between the final commit and the attempt's end
    (gdb: ``~RootDataset::Iterator`` waiting on ``Model::OptimizeLoop``). The input's
    parallelism is fixed (``prefetch(2)``), so autotuning buys nothing here."""
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    opts.deterministic = True
    opts.autotune.enabled = False
    return opts


def build_input(
    make_dataset: Callable[[DataContext], Any],
    ctx: DataContext,
    epochs: int,
    shuffle_buffer: int | None = None,
) -> ResumableInput:
    """Call the user's make_dataset and check it; UserCodeError on any failure in it."""
    with user_code("make_dataset"):
        ds = make_dataset(ctx)
    if not isinstance(ds, tf.data.Dataset):
        raise UserCodeError(
            "make_dataset", f"must return a tf.data.Dataset, got {type(ds).__name__}"
        )
    _check_element_spec(ds)
    examples = count_examples(ds)
    if examples < ctx.global_batch_size:
        raise JobSpecError(
            "global_batch_size",
            ctx.global_batch_size,
            f"the dataset has only {examples} examples, fewer than one global batch; "
            "use a smaller global_batch_size or more data",
        )
    return ResumableInput(
        dataset=ds,
        examples=examples,
        global_batch_size=ctx.global_batch_size,
        seed=ctx.seed,
        epochs=epochs,
        shuffle_buffer=shuffle_buffer,
    )


def build_val_input(
    make_val_dataset: Callable[[DataContext], Any], ctx: DataContext, strategy: Any
) -> tuple[Any, int]:
    """Validation stream (no shuffle, drop_remainder) sliced like training; returns
    (distributed dataset, steps). Examples past the last full global batch are not used."""
    with user_code("make_val_dataset"):
        ds = make_val_dataset(ctx)
    if not isinstance(ds, tf.data.Dataset):
        raise UserCodeError(
            "make_val_dataset", f"must return a tf.data.Dataset, got {type(ds).__name__}"
        )
    _check_element_spec(ds)
    steps = count_examples(ds) // ctx.global_batch_size
    if steps == 0:
        raise JobSpecError(
            "global_batch_size",
            ctx.global_batch_size,
            "the validation dataset is smaller than one global batch",
        )
    g = ctx.global_batch_size

    def dataset_fn(ictx: tf.distribute.InputContext) -> tf.data.Dataset:
        out = shard_global_batches(
            ds.batch(g, drop_remainder=True),
            g,
            ictx.input_pipeline_id,
            ictx.num_input_pipelines,
            ictx.num_replicas_in_sync,
        )
        return out.with_options(_no_autoshard())

    return strategy.distribute_datasets_from_function(dataset_fn), steps


def unmanaged_input(make_dataset: Callable[[DataContext], Any], ctx: DataContext) -> Any:
    """Opt-out: the user's dataset goes to Keras as is (batched, sharded by the user)."""
    logger.warning(
        "managed_input is off: the user's dataset is used as is; spotrain cannot skip consumed "
        "batches or fix the sample order, so exact resume is the user's responsibility"
    )
    with user_code("make_dataset"):
        return make_dataset(ctx)
