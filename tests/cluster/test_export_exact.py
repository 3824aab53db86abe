"""``spotrain export`` exports exactly the step asked for or fails (exit 3, naming the committed
steps), checks the model fingerprint against the current ``build_model`` and writes nothing to
the run. Real training (one local worker, the toy job), real local storage, the real CLI."""

from __future__ import annotations

from pathlib import Path

import pytest

from cluster.cli import main
from storage.checkpoints import CheckpointStore
from storage.location import RunLocation
from storage.run_record import RunRecord
from tests.fakes import corrupt_file
from tests.trainer.helpers import REPO, TOY

TOY_PATH = REPO / TOY
pytestmark = pytest.mark.slow  # trains the toy job once (TensorFlow start-up ~20 s on 2 cores)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> str:
    from trainer.local import run_local

    base = tmp_path_factory.mktemp("export")
    url = f"file://{base}/toy"
    job = {
        "name": "toy",
        "run_url": url,
        "model": f"{TOY_PATH}:build_model",
        "data": f"{TOY_PATH}:make_dataset",
        "epochs": 2,
        "global_batch_size": 16,
        "seed": 3,
        "config": {"lr_mode": "plateau"},
        "checkpoint": {"every_steps": 6, "keep_last": 0},
        "preemption_poll_steps": 0,
    }
    run_local(job)
    RunRecord(url).write_spec({k: v for k, v in job.items() if k != "run_url"})
    return url


def _events(url: str) -> list[str]:
    loc = RunLocation.from_url(url)
    return sorted(loc.fs.ls(loc.events_dir, detail=False)) if loc.fs.exists(loc.events_dir) else []


def test_export_step_is_exact_or_fails_naming_the_steps(
    trained: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["export", trained, "--out", str(tmp_path / "a.keras"), "--step", "6"]) == 0
    assert "exported step 6 " in capsys.readouterr().out
    before = _events(trained)
    assert main(["export", trained, "--out", str(tmp_path / "b.keras"), "--step", "999"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("spotrain export: error: step 999 ") and "[6, 12]" in err
    loc = RunLocation.from_url(trained)
    corrupt_file(loc.fs, loc.step_dir(12) + "/" + _a_data_file(loc, 12))
    try:
        assert main(["export", trained, "--out", str(tmp_path / "c.keras"), "--step", "12"]) == 3
        err = capsys.readouterr().err.strip()
        assert "step 12 " in err and "does not verify" in err and "is 6" in err
        assert not (tmp_path / "c.keras").exists()
        assert main(["export", trained, "--out", str(tmp_path / "d.keras")]) == 0  # newest good
        assert "exported step 6 " in capsys.readouterr().out
    finally:
        corrupt_file(loc.fs, loc.step_dir(12) + "/" + _a_data_file(loc, 12))  # flip back
    assert _events(trained) == before  # export wrote nothing to the run


def _a_data_file(loc: RunLocation, step: int) -> str:
    """A checkpoint data file of ``step``, relative to its step directory."""
    manifest = CheckpointStore(loc).manifest(step)
    rel = sorted(
        e.path for e in manifest.files if ".data-" in e.path and e.path.startswith("ckpt")
    )[0]
    return manifest.file_path(rel)


def test_export_with_a_changed_build_model_fails(
    trained: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    changed = tmp_path / "changed.py"
    changed.write_text(
        TOY_PATH.read_text().replace(
            "h = tf.keras.layers.Dense(16)(inputs)",
            "h = tf.keras.layers.Dense(16)(inputs)\n    h = tf.keras.layers.Dense(16)(h)",
        )
    )
    out = tmp_path / "m.keras"
    assert main(["export", trained, "--out", str(out), "--model", f"{changed}:build_model"]) == 3
    err = capsys.readouterr().err.strip()
    assert err.startswith("spotrain export: error: the checkpoints under ")
    assert "different model" in err and not out.exists()
