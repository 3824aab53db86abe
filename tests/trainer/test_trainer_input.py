"""Index-addressable input: the order is a pure function of (seed, epoch); each input pipeline
reads exactly its G/W rows per step whatever W; a resume reads nothing it skips; a world-size
change keeps each example once per epoch; bad file sources fail before training, in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cluster.failure_policy import FailureKind, classify
from tests.trainer.input_files import write_parquet, write_tfrecord
from trainer.data import DataContext, build_input
from trainer.data_spec import FileSource
from trainer.errors import DataSourceError, UserCodeError
from trainer.file_source_base import UnitLookup
from trainer.file_sources import open_source
from trainer.index_order import (
    EpochOrder,
    _computed_feistel,
    _tabulated_feistel,
    derive_key,
    permute,
)
from trainer.indexed_input import IndexedInput
from trainer.input_store import InputStore
from trainer.sources import ALIGN_BYTES, ArraySource, aligned_empty

N, G = 100, 8
MAPS = "tests/trainer/input_maps.py"
REPO = str(Path(__file__).resolve().parents[2])


def _arrays(n: int = N) -> tuple[np.ndarray, np.ndarray]:
    x = np.arange(n * 2, dtype=np.float32).reshape(n, 2)
    return x, np.arange(n, dtype=np.int64)


def test_the_order_of_an_epoch_is_the_same_in_every_spotrain_version() -> None:
    """A run resumed by a newer spotrain continues the same epoch order: a changed order in
    the middle of an epoch would train some examples twice and skip others. These values
    are the order as first released (window tables and the per-index path)."""
    order = EpochOrder(1000, 7, 2, 10, 3)
    # fmt: off
    assert order.indices(0, 12).tolist() == [
        871, 318, 878, 319, 873, 312, 311, 872, 314, 315, 305, 879,
    ]
    assert order.indices(988, 1000).tolist() == [
        42, 48, 280, 281, 284, 289, 286, 287, 282, 285, 288, 283,
    ]
    assert permute(np.arange(12), 3_000_000, 99).tolist() == [
        2462425, 1210786, 2732967, 1916471, 1588079, 2185467,
        2546913, 368224, 1163694, 1691874, 526288, 1895934,
    ]
    # fmt: on


@pytest.mark.parametrize(("n", "block", "window"), [(1, 1, 0), (7, 1, 0), (100, 8, 3), (99, 10, 1)])
def test_each_epoch_is_a_permutation_and_a_pure_function_of_seed_and_epoch(
    n: int, block: int, window: int
) -> None:
    orders = [EpochOrder(n, 3, e, block, window).indices(0, n) for e in range(3)]
    for order in orders:
        assert sorted(order.tolist()) == list(range(n))
    assert np.array_equal(EpochOrder(n, 3, 1, block, window).indices(0, n), orders[1])
    if n > 7:
        assert not np.array_equal(orders[0], orders[1])
        assert not np.array_equal(EpochOrder(n, 4, 0, block, window).indices(0, n), orders[0])
    # any range of positions is its slice of the whole epoch (addressable, O(range))
    assert np.array_equal(
        EpochOrder(n, 3, 2, block, window).indices(n // 2, n), orders[2][n // 2 :]
    )


def test_a_window_draws_from_its_own_blocks_only() -> None:
    order = EpochOrder(1000, 1, 0, block=50, window_blocks=2)
    for w in range(order.windows):
        blocks = set((order.indices(w * 100, (w + 1) * 100) // 50).tolist())
        assert len(blocks) == 2  # a worker caches at most one window's blocks per window


def test_feistel_is_a_bijection_for_awkward_sizes() -> None:
    for n in (2, 3, 5, 17, 1023, 1025):
        assert sorted(permute(np.arange(n), n, 99).tolist()) == list(range(n))


@pytest.mark.parametrize("half", [1, 5, 11, 16])
def test_a_tabulated_feistel_round_gives_the_computed_one(half: int) -> None:
    """Halves up to ROUND_TABLE_BITS look each round up in a table; wider ones compute it:
    one network either way (the order must not depend on the domain's size class)."""
    keys = [np.uint64(derive_key(42, r)) for r in range(4)]
    x = np.random.default_rng(half).integers(0, 1 << (2 * half), 5000).astype(np.uint64)
    assert np.array_equal(_tabulated_feistel(half, keys)(x), _computed_feistel(half, keys)(x))


def test_a_run_of_positions_is_the_order_of_each_position() -> None:
    """``indices`` copies runs of the window tables; ``at`` looks positions up one by one."""
    for order in (EpochOrder(1000, 7, 2, 10, 3), EpochOrder(997, 1, 0, 13, 0)):
        for start, stop in ((0, 1000), (25, 26), (29, 931), (500, 500), (960, 997)):
            stop = min(stop, order.examples)
            want = order.at(np.arange(start, stop))
            assert np.array_equal(order.indices(start, stop), want)


def _input(source, epochs: int = 3) -> IndexedInput:
    return IndexedInput(source, G, 5, epochs, read_rows=G)  # one step per read


@pytest.mark.parametrize(
    "unit_rows",
    [[16384, 16384, 13348, 16384, 1], [5, 3, 7, 1, 9, 2], [10, 0, 4, 6], [1], [7] * 50],
)
def test_unit_lookup_matches_a_binary_search_over_unit_starts(unit_rows: list[int]) -> None:
    starts = np.concatenate([[0], np.cumsum(unit_rows)]).astype(np.int64)
    indices = np.random.default_rng(0).integers(0, starts[-1], 10_000)
    indices = np.concatenate([indices, starts[:-1][np.diff(starts) > 0], [starts[-1] - 1]])
    expected = np.searchsorted(starts, indices, side="right") - 1
    np.testing.assert_array_equal(UnitLookup(starts)(indices), expected)


@pytest.mark.parametrize("pipelines", [1, 2, 4])
def test_each_pipeline_reads_exactly_its_slice_of_every_global_batch(pipelines: int) -> None:
    inp = _input(ArraySource(_arrays()))
    for epoch, step in [(0, 0), (1, 5), (2, 11)]:
        parts = [inp.pipeline_indices(epoch, step, p, pipelines) for p in range(pipelines)]
        assert np.array_equal(np.concatenate(parts), inp.pipeline_indices(epoch, step))
    # counted where the rows are materialized: G/W rows per step and pipeline
    sources = [ArraySource(_arrays()) for _ in range(pipelines)]
    for p, src in enumerate(sources):
        ds = _input(src).pipeline_dataset(p, pipelines, pipelines)
        batches = list(ds.take(3).as_numpy_iterator())
        assert all(b[0].shape == (G // pipelines, 2) for b in batches)
    # tf.data may pull one read ahead; never more than one step beyond those taken
    assert all(3 * G // pipelines <= s.counter.examples <= 4 * G // pipelines for s in sources)


def test_a_world_size_change_keeps_each_example_once_per_epoch() -> None:
    inp = _input(ArraySource(_arrays()))
    steps = inp.steps_per_epoch  # 12 of 8 examples; 4 dropped
    seen = []
    for step in range(steps):
        world = 2 if step < 5 else 4  # resized at step 5
        seen += [inp.pipeline_indices(1, step, p, world) for p in range(world)]
    flat = np.concatenate(seen)
    assert len(flat) == len(set(flat.tolist())) == steps * G


def test_a_resume_reads_only_the_rows_of_its_first_batch(tmp_path: Path) -> None:
    x, y = _arrays(400)
    write_parquet(tmp_path / "d", x, y, files=4, row_group=25)
    spec = FileSource(
        parquet=str(tmp_path / "d"), features=("f0", "f1"), label="y", window_blocks=2
    )
    src = open_source(spec, REPO)
    footers = src.counter.bytes
    inp = IndexedInput(src, G, 5, 2, read_rows=G)
    ds = inp.pipeline_dataset(1, 2, 2, initial_epoch=1, initial_step=45)
    first = next(iter(ds))
    want = inp.pipeline_indices(1, 45, 1, 2)
    assert np.array_equal(first[1].numpy(), want)
    # this step, one step tf.data may pull ahead, and the one read ahead (steps of one read)
    assert src.counter.examples <= 3 * G // 2
    # bytes: the footers and the row groups of (at most) two windows of two blocks
    assert src.counter.bytes - footers < 4 * 2 * 25 * 3 * 8 * 2


def test_tensorflow_takes_an_aligned_array_a_generator_yields_without_a_copy() -> None:
    """The stack fact reads rely on (TF 2.21): ``from_generator`` wraps a NumPy array aligned to
    ``ALIGN_BYTES`` (the tensor shares its buffer) and copies a misaligned one. So a read returns
    new aligned arrays, and nothing changes them once yielded."""
    import tensorflow as tf

    aligned = aligned_empty((512, 3), np.float32)
    raw = np.empty(512 * 3 * 4 + 2 * ALIGN_BYTES, np.uint8)
    start = -raw.ctypes.data % ALIGN_BYTES + 16  # 16 bytes past a boundary: NumPy's alignment
    misaligned = raw[start : start + 512 * 3 * 4].view(np.float32).reshape(512, 3)
    assert aligned.ctypes.data % ALIGN_BYTES == 0 and misaligned.ctypes.data % ALIGN_BYTES
    for array, shared in ((aligned, True), (misaligned, False)):
        array[...] = 1
        ds = tf.data.Dataset.from_generator(
            lambda a=array: iter([a]), output_signature=tf.TensorSpec([512, 3], tf.float32)
        )
        tensor = next(iter(ds))
        array[...] = 2
        assert (float(tensor[0, 0]) == 2) is shared


def test_array_source_reads_aligned_copies_of_its_rows() -> None:
    x, y = _arrays()
    rows = np.array([5, 0, N - 1, 7])
    got = ArraySource((x, y)).read(rows)
    assert np.array_equal(got[0], x[rows]) and np.array_equal(got[1], y[rows])
    assert all(a.ctypes.data % ALIGN_BYTES == 0 and a.flags.c_contiguous for a in got)
    assert not np.shares_memory(got[0], x)
    strings = ArraySource((np.array([b"a", b"bc", b"d"], dtype=object), y[:3])).read(rows[:2] % 3)
    assert list(strings[0]) == [b"d", b"a"]


@pytest.mark.parametrize(("window", "max_bytes"), [(2, 2**30), (0, 2**30), (0, 600)])
def test_parquet_rows_read_through_the_slab_are_the_files_rows(
    tmp_path: Path, window: int, max_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Windowed, uniform (every read touches every row group: the slab grows) and capped
    (reads go row group by row group): each read returns exactly the rows asked for."""
    monkeypatch.setattr("trainer.file_source_base.DEFAULT_ROW_CACHE_BYTES", max_bytes)
    x, y = _arrays(397)
    write_parquet(tmp_path / "d", x, y, files=3, row_group=5)  # 81 row groups, some shorter
    spec = FileSource(
        parquet=str(tmp_path / "d"), features=("f0", "f1"), label="y", window_blocks=window
    )
    src = open_source(spec, REPO)
    inp = IndexedInput(src, G, 3, 2)
    for epoch in range(2):
        idx = inp.chunk_indices(epoch, 0, inp.steps_per_epoch)
        for part in np.array_split(idx, 5):
            got_x, got_y = src.read(part)
            assert np.array_equal(got_x, x[part]) and np.array_equal(got_y, y[part])
            assert got_x.ctypes.data % ALIGN_BYTES == 0 and got_y.ctypes.data % ALIGN_BYTES == 0
    slab = src._slab
    if max_bytes < 2**30:
        assert slab.nbytes <= max_bytes
    elif window == 0:
        assert slab.capacity < len(slab._unit_in) <= slab.max_slots  # it grew for one read


def test_a_read_that_fails_leaves_no_half_written_row_group_in_the_slab(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Row groups are written straight into their slab slots, several files at once: when one
    load fails, the read raises after every load has ended and the slots it had claimed hold
    nothing, so the same rows read again are the files' rows."""
    x, y = _arrays(120)
    write_parquet(tmp_path / "d", x, y, files=4, row_group=10)
    src = open_source(
        FileSource(parquet=str(tmp_path / "d"), features=("f0", "f1"), label="y"), REPO
    )
    read_unit = src._read_unit  # type: ignore[attr-defined]
    failed: list[int] = []

    def flaky(unit: int) -> dict[str, np.ndarray]:
        if unit == 7 and not failed:
            failed.append(unit)
            raise OSError("connection reset")
        return dict(read_unit(unit))

    monkeypatch.setattr(src, "_read_unit", flaky)
    rows = np.arange(0, 120, 3)  # every row group of every file
    with pytest.raises(OSError, match="connection reset"):
        src.read(rows)
    got_x, got_y = src.read(rows)
    assert failed and np.array_equal(got_x, x[rows]) and np.array_equal(got_y, y[rows])


def test_parquet_map_runs_on_the_workers_rows_and_list_columns_are_tensors(tmp_path: Path) -> None:
    x, y = _arrays(40)
    write_parquet(tmp_path / "d", x, y, files=2, row_group=10)
    mapped = open_source(
        FileSource(
            parquet=str(tmp_path / "d"), features=("f0", "f1"), label="y", map=f"{MAPS}:stack"
        ),
        REPO,
    )
    plain = open_source(
        FileSource(parquet=str(tmp_path / "d"), features=("f0", "f1"), label="y"), REPO
    )
    a = next(iter(IndexedInput(mapped, G, 1, 1).pipeline_dataset(0, 2, 2)))
    b = next(iter(IndexedInput(plain, G, 1, 1).pipeline_dataset(0, 2, 2)))
    assert np.array_equal(a[0].numpy(), 2 * b[0].numpy()) and a[0].shape == (G // 2, 2)
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "l").mkdir()
    for part in range(2):  # row group 0 is read for the shape, and is the first load of unit 0
        v = [[float(i), float(-i)] for i in range(part * 20, part * 20 + 20)]
        pq.write_table(
            pa.table({"v": v, "y": list(range(part * 20, part * 20 + 20))}),
            tmp_path / "l" / f"{part}.parquet",
            row_group_size=5,
        )
    src = open_source(FileSource(parquet=str(tmp_path / "l"), features=("v",), label="y"), REPO)
    assert src.raw_spec[0].shape == (2,)
    idx = np.random.default_rng(0).permutation(40)
    got_x, got_y = src.read(idx)  # row groups of both files, loaded concurrently
    assert np.array_equal(got_y, idx) and np.array_equal(got_x, np.stack([idx, -idx], 1))


def test_tfrecord_index_is_written_once_in_the_run(tmp_path: Path) -> None:
    x, y = _arrays(30)
    write_tfrecord(tmp_path / "t", x, y, files=2)
    store = InputStore(f"file://{tmp_path}/run")
    spec = FileSource(tfrecord=str(tmp_path / "t"), features=("f0", "f1"), label="y")
    src = open_source(spec, REPO, store=store)
    idx = sorted((tmp_path / "run" / "input" / "tfrecord").iterdir())
    assert len(idx) == 2 and src.examples == 30
    again = open_source(spec, REPO, store=store)  # reads the stored index
    got = again.read(np.array([29, 0, 17]))
    assert got[1].tolist() == [29, 0, 17] and got[0][0].tolist() == [58.0, 59.0]


def _bad(tmp_path: Path, **over) -> FileSource:
    x, y = _arrays(20)
    if not (tmp_path / "d").exists():
        write_parquet(tmp_path / "d", x, y, files=1)
    fields = {"parquet": str(tmp_path / "d"), "features": ("f0", "f1"), "label": "y", **over}
    return FileSource(**fields)


def test_bad_parquet_sources_fail_before_training_in_one_line(tmp_path: Path) -> None:
    cases = {
        "missing column 'f7'; fix: name columns the files have: f0, f1, y": _bad(
            tmp_path, features=("f0", "f7")
        ),
        "no *.parquet/*.pq files there": _bad(tmp_path, parquet=str(tmp_path / "nowhere")),
    }
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"f0": ["a", "b"], "y": [1, 2]}), tmp_path / "s.parquet")
    cases["column 'f0' has type string (not numeric)"] = _bad(
        tmp_path, parquet=str(tmp_path / "s.parquet"), features=("f0",)
    )
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "a.parquet").write_bytes(b"")
    cases["a.parquet is empty (0 bytes)"] = _bad(tmp_path, parquet=str(tmp_path / "e"))
    pq.write_table(
        pa.table({"f0": pa.array([], pa.float32()), "y": pa.array([], pa.int64())}),
        tmp_path / "z.parquet",
    )
    cases["z.parquet has no rows"] = _bad(
        tmp_path, parquet=str(tmp_path / "z.parquet"), features=("f0",)
    )
    for text, spec in cases.items():
        with pytest.raises(DataSourceError) as info:
            open_source(spec, REPO)
        message = str(info.value)
        assert text in message and "\n" not in message and "fix:" in message, message
        assert classify(info.value).kind is FailureKind.USER_CODE  # never retried


def test_a_map_that_raises_is_a_user_error_before_training(tmp_path: Path) -> None:
    with pytest.raises(UserCodeError, match=r"data map.*pixels") as info:
        open_source(_bad(tmp_path, map=f"{MAPS}:broken"), REPO)
    assert classify(info.value).kind is FailureKind.USER_CODE


def test_bad_tfrecord_sources_fail_in_one_line(tmp_path: Path) -> None:
    x, y = _arrays(10)
    write_tfrecord(tmp_path / "t", x, y, files=1)
    for spec, text in [
        (
            FileSource(tfrecord=str(tmp_path / "t"), features=("f9",), label="y"),
            "missing column 'f9'",
        ),
        (FileSource(tfrecord=str(tmp_path / "none"), features=("f0",), label="y"), "no *.tfrecord"),
    ]:
        with pytest.raises(DataSourceError, match="fix:") as info:
            open_source(spec, REPO)
        assert text in str(info.value)


def test_unknown_length_dataset_is_counted_once_per_run(tmp_path: Path) -> None:
    import tensorflow as tf

    calls = []

    def gen():
        calls.append(1)
        for i in range(20):
            yield np.float32([i]), np.int64(i)

    spec = (tf.TensorSpec([1], tf.float32), tf.TensorSpec([], tf.int64))
    make = lambda ctx: tf.data.Dataset.from_generator(gen, output_signature=spec)  # noqa: E731
    store = InputStore(f"file://{tmp_path}/run")
    ctx = DataContext(global_batch_size=4, entry="gen.py:make")
    first = build_input(make, ctx, 1, store=store)
    again = build_input(make, ctx, 1, store=store)
    assert first.examples == again.examples == 20
    assert len(calls) == 1  # the second build read the count from the run


def test_the_job_spec_names_file_sources_and_their_errors_by_field() -> None:
    from cluster.errors import SpecError
    from cluster.spec import parse_spec

    base = {"name": "x", "model": "examples/tabular.py:build_model"}
    ok = {"parquet": "s3://b/train/", "features": ["f0"], "label": "y"}
    spec = parse_spec({**base, "data": {**ok, "storage_options": {"secret": "s3cr3t"}}}, REPO)
    assert isinstance(spec.data, FileSource) and spec.data.columns == ("f0", "y")
    assert spec.to_dict()["data"]["storage_options"] == {"secret": "***"}  # masked in run.json
    assert spec.to_train_job().data == spec.data  # what the workers get
    assert spec.with_overrides(epochs=2, workers=1).data == spec.data  # re-validated as is
    bad = {
        "data.label": {"parquet": "x", "features": ["f0"]},
        "data.parquet": {"parquet": "x", "tfrecord": "y", "features": ["f0"], "label": "y"},
        "data.features": {"parquet": "x", "features": [], "label": "y"},
        "data.colour": {**ok, "colour": 1},
        "data.map": {**ok, "map": "missing.py:fn"},
    }
    for field, data in bad.items():
        with pytest.raises(SpecError, match=f"'{field}'"):
            parse_spec({**base, "data": data}, REPO)


def test_a_job_with_a_bad_source_stops_before_training(tmp_path: Path) -> None:
    from tests.trainer.helpers import job_dict, run_dir
    from trainer.local import run_local

    x, y = _arrays(40)
    write_parquet(tmp_path / "d", x, y, files=1)
    job = job_dict(tmp_path, "bad", "plateau")
    job["data"] = {"parquet": str(tmp_path / "d"), "features": ["f0", "nope"], "label": "y"}
    with pytest.raises(DataSourceError, match="missing column 'nope'"):
        run_local(job)
    assert not (run_dir(job["run_url"]) / "checkpoints").exists()
