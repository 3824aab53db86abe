"""Job spec validation: every error names the field, the value and what is allowed."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from cluster import constants
from cluster.errors import SpecError
from cluster.spec import JobSpec, absolute_run_url, load_spec, parse_spec

ROOT = Path(__file__).resolve().parents[2]


def base(**extra: object) -> dict:
    raw = {
        "name": "digits-mlp",
        "model": "examples/digits.py:build_model",
        "data": "examples/digits.py:make_dataset",
    }
    raw.update(extra)
    return raw


def parse(raw: dict) -> JobSpec:
    return parse_spec(raw, working_dir=str(ROOT), source="job.yaml")


def test_example_spec_loads_with_defaults() -> None:
    spec = load_spec(ROOT / "examples" / "digits.yaml", working_dir=str(ROOT))
    assert spec.name == "digits-mlp"
    assert spec.scaling.workers == 2
    assert spec.failures.max_preemptions == -1
    assert spec.run_url == "file://./runs/digits-mlp"
    minimal = parse(base())
    assert minimal.epochs == 1 and minimal.callbacks == () and minimal.val_data is None
    assert minimal.storage == constants.DEFAULT_STORAGE


@pytest.mark.parametrize(
    ("raw", "field", "hint"),
    [
        (base(epoch=3), "epoch", "unknown field"),
        (base(epochs="3"), "epochs", "expected an integer"),
        (base(epochs=0), "epochs", "from 1 to"),
        (base(epochs=True), "epochs", "expected an integer"),
        (base(name="Digits_MLP"), "name", "[a-z0-9-]+"),
        (base(name="-x"), "name", "[a-z0-9-]+"),
        (
            {"model": "examples/digits.py:build_model", "data": "examples/digits.py:make_dataset"},
            "name",
            "required",
        ),
        (base(model="examples/digits.py"), "model", "file.py:function"),
        (base(model="examples/nope.py:build_model"), "model", "not found"),
        (
            base(model="examples/digits.py:build_modle"),
            "model",
            "defines no top-level 'build_modle'",
        ),
        (base(data="no_such_pkg_xyz.mod:fn"), "data", "cannot be found"),
        (base(val_data=3), "val_data", "expected a string"),
        (base(config=[1]), "config", "expected a mapping"),
        (base(checkpoint={"every_step": 5}), "checkpoint.every_step", "unknown field"),
        (base(checkpoint={"every_steps": -1}), "checkpoint.every_steps", "allowed"),
        (
            base(checkpoint={"every_steps": 0, "every_epoch": False}),
            "checkpoint.every_steps",
            "nothing would be saved",
        ),
        (base(checkpoint={"async": "yes"}), "checkpoint.async", "true or false"),
        (base(scaling={"workers": 0}), "scaling.workers", ">= 1"),
        (base(scaling={"workers": [3, 2]}), "scaling.workers", "[min, max]"),
        (base(scaling={"gpus_per_worker": 1}), "scaling.gpus_per_worker", "use_gpu"),
        (base(scaling={"cpu": 1}), "scaling.cpu", "unknown field"),
        (base(scaling={"resize_check_s": 0}), "scaling.resize_check_s", "> 0"),
        (base(failures={"max_failures": -2}), "failures.max_failures", "-1 (unlimited)"),
        (base(failures={"backoff_s": "5s"}), "failures.backoff_s", "expected a number"),
        (base(callbacks={"early_stopping": {}}), "callbacks", "expected a list"),
        (base(callbacks=[{"early_stop": {}}]), "callbacks[0]", "unknown callback kind"),
        (base(callbacks=[{"custom": {}}]), "callbacks[0].custom.entry", "file.py:fn"),
        (base(storage=""), "storage", "fsspec URL"),
    ],
)
def test_errors_name_the_field_value_and_allowed(raw: dict, field: str, hint: str) -> None:
    with pytest.raises(SpecError) as info:
        parse(raw)
    err = info.value
    assert err.field == field
    assert f"'{field}'" in str(err) and "job.yaml" in str(err)
    assert hint in str(err)
    assert not err.retryable


def test_top_level_must_be_a_mapping_and_yaml_must_parse(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="mapping"):
        parse_spec(["x"], source="job.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(bad)
    with pytest.raises(SpecError, match="cannot read"):
        load_spec(tmp_path / "missing.yaml")


def test_entry_points_checked_without_running_user_code(tmp_path: Path) -> None:
    (tmp_path / "m.py").write_text(
        textwrap.dedent(
            """
            raise RuntimeError("must not run at validation")
            def build_model(config): ...
            make_dataset = lambda ctx: None
            """
        )
    )
    (tmp_path / "syntax.py").write_text("def build_model(:\n")
    raw = {"name": "a", "model": "m.py:build_model", "data": "m.py:make_dataset"}
    spec = parse_spec(raw, working_dir=str(tmp_path))
    assert spec.model == "m.py:build_model" and spec.working_dir == str(tmp_path)
    with pytest.raises(SpecError, match="syntax error") as info:
        parse_spec({**raw, "model": "syntax.py:build_model"}, working_dir=str(tmp_path))
    assert info.value.field == "model"
    # a module entry point: importable by name, parsed
    ok = parse_spec({**raw, "data": "cluster.spec:load_spec"}, working_dir=str(tmp_path))
    assert ok.data == "cluster.spec:load_spec"
    with pytest.raises(SpecError, match="defines no top-level 'nope'"):
        parse_spec({**raw, "data": "cluster.spec:nope"}, working_dir=str(tmp_path))


def test_overrides_are_validated() -> None:
    spec = parse(base())
    s2 = spec.with_overrides(workers=4, storage="memory://x", epochs=7)
    assert (s2.scaling.workers, s2.storage, s2.epochs) == (4, "memory://x", 7)
    assert s2.run_url == "memory://x/digits-mlp"
    with pytest.raises(SpecError) as info:
        spec.with_overrides(workers=0)
    assert info.value.field == "--workers"
    with pytest.raises(SpecError) as info:
        spec.with_overrides(epochs=-1)
    assert info.value.field == "--epochs"


def test_to_dict_round_trips_and_redacts_secrets() -> None:
    spec = parse(
        base(
            storage_options={"key": "AKIA", "secret": "s3cr3t", "endpoint_url": "http://x"},
            scaling={"workers": [1, 2]},
            callbacks=[{"early_stopping": {"patience": 2}}],
        )
    )
    d = spec.to_dict()
    assert d["storage_options"] == {"key": "***", "secret": "***", "endpoint_url": "http://x"}
    assert d["scaling"]["workers"] == [1, 2]
    again = parse({**d, "storage_options": {}})
    assert again.scaling.workers == (1, 2) and again.callbacks == spec.callbacks
    assert spec.scaling.max_workers == 2


def test_absolute_run_url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert absolute_run_url("file://./runs/a") == f"file://{tmp_path}/runs/a"
    assert absolute_run_url("runs/a") == f"{tmp_path}/runs/a"
    assert absolute_run_url("s3://b/a") == "s3://b/a"


def test_callback_kinds_and_train_job_match_the_trainer() -> None:
    job_mod = pytest.importorskip("trainer.job")
    # one list of kinds (trainer.job): every kind a spec accepts reaches the worker's job
    every_kind = [
        {k: {"entry": "examples/digits.py:build_model"} if k == "custom" else {}}
        for k in job_mod.CALLBACK_KINDS
    ]
    kinds = [c.kind for c in parse(base(callbacks=every_kind)).to_train_job().callbacks]
    assert kinds == list(job_mod.CALLBACK_KINDS)
    spec = parse(base(callbacks=[{"early_stopping": {"patience": 2}}], epochs=2))
    job = spec.to_train_job()
    assert job.epochs == 2 and job.model == spec.model
    assert job.run_url.startswith("file:///") and job.run_url.endswith("/runs/digits-mlp")
    assert job.checkpoint.keep_last == spec.checkpoint.keep_last
    assert job_mod.TrainJob.from_dict(job.to_dict()) == job
