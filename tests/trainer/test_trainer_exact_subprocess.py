"""Exactness across real process deaths: each attempt is ``python -m trainer.local`` in a
fresh process, killed by SIGKILL (mid-epoch, right after a save, during an upload) or
preempted by SIGTERM (save at the next poll, exit 75). The final checkpoint is bitwise equal
to the uninterrupted run's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.helpers import (
    REPO,
    TOY,
    assert_bitwise_equal,
    events,
    final_checkpoint,
    history_of,
    job_dict,
)

pytestmark = pytest.mark.slow


def test_sigkill_upload_kill_and_sigterm_resume_exactly(tmp_path: Path, reference: Any) -> None:
    ref_tensors, ref_manifest, _ = reference("plateau")
    pause_dir = tmp_path / "pause"
    pause_dir.mkdir()
    job = job_dict(tmp_path, "proc", "plateau", preemption_poll_steps=2)
    plan = {4: "sigkill", 11: "sigkill", 14: "sigkill_mid_upload", 17: "sigterm"}
    job["callbacks"] = [
        *job["callbacks"],
        {
            "custom": {
                "entry": f"{TOY}:interrupt",
                "plan": {str(k): v for k, v in plan.items()},
                "marker_dir": str(tmp_path / "markers"),
                "pause_dir": str(pause_dir),
            }
        },
    ]
    job_file = tmp_path / "job.json"
    job_file.write_text(json.dumps(job))
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_USE_LEGACY_KERAS": "1"}
    codes = []
    for attempt in range(8):
        attempt_env = dict(env)
        if attempt == 2:  # the resumed attempt: its first commit pauses
            # after its first file: the kill tears the commit
            attempt_env["SPOTRAIN_TEST_COMMIT_PAUSE"] = f"after_files:1@{pause_dir}"
        proc = subprocess.run(
            [sys.executable, "-m", "tests.storage.commit_pause", "trainer.local", str(job_file)],
            cwd=REPO,
            env=attempt_env,
            capture_output=True,
            text=True,
            timeout=240,
        )
        codes.append(proc.returncode)
        if proc.returncode == 0:
            break
        assert proc.returncode in (-9, 75), proc.stderr[-3000:]
    assert codes == [-9, -9, -9, 75, 0], codes
    assert list(pause_dir.glob("*.reached")), "the upload was not in progress when killed"
    preemptions = events(job["run_url"], "preemption")
    assert [e["payload"]["step"] for e in preemptions] == [18]  # SIGTERM after 17, poll at 18
    restores = [e["payload"]["step"] for e in events(job["run_url"], "restore")]
    # killed right after the save of 10, its background upload may not have finished: the
    # run resumes from 10, 6 or (when 10 superseded 6 waiting behind the upload of 5, which
    # the snapshot saves make likelier: training no longer waits for local writes) 5; the
    # torn commit of the paused attempt is never used
    assert restores[0] in (5, 6, 10) and restores == [restores[0], restores[0], 18], restores
    tensors, manifest = final_checkpoint(job["run_url"])
    assert_bitwise_equal(ref_tensors, tensors)
    assert history_of(manifest) == history_of(ref_manifest)
