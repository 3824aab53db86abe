"""Exactness for every index-addressable source: a run interrupted 3+ times (in process, each
attempt restores) ends bitwise equal to the uninterrupted one, with the same history, when the
toy job reads its data from in-memory arrays, Parquet files or TFRecord files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.trainer import toy_job
from tests.trainer.helpers import (
    assert_bitwise_equal,
    events,
    final_checkpoint,
    history_of,
    interrupt_spec,
    job_dict,
)
from tests.trainer.input_files import source_spec, write_parquet, write_tfrecord
from trainer.local import run_local

KILLS = [3, 8, 13, 20]


def _job(tmp_path: Path, name: str, source: str) -> dict[str, Any]:
    job = job_dict(tmp_path, name, "plateau")
    if source == "memory":
        return job
    x, y = toy_job._arrays(toy_job.N_TRAIN, 1)
    vx, vy = toy_job._arrays(toy_job.N_VAL, 2)
    write = write_parquet if source == "parquet" else write_tfrecord
    write(tmp_path / "train", x, y)
    write(tmp_path / "val", vx, vy, files=1)
    # blocks of 8 examples, 3 blocks per window: a global batch of 16 spans windows
    job["data"] = source_spec(
        source, tmp_path / "train", toy_job.FEATURES, block_size=8, window_blocks=3
    )
    job["val_data"] = source_spec(source, tmp_path / "val", toy_job.FEATURES)
    return job


@pytest.mark.parametrize("source", ["memory", "parquet", "tfrecord"])
def test_interrupted_runs_are_exact_for_every_source(tmp_path: Path, source: str) -> None:
    ref = _job(tmp_path / "ref", "ref", source)
    run_local(ref)
    ref_tensors, ref_manifest = final_checkpoint(ref["run_url"])
    job = _job(tmp_path / "int", "int", source)
    job["callbacks"] = [*job["callbacks"], interrupt_spec(KILLS, tmp_path / "markers")]
    failures = []
    for _ in range(10):
        try:
            result = run_local(job)
        except RuntimeError as exc:  # one injected interruption per attempt
            failures.append(str(exc))
            continue
        assert result.finished
        break
    expected = [k for k in KILLS if k <= ref_manifest["step"]]
    assert len(failures) == len(expected) >= 3, failures
    tensors, manifest = final_checkpoint(job["run_url"])
    assert manifest["step"] == ref_manifest["step"]
    assert_bitwise_equal(ref_tensors, tensors)
    assert history_of(manifest) == history_of(ref_manifest)
    # the kill at 3 comes before the first save (step 5): that attempt restores nothing
    saved = [k for k in expected if k >= job["checkpoint"]["every_steps"]]
    assert len(events(job["run_url"], "restore")) == len(saved) >= 3
