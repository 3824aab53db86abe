"""One run-name rule (storage.location.validate_run_name), used by the job spec and TrainJob
(tests/cluster/test_schema.py); validate_name stays the wider path-safety check of run
directories spotrain did not name."""

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
