"""TrainJob round trip and validation, entry points, error pickling."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from storage.errors import SpotrainError
from tests.trainer.helpers import REPO, job_dict
from trainer.errors import (
    JobSpecError,
    ModelMismatchError,
    PreemptedError,
    ReplicaDivergenceError,
    UserCodeError,
)
from trainer.job import CheckpointPolicy, TrainJob, load_entry_point


def test_round_trip(tmp_path: Path) -> None:
    job = TrainJob.from_dict(job_dict(tmp_path, "rt"))
    again = TrainJob.from_dict(job.to_dict())
    assert again == job
    assert isinstance(job.checkpoint, CheckpointPolicy)
    assert job.to_dict()["callbacks"][0] == {
        "early_stopping": {"monitor": "val_loss", "patience": 3}
    }


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"epochs": 0}, "epochs"),
        ({"global_batch_size": "8"}, "global_batch_size"),
        ({"seed": -1}, "seed"),
        ({"model": ""}, "model"),
        ({"preemption_poll_steps": -2}, "preemption_poll_steps"),
        ({"checkpoint": {"every_steps": 0, "every_epoch": False}}, "checkpoint.every_steps"),
        ({"checkpoint": {"every_stepz": 3}}, "checkpoint.every_stepz"),
        ({"callbacks": [{"early_stop": {}}]}, "callbacks[0]"),
        ({"callbacks": [{"custom": {}}]}, "callbacks[0].custom.entry"),
        ({"bogus": 1}, "bogus"),
    ],
)
def test_validation_errors_name_the_field(tmp_path: Path, change: dict, field: str) -> None:
    d = job_dict(tmp_path, "bad")
    d.update(change)
    with pytest.raises(JobSpecError) as info:
        TrainJob.from_dict(d)
    assert info.value.field == field
    assert repr(field) in str(info.value)


def test_missing_required_field(tmp_path: Path) -> None:
    d = job_dict(tmp_path, "bad")
    del d["data"]
    with pytest.raises(JobSpecError, match="'data'"):
        TrainJob.from_dict(d)


def test_entry_points(tmp_path: Path) -> None:
    fn = load_entry_point("tests/trainer/toy_job.py:build_model", str(REPO))
    assert fn.__name__ == "build_model"
    assert (
        load_entry_point("tests/trainer/toy_job.py", str(REPO), "make_dataset").__name__
        == "make_dataset"
    )
    assert load_entry_point("json:dumps").__name__ == "dumps"
    with pytest.raises(JobSpecError, match="does not exist"):
        load_entry_point("nope.py:f", str(tmp_path))
    with pytest.raises(JobSpecError, match="no callable 'nothing'"):
        load_entry_point("json:nothing")
    (tmp_path / "broken.py").write_text("import not_a_module_xyz\n")
    with pytest.raises(UserCodeError) as info:
        load_entry_point("broken.py:f", str(tmp_path))
    assert "not_a_module_xyz" in info.value.user_traceback


def test_errors_pickle_and_classify() -> None:
    errors = [
        UserCodeError("build_model", "ValueError('x')", "Traceback ...\nValueError: x"),
        PreemptedError(42, "SIGTERM"),
        ModelMismatchError("file:///r", "a" * 64, "b" * 64, "layers differ"),
        ReplicaDivergenceError(["aa", "bb"]),
        JobSpecError("epochs", 0, "use >= 1"),
    ]
    for err in errors:
        back = pickle.loads(pickle.dumps(err))
        assert type(back) is type(err) and str(back) == str(err)
        assert isinstance(back, SpotrainError)
    assert PreemptedError(1).retryable and not UserCodeError("a", "b").retryable
    assert "new name" in str(errors[2]) and "delete the run URL" in str(errors[2])
