"""One entry-point grammar (trainer.entry_points.parse_entry_point) for the spec and the worker."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.errors import SpecError
from cluster.spec import parse_spec
from trainer.entry_points import DEFAULT_ENTRY_FNS, EntryPoint, parse_entry_point
from trainer.errors import JobSpecError
from trainer.job import TrainJob, load_entry_point


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


def test_spec_requires_fn_the_worker_fills_in_the_default(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def build_model(config): ...\ndef make_dataset(ctx): ...\n")
    raw = {"name": "a", "model": "m.py", "data": "m.py:make_dataset"}
    with pytest.raises(SpecError, match=r"file\.py:function") as info:
        parse_spec(raw, working_dir=str(tmp_path))
    assert info.value.field == "model"
    job = TrainJob.from_dict({**raw, "run_url": "memory://a", "working_dir": str(tmp_path)})
    assert job.model == "m.py"
    fn = load_entry_point(job.model, job.working_dir, DEFAULT_ENTRY_FNS["model"])
    assert fn.__name__ == "build_model"
    with pytest.raises(JobSpecError, match=r"file\.py:function"):
        TrainJob.from_dict({**raw, "model": "m.py:f:g", "run_url": "memory://a"})
