"""One entry-point grammar (trainer.entry_points.parse_entry_point); the spec side is in
tests/cluster/test_schema.py."""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.entry_points import DEFAULT_ENTRY_FNS, EntryPoint, parse_entry_point
from trainer.errors import JobSpecError
from trainer.job import TrainJob, load_entry_point, load_job_entry


@pytest.mark.parametrize(
    ("text", "default_fn", "expected"),
    [
        ("examples/digits.py:build_model", "", EntryPoint("examples/digits.py", "build_model")),
        (" pkg.mod:fn ", "", EntryPoint("pkg.mod", "fn")),
        ("examples/digits.py", "build_model", EntryPoint("examples/digits.py", "build_model")),
        ("/abs/m.py:f", "", EntryPoint("/abs/m.py", "f")),
    ],
)
def test_parse(text: str, default_fn: str, expected: EntryPoint) -> None:
    assert parse_entry_point(text, default_fn) == expected
    assert parse_entry_point(str(expected)) == expected


@pytest.mark.parametrize(
    "text", ["examples/digits.py", "m.py:", ":fn", "a b:fn", "m.py:f:g", "m.py:1f", "", 3]
)
def test_malformed(text: object) -> None:
    with pytest.raises(ValueError, match=r"file\.py:function"):
        parse_entry_point(text)  # type: ignore[arg-type]


def test_the_worker_fills_in_the_default_fn(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def build_model(config): ...\n")
    raw = {"name": "a", "model": "m.py", "data": "m.py:make_dataset"}
    job = TrainJob.from_dict({**raw, "run_url": "memory://a", "working_dir": str(tmp_path)})
    assert job.model == "m.py"
    assert load_job_entry(job, "model").__name__ == "build_model"  # type: ignore[union-attr]
    fn = load_entry_point(job.model, job.working_dir, DEFAULT_ENTRY_FNS["model"])
    assert fn.__name__ == "build_model"
    with pytest.raises(JobSpecError, match=r"file\.py:function"):
        TrainJob.from_dict({**raw, "model": "m.py:f:g", "run_url": "memory://a"})
