"""Trainer test fixtures. The reference (uninterrupted) runs are computed once per session."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tests.trainer.helpers import final_checkpoint, job_dict


@pytest.fixture(scope="session")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """reference(mode) -> (tensors, manifest, TrainResult) of an uninterrupted local run."""
    from trainer.local import run_local

    base: Path = tmp_path_factory.mktemp("reference")
    cache: dict[str, Any] = {}

    def get(mode: str) -> Any:
        if mode not in cache:
            job = job_dict(base, f"ref-{mode}", mode)
            result = run_local(job)
            tensors, manifest = final_checkpoint(job["run_url"])
            cache[mode] = (tensors, manifest, result)
        return cache[mode]

    return get


@pytest.fixture(scope="module")
def ray_local() -> Any:
    """An in-process Ray with 2 CPUs whose workers import tf-keras (per test module)."""
    import ray

    ray.init(
        address="local",
        num_cpus=2,
        include_dashboard=False,
        runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}},
    )
    yield ray
    ray.shutdown()
