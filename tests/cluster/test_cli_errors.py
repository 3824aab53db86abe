"""Every CLI error is one line and a documented exit code, through the real CLI (``main``), on
real local storage: never a spotrain traceback; the user's own traceback whole."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest

from cluster.cli import main
from storage.location import RunLocation
from storage.run_record import RunRecord

from .fakes import commit

ROOT = Path(__file__).resolve().parents[2]
DIGITS = ROOT / "examples" / "digits.py"


def one_error_line(err: str, command: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip() and " WARNING " not in ln]
    assert "Traceback" not in err, err
    assert len(lines) == 1, err
    assert lines[0].startswith(f"spotrain {command}: error: "), err
    return lines[0]


def job_file(tmp_path: Path, storage: str, **extra: str) -> Path:
    job = tmp_path / "job.yaml"
    lines = [
        "name: demo",
        f"model: {DIGITS}:build_model",
        f"data: {DIGITS}:make_dataset",
        f"storage: {storage}",
        *(f"{k}: {v}" for k, v in extra.items()),
    ]
    job.write_text("\n".join(lines) + "\n")
    return job


def made_run(tmp_path: Path) -> str:
    url = f"file://{tmp_path}/runs/demo"
    RunRecord(url).write_spec({"name": "demo", "model": f"{DIGITS}:build_model"})
    return url


def test_unknown_protocol_is_one_line_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["status", "foo://bucket/run"]) == 3
    line = one_error_line(capsys.readouterr().err, "status")
    assert "unknown protocol 'foo'" in line and "fix: " in line


@pytest.mark.skipif(importlib.util.find_spec("gcsfs") is not None, reason="gcsfs is installed")
def test_gs_without_gcsfs_is_one_line_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["checkpoints", "gs://bucket/run"]) == 3
    line = one_error_line(capsys.readouterr().err, "checkpoints")
    assert "pip install gcsfs" in line


def test_read_only_storage_is_one_line_exit_4(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # /sys refuses new entries even to root (a directory permission would not stop root)
    job = job_file(tmp_path, "file:///sys/spotrain-read-only-test")
    assert main(["run", str(job)]) == 4
    line = one_error_line(capsys.readouterr().err, "run")
    assert "write probe failed" in line and "fix: " in line


def test_invalid_run_json_is_one_line_exit_6(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = made_run(tmp_path)
    (tmp_path / "runs" / "demo" / "run.json").write_text("{not json")
    for command in ("status", "checkpoints", "gc"):
        assert main([command, url]) == 6
        line = one_error_line(capsys.readouterr().err, command)
        assert "not valid JSON" in line and "start fresh" in line


def test_events_a_file_is_one_line_exit_6_and_the_lease_is_released(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "runs" / "demo").mkdir(parents=True)
    (tmp_path / "runs" / "demo" / "events").write_text("a file where the events folder goes")
    job = job_file(tmp_path, f"file://{tmp_path}/runs")
    assert main(["run", str(job)]) == 6
    line = one_error_line(capsys.readouterr().err, "run")
    assert "a file stands where a folder of the run should be" in line
    lease = json.loads((tmp_path / "runs" / "demo" / "lease.json").read_text())
    assert lease["released"] is True
    # the next run is not refused as "held by" the process that failed (exit 5)
    assert main(["run", str(job)]) == 6
    capsys.readouterr()


@pytest.mark.parametrize("command", ["status", "checkpoints"])
def test_malformed_yaml_is_one_line_exit_3(
    command: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    assert main([command, str(bad)]) == 3
    line = one_error_line(capsys.readouterr().err, command)
    assert "not valid YAML at line 2" in line


def _raising_package(tmp_path: Path) -> Path:
    pkg = tmp_path / "userpkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        "def _boom():\n    raise RuntimeError('userpkg init ran')\n\n_boom()\n"
    )
    (pkg / "model.py").write_text("def build_model(config):\n    return None\n")
    return pkg


def test_validation_imports_nothing_of_the_users(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _raising_package(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    job = tmp_path / "job.yaml"
    job.write_text(
        f"name: demo\nmodel: userpkg.model:build_model\ndata: {DIGITS}:make_dataset\n"
        f"storage: file://{tmp_path}/runs\n"
    )
    assert main(["schema", "--check", str(job)]) == 0
    assert "userpkg" not in sys.modules
    capsys.readouterr()


def test_entry_point_whose_package_init_raises_is_exit_3_with_the_whole_user_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _raising_package(tmp_path)
    monkeypatch.chdir(tmp_path)
    url = made_run(tmp_path)
    commit(url, 10, finished=True)
    args = ["export", url, "--out", str(tmp_path / "m.keras"), "--model", "userpkg.model:f"]
    assert main(args) == 3
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("spotrain export: error: error in user code (import userpkg")
    assert lines[0] == "Traceback (most recent call last):"  # the user's traceback, from its top
    assert "_boom()" in err and "RuntimeError: userpkg init ran" in err


def test_a_bad_manifest_on_the_latest_step_shows_as_corrupt_exit_0(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = made_run(tmp_path)
    commit(url, 10)
    commit(url, 20)
    loc = RunLocation.from_url(url)
    Path(loc.manifest_path(20)).write_text("{torn")
    assert main(["status", url, "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["corrupt_steps"] == [20] and out["latest_checkpoint"]["step"] == 10
    assert main(["status", url]) == 0
    assert "corrupt      steps [20]" in capsys.readouterr().out
    assert main(["checkpoints", url]) == 0
    text = capsys.readouterr().out
    assert "20  corrupt (skipped by restore)" in text and "        10" in text
    assert main(["checkpoints", url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["step"] for r in rows] == [10, 20] and "corrupt" in rows[1]


def test_the_process_prints_no_traceback(tmp_path: Path) -> None:
    """The same through a real ``python -m cluster`` process (the interpreter's own handler)."""
    proc = subprocess.run(
        [sys.executable, "-m", "cluster", "status", "foo://bucket/run"],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 3
    one_error_line(proc.stderr, "status")
