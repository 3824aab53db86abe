"""A job's ``warm_imports`` in a warm process (``trainer.warm`` as Ray's preload runs it, in a
fresh Python process, no Ray): a file and a module are imported after TensorFlow; the train
function's load of the same file finds it (its code ran once); an import that fails is logged
and leaves the process warm; outside a training worker's env nothing is imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trainer.warm import TRAIN_WORKER_ENV, warm_imports_env

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import json, sys
import trainer.warm as warm
from trainer.entry_points import load_entry_point
preloaded = any(name.startswith("spotrain_user_") for name in sys.modules)
fn = load_entry_point("features.py:build", {wd!r})
print("RESULT " + json.dumps({{
    "warm_at": warm.IMPORTED_AT,
    "tensorflow": "tensorflow" in sys.modules,
    "json_tool": "json.tool" in sys.modules,
    "file_preloaded": preloaded,
    "value": fn(),
}}))
"""


def _run(tmp_path: Path, env_extra: dict[str, str]) -> tuple[dict, str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3", **env_extra}
    out = subprocess.run(
        [sys.executable, "-c", PROBE.format(wd=str(tmp_path))],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    [line] = [x for x in out.stdout.splitlines() if x.startswith("RESULT ")]
    return json.loads(line[len("RESULT ") :]), out.stderr


@pytest.fixture
def job_dir(tmp_path: Path) -> Path:
    (tmp_path / "features.py").write_text(
        "import pathlib\n"
        "with open(pathlib.Path(__file__).with_name('imports.log'), 'a') as f:\n"
        "    f.write('imported\\n')\n"
        "def build():\n"
        "    return 42\n"
    )
    (tmp_path / "broken.py").write_text("raise RuntimeError('broken at import')\n")
    return tmp_path


def test_warm_imports_run_once_before_the_train_function_needs_them(job_dir: Path) -> None:
    imports = ["features.py", "json.tool", "broken.py", "no_such_module_here"]
    env = {TRAIN_WORKER_ENV: "1", **warm_imports_env(imports, str(job_dir))}
    result, stderr = _run(job_dir, env)
    assert result["warm_at"] is not None and result["tensorflow"]
    assert result["json_tool"] and result["file_preloaded"] and result["value"] == 42
    # the preload ran the file; the entry point's load found it: its code ran once
    assert (job_dir / "imports.log").read_text() == "imported\n"
    assert "could not preload broken.py" in stderr
    assert "could not preload no_such_module_here" in stderr


def test_outside_a_training_worker_nothing_is_imported(job_dir: Path) -> None:
    env = {TRAIN_WORKER_ENV: "0", **warm_imports_env(["json.tool"], str(job_dir))}
    result, _ = _run(job_dir, env)
    assert result["warm_at"] is None and not result["json_tool"]
    assert not result["file_preloaded"]
    assert (job_dir / "imports.log").read_text() == "imported\n"  # by the entry point's load


def test_no_warm_imports_sets_no_env() -> None:
    assert warm_imports_env((), "/x") == {}
