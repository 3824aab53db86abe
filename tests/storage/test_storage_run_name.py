"""One run-name rule (storage.location.validate_run_name), used by the job spec and TrainJob;
validate_name stays the wider path-safety check of run directories spotrain did not name."""

from __future__ import annotations

import pytest

from storage.errors import InvalidNameError
from storage.location import MAX_RUN_NAME_CHARS, RUN_NAME_RULE, validate_name, validate_run_name


@pytest.mark.parametrize("name", ["digits-mlp", "a", "0abc", "a-1", "x" * MAX_RUN_NAME_CHARS])
def test_run_names(name: str) -> None:
    assert validate_run_name(name) == name
    assert validate_name(name) == name  # every run name is a safe path component


@pytest.mark.parametrize(
    "name",
    ["", "-x", "x-", "Digits", "run_1", "run.v2", "a/b", "x" * (MAX_RUN_NAME_CHARS + 1), 5],
)
def test_not_run_names(name: object) -> None:
    with pytest.raises(InvalidNameError, match="fix:") as info:
        validate_run_name(name)  # type: ignore[arg-type]
    assert RUN_NAME_RULE in str(info.value)


def test_the_spec_and_the_trainer_use_the_rule() -> None:
    from cluster.errors import SpecError
    from cluster.spec import parse_spec
    from trainer.errors import JobSpecError
    from trainer.job import TrainJob

    raw = {"name": "run_1", "model": "m.py:f", "data": "m.py:g"}
    with pytest.raises(SpecError) as spec_err:
        parse_spec(raw, check_entry_points=False)
    with pytest.raises(JobSpecError) as job_err:
        TrainJob.from_dict({**raw, "run_url": "memory://runs/run_1"})
    assert RUN_NAME_RULE in str(spec_err.value) and RUN_NAME_RULE in str(job_err.value)
    assert validate_name("run_1") == "run_1"  # a URL spotrain did not name stays readable
