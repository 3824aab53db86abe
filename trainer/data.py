"""The managed input of a job: which kind, built from what ``data`` names.

- **Index-addressable** (``trainer.indexed_input``): a file source (``data: {parquet: ...}``),
  NumPy arrays ``(x, y[, w])`` from ``make_dataset``, or a finite ``tf.data.Dataset`` read once
  into memory (up to ``SPOTRAIN_MATERIALIZE_BYTES``). The order of epoch ``e`` is a stateless
  permutation of example indices (``trainer.index_order``); each worker reads only its slice
  of every global batch; a resume starts at the next example without replay.
- **Stream** (:class:`ResumableInput`, the fallback for any other dataset): for epoch ``e``

      stateless shuffle in windows of `buffer` examples, seeded by (seed, e, window)
      -> batch(global_batch_size, drop_remainder=True)
      -> each input pipeline takes its slice of every global batch

  so the global batches are a pure function of (seed, e) too, but every worker reads (and
  maps) every example, and a resume at (e0, s0) skips s0 global batches through the whole
  pipeline (O(position)). A dataset of unknown length is counted once per run (the count is
  kept in the run, ``trainer.input_store``).

Both reach Keras through ``strategy.distribute_datasets_from_function`` (no auto-sharding):
one distributed dataset is iterated for the whole ``fit``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from trainer import env  # noqa: F401  (TF_USE_LEGACY_KERAS before tensorflow)
from trainer.constants import DEFAULT_MATERIALIZE_BYTES, DEFAULT_SHUFFLE_BUFFER
from trainer.errors import JobSpecError, UserCodeError
from trainer.indexed_input import IndexedInput, check_replica_split, no_autoshard
from trainer.input_store import InputStore, stable_key
from trainer.sources import ArraySource, Source, arrays_of, check_element_spec, materialize
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
    entry: str = ""  # the job's data entry point (keys the stored example count)


def epoch_seed(seed: int, epoch: Any) -> Any:
    """Shuffle seed of an epoch: a pure function of (seed, epoch). Works on ints and tensors."""
    return tf.constant(seed * _SEED_MIX + 1, tf.int64) + tf.cast(epoch, tf.int64) * 7919


def count_examples(
    ds: tf.data.Dataset, store: InputStore | None = None, key: str = "", where: str = "make_dataset"
) -> int:
    """Number of examples. When tf.data does not know the cardinality (files, generators,
    filters), the dataset is counted by one full pass, once per run: the count is kept in the
    run (``store``) under ``key`` and read back by later attempts."""
    card = int(ds.cardinality().numpy())
    if card == tf.data.INFINITE_CARDINALITY:
        raise UserCodeError(
            where,
            "the dataset is infinite (did make_dataset call .repeat()?); return a finite, "
            "unbatched dataset — spotrain repeats it per epoch",
        )
    if card >= 0:
        return card
    if store is not None and key:
        stored = store.count(key)
        if stored is not None:
            return stored
    logger.warning(
        "%s: the dataset's length is unknown; counting it by one full pass (once per run: the "
        "count is kept in the run). Return a dataset of known length, NumPy arrays or use a "
        "file source (data: {parquet: ...}) to avoid this pass",
        where,
    )
    with user_code(where):
        count = int(ds.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1).numpy())
    if store is not None and key:
        store.put_count(key, count, where)
    return count


def _check_element_spec(ds: tf.data.Dataset, where: str = "make_dataset") -> None:
    check_element_spec(ds.element_spec, where)


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

    @property
    def element_spec(self) -> Any:
        return self.dataset.element_spec

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
        check_replica_split(self.global_batch_size, strategy.num_replicas_in_sync)

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
    return no_autoshard()


#: What the managed input may be: the index-addressable one, or the stream fallback.
Input = IndexedInput | ResumableInput


def _check_size(examples: int, ctx: DataContext, what: str = "dataset") -> None:
    if examples < ctx.global_batch_size:
        raise JobSpecError(
            "global_batch_size",
            ctx.global_batch_size,
            f"the {what} has only {examples} examples, fewer than one global batch; "
            "use a smaller global_batch_size or more data",
        )


def _count_key(ctx: DataContext, where: str, ds: tf.data.Dataset) -> str:
    return stable_key(where, ctx.entry, ctx.config, repr(ds.element_spec))


def source_of(
    value: Any,
    ctx: DataContext,
    where: str,
    store: InputStore | None = None,
    materialize_bytes: int = DEFAULT_MATERIALIZE_BYTES,
) -> Source | tf.data.Dataset:
    """What ``make_dataset`` returned as an index-addressable source when it can be one (NumPy
    arrays; a dataset of known length that fits in ``materialize_bytes``), else the dataset."""
    arrays = arrays_of(value)
    if arrays is not None:
        return ArraySource(arrays, where)
    if not isinstance(value, tf.data.Dataset):
        raise UserCodeError(
            where,
            f"must return a tf.data.Dataset or NumPy arrays (x, y[, w]), got {type(value).__name__}",
        )
    _check_element_spec(value, where)
    card = int(value.cardinality().numpy())
    if card >= 0 and materialize_bytes > 0:
        source = materialize(value, materialize_bytes, where)
        if source is not None:
            return source
    return value


def build_input(
    make_dataset: Callable[[DataContext], Any],
    ctx: DataContext,
    epochs: int,
    shuffle_buffer: int | None = None,
    store: InputStore | None = None,
    materialize_bytes: int = DEFAULT_MATERIALIZE_BYTES,
) -> Input:
    """Call the user's make_dataset and check it; UserCodeError on any failure in it.

    NumPy arrays and finite in-memory datasets become an :class:`IndexedInput` (each worker
    gathers only its rows); anything else streams (:class:`ResumableInput`)."""
    with user_code("make_dataset"):
        value = make_dataset(ctx)
    found = source_of(value, ctx, "make_dataset", store, materialize_bytes)
    if isinstance(found, Source):
        _check_size(found.examples, ctx)
        return IndexedInput(found, ctx.global_batch_size, ctx.seed, epochs)
    examples = count_examples(found, store, _count_key(ctx, "make_dataset", found))
    _check_size(examples, ctx)
    return ResumableInput(
        dataset=found,
        examples=examples,
        global_batch_size=ctx.global_batch_size,
        seed=ctx.seed,
        epochs=epochs,
        shuffle_buffer=shuffle_buffer,
    )


def indexed_val_input(source: Source, ctx: DataContext, strategy: Any) -> tuple[Any, int]:
    """Validation over a source: no shuffle, each worker reads its slice of every batch."""
    _check_size(source.examples, ctx, "validation dataset")
    inp = IndexedInput(source, ctx.global_batch_size, ctx.seed, 1, shuffle=False)
    return inp.distribute(strategy), inp.steps_per_epoch


def build_val_input(
    make_val_dataset: Callable[[DataContext], Any],
    ctx: DataContext,
    strategy: Any,
    store: InputStore | None = None,
    materialize_bytes: int = DEFAULT_MATERIALIZE_BYTES,
) -> tuple[Any, int]:
    """Validation stream (no shuffle, drop_remainder) sliced like training; returns
    (distributed dataset, steps). Examples past the last full global batch are not used."""
    with user_code("make_val_dataset"):
        value = make_val_dataset(ctx)
    found = source_of(value, ctx, "make_val_dataset", store, materialize_bytes)
    if isinstance(found, Source):
        return indexed_val_input(found, ctx, strategy)
    ds = found
    key = _count_key(ctx, "make_val_dataset", ds)
    steps = count_examples(ds, store, key, "make_val_dataset") // ctx.global_batch_size
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
