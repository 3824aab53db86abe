"""Index-addressable input: each input pipeline reads only its slice of every global batch.

Global batch ``s`` of epoch ``e`` is positions ``[s*G, (s+1)*G)`` of ``EpochOrder(seed, e)``
(``trainer.index_order``); input pipeline ``p`` of ``P`` (with ``R`` replicas in sync) takes
positions ``[s*G + p*G/P, s*G + (p+1)*G/P)``, split into one batch per local replica in
replica order. Its rows are read from the source by index (only those rows), then mapped by
the source's ``map_fn`` in the pipeline: per step a worker reads and maps exactly ``G/P``
examples, and a resume at (e, s) starts reading at position ``s*G``, without replay.

Keras gets it through ``strategy.distribute_datasets_from_function`` (no auto-sharding), like
the stream input: one dataset for the whole ``fit``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trainer import env  # noqa: F401  (TF_USE_LEGACY_KERAS before tensorflow)
from trainer.constants import DEFAULT_READ_ROWS
from trainer.errors import JobSpecError
from trainer.index_order import EpochOrder
from trainer.read_ahead import read_ahead
from trainer.sources import Source

import tensorflow as tf  # isort: skip


@dataclass
class IndexedInput:
    """The training (or, ``shuffle=False``, validation) stream of a source."""

    source: Source
    global_batch_size: int
    seed: int
    epochs: int
    shuffle: bool = True
    read_rows: int = DEFAULT_READ_ROWS
    """Rows of one global-batch stream read per call (a chunk of read_rows // G steps)."""
    overlap_reads: bool = True
    """Read the next chunk on a thread while this one is used (``trainer.read_ahead``)."""
    _spec: Any = field(default=None, init=False, repr=False)
    _orders: dict[int, EpochOrder] = field(default_factory=dict, init=False, repr=False)

    @property
    def examples(self) -> int:
        return self.source.examples

    @property
    def steps_per_epoch(self) -> int:
        return self.examples // self.global_batch_size

    @property
    def element_spec(self) -> Any:
        """Per-example ``(x, y[, w])`` spec (runs the map once on example 0)."""
        if self._spec is None:
            self._spec = self.source.element_spec()
        return self._spec

    def order(self, epoch: int) -> EpochOrder:
        if epoch not in self._orders:
            if len(self._orders) > 1:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = EpochOrder(
                self.examples,
                self.seed,
                epoch,
                self.source.block,
                self.source.window_blocks,
                self.shuffle,
                self.source.block_sizes,
            )
        return self._orders[epoch]

    def pipeline_indices(
        self, epoch: int, step: int, pipeline: int = 0, pipelines: int = 1
    ) -> np.ndarray:
        """Example indices input pipeline ``pipeline`` of ``pipelines`` reads at (epoch, step)."""
        per_pipeline = self.global_batch_size // pipelines
        start = step * self.global_batch_size + pipeline * per_pipeline
        return self.order(epoch).indices(start, start + per_pipeline)

    def chunk_indices(
        self, epoch: int, first_step: int, steps: int, pipeline: int = 0, pipelines: int = 1
    ) -> np.ndarray:
        """Example indices of ``steps`` consecutive steps of one pipeline, step after step."""
        g = self.global_batch_size
        per_pipeline = g // pipelines
        # the steps' positions are one run of the epoch's order (its window tables' runs):
        # pipeline p keeps its columns of each step
        run = self.order(epoch).indices(first_step * g, (first_step + steps) * g)
        if pipelines == 1:
            return run
        ours = run.reshape(steps, g)[:, pipeline * per_pipeline : (pipeline + 1) * per_pipeline]
        return ours.reshape(-1)

    def chunks(
        self, initial_epoch: int, initial_step: int, chunk_steps: int
    ) -> Iterator[tuple[int, int, int]]:
        """(epoch, first step, steps) of the remaining steps: 1, 2, 4... up to ``chunk_steps``
        at a time (a chunk never crosses an epoch's end)."""
        if initial_step >= self.steps_per_epoch:
            initial_epoch, initial_step = initial_epoch + 1, 0
        size = 1  # the first read is one step (a fast first batch), then doubling
        for epoch in range(initial_epoch, self.epochs):
            step = initial_step if epoch == initial_epoch else 0
            while step < self.steps_per_epoch:
                n = min(size, self.steps_per_epoch - step)
                yield epoch, step, n
                step += n
                size = min(2 * size, chunk_steps)

    def steps(self, initial_epoch: int = 0, initial_step: int = 0) -> Iterator[tuple[int, int]]:
        """(epoch, step) of every remaining global batch."""
        if initial_step >= self.steps_per_epoch:
            initial_epoch, initial_step = initial_epoch + 1, 0
        for epoch in range(initial_epoch, self.epochs):
            for step in range(initial_step if epoch == initial_epoch else 0, self.steps_per_epoch):
                yield epoch, step

    def pipeline_dataset(
        self,
        pipeline: int,
        pipelines: int,
        replicas: int,
        initial_epoch: int = 0,
        initial_step: int = 0,
    ) -> tf.data.Dataset:
        """Per-replica batches of one input pipeline from (initial_epoch, initial_step)."""
        check_replica_split(self.global_batch_size, replicas, pipelines)
        per_replica = self.global_batch_size // replicas
        per_pipeline = self.global_batch_size // pipelines
        source = self.source
        flat_spec = tf.nest.flatten(source.raw_spec)

        # a read covers up to read_rows // G steps (W-independent), so per-call costs are
        # shared; the first read of a (resumed) stream is one step, at any position
        chunk_steps = max(1, self.read_rows // self.global_batch_size)

        def indices(chunk: tuple[int, int, int]) -> tuple[int, np.ndarray]:
            epoch, step, n = chunk
            return n, self.chunk_indices(epoch, step, n, pipeline, pipelines)

        def read(steps_and_indices: tuple[int, np.ndarray]) -> tuple[np.ndarray, ...]:
            n, idx = steps_and_indices
            return tuple(a.reshape(n, per_pipeline, *a.shape[1:]) for a in source.read(idx))

        def rows() -> Iterator[tuple[np.ndarray, ...]]:
            chunks = self.chunks(initial_epoch, initial_step, chunk_steps)
            if not self.overlap_reads:
                yield from map(read, map(indices, chunks))
                return
            # two stages ahead of the pipeline: the order of the chunk after next, the rows of
            # the next one
            yield from read_ahead(read, read_ahead(indices, chunks))

        signature = tuple(tf.TensorSpec([None, per_pipeline, *s.shape], s.dtype) for s in flat_spec)
        ds = tf.data.Dataset.from_generator(rows, output_signature=signature).unbatch()
        flat_tuple = isinstance(source.raw_spec, tuple) and len(flat_spec) == len(source.raw_spec)
        if not flat_tuple:  # nested (a dict of columns for the map): rebuild the structure
            ds = ds.map(lambda *flat: tuple(source.pack(list(flat))))
        if source.map_fn is not None:
            ds = ds.unbatch().map(
                source.apply_map, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
            )
            return ds.batch(per_replica, drop_remainder=True)
        if per_pipeline == per_replica:
            return ds
        return ds.unbatch().batch(per_replica, drop_remainder=True)

    def distribute(
        self,
        strategy: tf.distribute.Strategy,
        initial_epoch: int = 0,
        initial_step: int = 0,
    ) -> Any:
        """A distributed dataset: each input pipeline reads only its slice of every batch."""
        check_replica_split(self.global_batch_size, strategy.num_replicas_in_sync)
        self.element_spec  # noqa: B018  (the map's first run: its errors before training)

        def dataset_fn(ctx: tf.distribute.InputContext) -> tf.data.Dataset:
            ds = self.pipeline_dataset(
                ctx.input_pipeline_id,
                ctx.num_input_pipelines,
                ctx.num_replicas_in_sync,
                initial_epoch,
                initial_step,
            )
            return ds.with_options(no_autoshard()).prefetch(2)

        return strategy.distribute_datasets_from_function(dataset_fn)


def check_replica_split(global_batch_size: int, replicas: int, pipelines: int = 1) -> None:
    """A global batch splits evenly over the replicas (and the replicas over the pipelines)."""
    if global_batch_size % replicas or replicas % pipelines:
        raise JobSpecError(
            "global_batch_size",
            global_batch_size,
            f"must be divisible by the number of replicas ({replicas})",
        )


def no_autoshard() -> tf.data.Options:
    """Options of every input spotrain builds: its own sharding, deterministic order, and no
    tf.data autotuning. Under MultiWorkerMirroredStrategy, deleting an autotuned pipeline's
    iterator at the end of ``fit`` waits for the autotune thread's timed sleep (its period
    doubles up to 60 s): seen as up to ~35 s between the final commit and the attempt's end
    (gdb: ``~RootDataset::Iterator`` waiting on ``Model::OptimizeLoop``). The input's
    parallelism is fixed, so autotuning buys nothing here."""
    opts = tf.data.Options()
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    opts.deterministic = True
    opts.autotune.enabled = False
    return opts
