"""Exit codes are stable (CronJobs and scripts rely on them) and documented."""

from __future__ import annotations

from cluster import exit_codes
from cluster.cli import build_parser, main


def test_codes_are_the_documented_ones() -> None:
    assert {c.name: int(c) for c in exit_codes.ExitCode} == {
        "OK": 0,
        "USAGE": 2,
        "USER_ERROR": 3,
        "INFRA_ERROR": 4,
        "HELD": 5,
        "RUN_DAMAGED": 6,
        "PREEMPTED": 75,
    }
    doc = exit_codes.__doc__ or ""
    for code in exit_codes.ExitCode:
        assert f"\n{int(code):<8}" in doc
    epilog = build_parser().epilog or ""
    for code in (0, 2, 3, 4, 5, 6, 75):
        assert f"{code} " in epilog


def test_bad_command_line_is_2(capsys) -> None:
    assert main(["run"]) == 2
    assert main(["frobnicate"]) == 2
    assert main(["run", "job.yaml", "--workers", "two"]) == 2
    assert main(["--version"]) == 0
    capsys.readouterr()


def test_bad_spec_is_3_and_names_the_field(tmp_path, capsys) -> None:
    job = tmp_path / "job.yaml"
    job.write_text("name: x\nmodel: m.py:f\ndata: m.py:g\nepocs: 3\n")
    assert main(["run", str(job)]) == 3
    err = capsys.readouterr().err
    assert "'epocs'" in err and "unknown field" in err and "epochs" in err


def test_status_of_missing_run_is_3(tmp_path, capsys) -> None:
    assert main(["status", f"file://{tmp_path}/nothing"]) == 3
    assert "no spotrain run" in capsys.readouterr().err


def test_unwritable_storage_is_4_before_anything_runs(tmp_path, capsys, monkeypatch) -> None:
    from pathlib import Path

    monkeypatch.chdir(Path(__file__).resolve().parents[2])
    (tmp_path / "runs").write_text("not a directory")
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: demo\nmodel: examples/digits.py:build_model\ndata: examples/digits.py:make_dataset\n"
        f"storage: file://{tmp_path}/runs\n"
    )
    assert main(["run", str(job)]) == 4
    err = capsys.readouterr().err
    assert err.startswith("spotrain run: error: write probe failed on ") and "fix: " in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["job.yaml", "runs"]
