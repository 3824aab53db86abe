"""Two workers under MultiWorkerMirroredStrategy on Ray (TensorflowTrainer, Train V2): a run
whose workers SIGKILL themselves 3 times (before any save, right before a save, right after
one) ends bitwise equal to the uninterrupted 2-worker run, per-rank state included."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.helpers import (
    REPO,
    TOY,
    assert_bitwise_equal,
    events,
    final_checkpoint,
    history_of,
    job_dict,
    run_dir,
)

pytestmark = [pytest.mark.e2e, pytest.mark.slow]


def _fit(job: dict[str, Any], tmp_path: Path, max_failures: int) -> Any:
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    from trainer.worker import train_loop_per_worker

    trainer = TensorflowTrainer(
        train_loop_per_worker,
        train_loop_config=job,
        scaling_config=ScalingConfig(num_workers=2),
        run_config=RunConfig(
            name=job["name"],
            storage_path=str(tmp_path / "ray"),
            failure_config=FailureConfig(max_failures=max_failures),
        ),
    )
    return trainer.fit()


def test_two_workers_sigkilled_three_times_end_bitwise_equal(
    tmp_path: Path, ray_local: Any
) -> None:
    assert os.environ.get("TF_USE_LEGACY_KERAS") == "1"
    common = {"epochs": 3, "preemption_poll_steps": 4, "working_dir": str(REPO)}
    ref_job = job_dict(tmp_path, "ray-ref", "plateau", **common)
    ref = _fit(ref_job, tmp_path, 0)
    assert ref.error is None
    ref_tensors, ref_manifest = final_checkpoint(ref_job["run_url"])
    assert ref_manifest["state"]["world_size"] == 2 and ref_manifest["step"] == 18

    job = job_dict(tmp_path, "ray-int", "plateau", **common)
    plan = {"4": "sigkill", "10": "sigkill", "13": "sigkill"}
    job["callbacks"] = [
        *job["callbacks"],
        {"custom": {"entry": f"{TOY}:interrupt", "plan": plan, "marker_dir": str(tmp_path / "m")}},
    ]
    result = _fit(job, tmp_path, 3)
    assert result.error is None
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "killed-10",
        "killed-13",
        "killed-4",
    ]
    # the first attempt saved nothing; the others resumed (from whatever upload had finished)
    assert 1 <= len(events(job["run_url"], "restore")) <= 2
    tensors, manifest = final_checkpoint(job["run_url"])
    assert_bitwise_equal(ref_tensors, tensors)
    assert history_of(manifest) == history_of(ref_manifest)
    assert manifest["state"]["finished"] is True and manifest["step"] == 18

    # world size 2 -> 1: a single local worker resumes the 2-worker run from step 10 (not
    # bitwise: per-rank metric sums are folded into rank 0), same sample order, to the end
    import shutil

    from trainer.local import run_local

    src = run_dir(ref_job["run_url"]) / "checkpoints" / f"{10:012d}"
    single = job_dict(tmp_path, "ray-to-one", "plateau", **common)
    shutil.copytree(src, run_dir(single["run_url"]) / "checkpoints" / src.name)
    resumed = run_local(single)
    assert resumed.restored_step == 10 and resumed.finished and resumed.global_step == 18
    _, one = final_checkpoint(single["run_url"])
    assert one["state"]["world_size"] == 1 and one["state"]["samples_seen"] == 18 * 16
