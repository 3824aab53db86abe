"""The job spec's JSON Schema (``spotrain schema``): it accepts every job file of the repo,
rejects misspelt fields, and agrees with the README's field table on names and defaults; the
spec and the worker share one run-name rule and one entry-point grammar."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from cluster import cli
from cluster.errors import SpecError
from cluster.spec import json_schema, load_spec, parse_spec, yaml_fields
from storage.location import RUN_NAME_RULE, validate_name
from trainer.entry_points import DEFAULT_ENTRY_FNS, parse_entry_point
from trainer.errors import JobSpecError
from trainer.job import CALLBACK_KINDS, TrainJob

ROOT = Path(__file__).resolve().parents[2]
JOB_FILES = sorted([*ROOT.glob("examples/*.yaml"), *ROOT.glob("bench/*.yaml")])
REQUIRED, NO_DEFAULT = object(), object()


def _resolve(schema: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    return schema["$defs"][ref.rsplit("/", 1)[-1]]


def schema_fields() -> dict[str, Any]:
    """``{dotted field: default}`` from the JSON Schema (REQUIRED when it has none)."""
    schema = json_schema()
    out: dict[str, Any] = {}
    for name, prop in schema["properties"].items():
        section = _resolve(schema, prop)
        if section is not prop and section.get("type") == "object":
            for sub, sub_prop in section["properties"].items():
                out[f"{name}.{sub}"] = sub_prop["default"]
        elif name in schema.get("required", ()):
            out[name] = REQUIRED
        else:
            out[name] = prop.get("default", NO_DEFAULT)
    return out


def readme_fields() -> dict[str, Any]:
    """``{field: default}`` from the table of README.md's section "The job spec"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## The job spec\n", 1)[1].split("\n## ", 1)[0]
    out: dict[str, Any] = {}
    for m in re.finditer(r"^\| `([a-z_.]+)` \| ([^|]+) \|", section, re.MULTILINE):
        name, default = m.group(1), m.group(2).strip()
        if default == "required":
            out[name] = REQUIRED
        elif default == "none":
            out[name] = None
        else:
            out[name] = yaml.safe_load(re.match(r"`([^`]*)`", default).group(1))  # type: ignore[union-attr]
    return out


@pytest.fixture(scope="module")
def validator() -> Any:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


@pytest.mark.parametrize("path", JOB_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_job_file_of_the_repo_is_valid(path: Path, validator: Any) -> None:
    raw = yaml.safe_load(path.read_text())
    assert not list(validator.iter_errors(raw))
    assert load_spec(path, working_dir=str(ROOT)).name == raw["name"]


def test_job_files_are_found() -> None:
    names = {p.relative_to(ROOT).as_posix() for p in JOB_FILES}
    assert {"examples/digits.yaml", "bench/recovery-job.yaml"} <= names


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"epoch": 3}, "epoch"),
        ({"checkpoint": {"keep_lats": 2}}, "checkpoint.keep_lats"),
        ({"checkpoint": {"async_upload": False}}, "checkpoint.async_upload"),
        ({"scaling": {"worker": 2}}, "scaling.worker"),
        ({"callbacks": [{"early_stoping": {}}]}, "callbacks[0]"),
    ],
)
def test_misspelt_fields_are_rejected(
    change: dict[str, Any], field: str, validator: Any, tmp_path: Path
) -> None:
    raw = {**yaml.safe_load((ROOT / "examples" / "digits.yaml").read_text()), **change}
    assert list(validator.iter_errors(raw))
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(raw))
    assert _schema_cli(["--check", str(job)]) == 3


def test_schema_lists_the_yaml_keys_and_the_callback_kinds() -> None:
    schema = json_schema()
    assert sorted(schema["properties"]) == sorted(yaml_fields())
    assert "working_dir" not in schema["properties"] and "source" not in schema["properties"]
    checkpoint = _resolve(schema, schema["properties"]["checkpoint"])
    assert "async" in checkpoint["properties"] and "async_upload" not in checkpoint["properties"]
    item = _resolve(schema, schema["properties"]["callbacks"]["items"])
    assert list(item["properties"]) == list(CALLBACK_KINDS)
    assert schema["properties"]["preemption_poll_steps"]["minimum"] == 1


def test_readme_field_table_matches_the_schema() -> None:
    readme, schema = readme_fields(), schema_fields()
    assert sorted(readme) == sorted(schema)
    for name, default in schema.items():
        assert readme[name] == default, name


def test_readme_names_every_callback_kind() -> None:
    row = next(
        line for line in (ROOT / "README.md").read_text().splitlines() if "| `callbacks`" in line
    )
    assert all(f"`{kind}`" in row for kind in CALLBACK_KINDS)


def _schema_cli(argv: list[str]) -> int:
    return cli.main(["schema", *argv])


def test_schema_command_prints_the_schema_and_checks_files(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    assert _schema_cli([]) == 0
    assert json.loads(capsys.readouterr().out) == json_schema()
    monkeypatch.chdir(ROOT)
    assert _schema_cli(["--check", *map(str, JOB_FILES)]) == 0
    assert "valid" in capsys.readouterr().out
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: x\nmodel: examples/digits.py:build_model\ndata: examples/digits.py:make_dataset\nepochs: 0\n"
    )
    assert _schema_cli(["--check", str(JOB_FILES[0]), str(bad)]) == 3
    err = capsys.readouterr().err
    assert (
        f"{bad}: invalid job spec field 'epochs': got 0; allowed: an integer from 1 to 1000000"
        in err
    )


def test_one_run_name_rule_for_the_spec_and_the_worker() -> None:
    raw = {"name": "run_1", "model": "m.py:f", "data": "m.py:g"}
    with pytest.raises(SpecError) as spec_err:
        parse_spec(raw, check_entry_points=False)
    with pytest.raises(JobSpecError) as job_err:
        TrainJob.from_dict({**raw, "run_url": "memory://runs/run_1"})
    assert spec_err.value.field == job_err.value.field == "name"
    assert RUN_NAME_RULE in str(spec_err.value) and RUN_NAME_RULE in str(job_err.value)
    assert validate_name("run_1") == "run_1"  # a URL spotrain did not name stays readable


def test_one_entry_point_grammar_the_spec_requires_fn(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text("def build_model(config): ...\ndef make_dataset(ctx): ...\n")
    raw = {"name": "a", "model": "m.py", "data": "m.py:make_dataset"}
    with pytest.raises(SpecError, match=r"file\.py:function") as info:
        parse_spec(raw, working_dir=str(tmp_path))
    assert info.value.field == "model"
    job = TrainJob.from_dict({**raw, "run_url": "memory://a"})  # the worker's default fn
    assert parse_entry_point(job.model, DEFAULT_ENTRY_FNS["model"]).fn == "build_model"
