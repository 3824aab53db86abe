"""status / checkpoints / gc / plot against real storage written through the storage API."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, ClassVar

import pytest

from cluster.cli import main
from cluster.state import Failed, Preempted, Running, Succeeded, record_state
from cluster.status import build_report, collect_status, resolve_target
from storage.checkpoints import CheckpointStore
from storage.location import RunLocation
from storage.run_record import RunRecord

from .fakes import commit

ROOT = Path(__file__).resolve().parents[2]


def make_run(tmp_path: Path) -> str:
    """A run with two attempts: preempted at step 14 (committed 10), restored, finished."""
    url = f"file://{tmp_path}/runs/demo"
    rec = RunRecord(url)
    rec.write_spec({"name": "demo", "epochs": 2, "checkpoint": {"keep_last": 2, "keep_every": 0}})
    rec.append_event("attempt_start", attempt=1, source="driver")
    record_state(rec, Running(attempt=1))
    for s in (5, 10):
        commit(url, s)
        rec.append_event("metrics", global_step=s, epoch=0, loss=1.0 / s, attempt=1)
    rec.append_event("metrics", global_step=14, epoch=1, loss=0.09, val_loss=0.2, attempt=1)
    rec.append_event(
        "preemption", attempt=1, source="ray", global_step=14, failure_kind="preemption"
    )
    record_state(rec, Preempted(attempt=1))
    rec.append_event("attempt_start", attempt=2, source="ray")
    rec.append_event("restore", step=10)
    commit(url, 15)
    rec.append_event("metrics", global_step=20, epoch=1, loss=0.05, samples_per_s=900.0, attempt=2)
    commit(url, 20, finished=True)
    record_state(rec, Succeeded(attempt=2, global_step=20))
    return url


def test_status_json_has_the_documented_keys(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = make_run(tmp_path)
    assert main(["status", url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in (
        "state",
        "global_step",
        "epoch",
        "total_steps",
        "attempts",
        "preemptions",
        "lost_steps",
        "latest_checkpoint",
        "metrics",
    ):
        assert key in data
    assert data["state"] == "SUCCEEDED"
    assert (data["global_step"], data["total_steps"], data["epoch"]) == (20, 20, 2)
    assert (data["attempts"], data["preemptions"], data["lost_steps"]) == (2, 1, 4)
    assert data["latest_checkpoint"]["step"] == 20 and data["latest_checkpoint"]["epoch"] == 2
    assert data["metrics"]["loss"] == pytest.approx(0.05)
    assert data["metrics"]["val_loss"] == pytest.approx(0.2)  # the last one reported
    assert data["samples_per_s"] == pytest.approx(900.0)


def test_status_text_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = make_run(tmp_path)
    png = tmp_path / "out" / "loss.png"
    assert main(["status", url, "--plot", str(png)]) == 0
    out = capsys.readouterr().out
    assert "SUCCEEDED" in out and "20 / 20" in out and f"plot: {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rep = collect_status(RunLocation.from_url(url))
    assert [m.kind for m in rep.markers] == ["preemption", "restore"]
    assert {p.attempt for p in rep.history} == {1, 2}


def test_status_of_failed_run_shows_the_error(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    url = f"file://{tmp_path}/runs/bad"
    rec = RunRecord(url)
    rec.write_spec({"name": "bad"})
    record_state(rec, Failed(reason="user_code", message="error in user code (build_model): boom"))
    assert main(["status", url]) == 0
    assert "build_model" in capsys.readouterr().out
    assert collect_status(RunLocation.from_url(url)).state == "FAILED"


def test_status_accepts_the_job_yaml(tmp_path: Path) -> None:
    job = tmp_path / "job.yaml"
    job.write_text(f"name: demo\nmodel: x.py:f\ndata: x.py:g\nstorage: file://{tmp_path}/runs\n")
    assert resolve_target(str(job)) == (f"file://{tmp_path}/runs/demo", {})
    assert resolve_target("s3://b/r") == ("s3://b/r", {})


def test_history_from_trainer_state_when_no_metrics_events() -> None:
    class M:
        step, created, total_bytes = 20, 0.0, 10
        state: ClassVar[dict[str, Any]] = {
            "global_step": 20,
            "epoch": 2,
            "steps_per_epoch": 10,
            "history": [
                {"epoch": 0, "logs": {"loss": 1.0}},
                {"epoch": 1, "logs": {"loss": 0.5, "val_loss": 0.7}},
            ],
        }

    rep = build_report("u", {"spec": {"name": "n", "epochs": 2}}, [], M())
    assert [(p.global_step, p.values) for p in rep.history] == [
        (10, {"loss": 1.0}),
        (20, {"loss": 0.5, "val_loss": 0.7}),
    ]
    assert rep.metrics == {"loss": 0.5, "val_loss": 0.7} and rep.total_steps == 20


def test_checkpoints_and_gc(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url = make_run(tmp_path)
    assert main(["checkpoints", url, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["step"] for r in rows] == [5, 10, 15, 20]
    assert rows[-1]["finished"] and rows[0]["epoch"] == 0 and rows[0]["bytes"] == 6
    # a torn commit: files without a manifest
    torn = Path(tmp_path, "runs", "demo", "checkpoints", f"{30:012d}")
    torn.mkdir(parents=True)
    (torn / "ckpt.index").write_bytes(b"partial")
    assert main(["checkpoints", url]) == 0
    text = capsys.readouterr().out
    assert "(final)" in text and "30" not in text.split("\n", 1)[1].split()[0::6]
    assert main(["gc", url, "--min-age-s", "0"]) == 0  # keep_last 2 from run.json
    out = capsys.readouterr().out
    assert "deleted steps [5, 10]" in out and "swept uncommitted [30]" in out
    assert CheckpointStore(url).committed_steps() == [15, 20]
    assert not torn.exists()


def test_read_only_commands_do_not_import_tensorflow_or_ray(tmp_path: Path) -> None:
    url = make_run(tmp_path)
    code = (
        "import sys; from cluster.cli import main; "
        f"rc = [main(['status', {url!r}, '--json']), main(['checkpoints', {url!r}])]; "
        "bad = [m for m in ('tensorflow', 'ray', 'keras') if m in sys.modules]; "
        "sys.exit(1 if bad or any(rc) else 0)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT
    )
    assert out.returncode == 0, out.stderr


def test_a_reader_that_closes_the_pipe_gets_no_traceback(tmp_path: Path) -> None:
    """`spotrain status | head -1`: the pipe is closed before status writes."""
    url = make_run(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "cluster", "status", url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=ROOT,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the interpreter has even started: every write fails
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_run_of_a_finished_run_prints_the_summary_and_exits_0(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    make_run(tmp_path)
    monkeypatch.chdir(ROOT)
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: demo\nmodel: examples/digits.py:build_model\ndata: examples/digits.py:make_dataset\n"
        f"storage: file://{tmp_path}/runs\n"
    )
    assert main(["run", str(job), "--log-format", "json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    summary = [x for x in lines if x["event"] == "summary"]
    assert summary and summary[0]["state"] == "SUCCEEDED" and summary[0]["code"] == 0
    assert "step 20/20" in summary[0]["message"]
    assert main(["run", str(job)]) == 0  # text: one line on stdout
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and "SUCCEEDED" in out[0]


def test_status_shows_the_current_attempts_save_timings(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    url = f"file://{tmp_path}/runs/saves"
    rec = RunRecord(url)
    rec.write_spec({"name": "saves", "epochs": 2})
    store = CheckpointStore(url)
    src = tmp_path / "ckpt"
    src.mkdir()
    (src / "ckpt.index").write_bytes(b"x")
    rec.append_event("attempt_start", attempt=1, source="driver")
    store.commit(5, src, {"global_step": 5}, report={"attempt": 1, "blocked_s": 9.0, "waited": 4})
    rec.append_event("attempt_start", attempt=2, source="ray")
    for step, blocked in ((10, 0.004), (15, 0.030), (20, 0.010)):
        report = {"attempt": 2, "blocked_s": blocked, "waited": 1, "started": 0.0}
        store.commit(step, src, {"global_step": step}, report=report)
    assert main(["status", url, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["save_blocked_s"] == {"median": 0.01, "last": 0.01, "n": 3}  # attempt 2 only
    assert data["commit_s"]["n"] == 3 and data["commit_s"]["last"] > 0
    assert data["saves_waited"] == 1
    assert main(["status", url]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("saves"))
    assert "blocked 10 ms median (last 10 ms)" in line and "3 saves, 1 waited" in line
