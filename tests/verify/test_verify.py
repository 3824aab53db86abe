"""``spotrain verify`` tells an exact job from jobs broken in each detectable way."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.trainer.helpers import job_dict
from trainer.job import TrainJob
from trainer.verify import verify

pytestmark = pytest.mark.slow

BROKEN = "tests/verify/broken_jobs.py"
STEPS, PREEMPTIONS = 16, 3


def _job(tmp_path: Path, **over: Any) -> TrainJob:
    d = job_dict(tmp_path, "verify", "plateau")
    d["checkpoint"] = {"every_steps": 4, "every_epoch": True, "keep_last": 0}
    d.update(over)
    return TrainJob.from_dict(d)


def test_an_exact_job_passes(tmp_path):
    report = verify(
        _job(tmp_path), steps=STEPS, preemptions=PREEMPTIONS, seed=3, workdir=str(tmp_path / "v")
    )
    assert report.exact, report.render()
    assert report.steps == STEPS
    assert len(report.interrupted_at) == PREEMPTIONS
    assert report.attempts == PREEMPTIONS + 1
    assert report.render().startswith("EXACT")


@pytest.mark.parametrize(
    ("over", "cause"),
    [
        (
            {"callbacks": [{"custom": {"entry": f"{BROKEN}:HalveLREveryThreeBatches"}}]},
            "callback HalveLREveryThreeBatches holds state but has no get_state()",
        ),
        ({"data": f"{BROKEN}:make_noisy_dataset"}, "unseeded randomness"),
        ({"data": f"{BROKEN}:make_attempt_ordered_dataset"}, "order depends on the attempt"),
        (
            {"model": f"{BROKEN}:build_jittery_model", "val_data": None, "callbacks": []},
            "non-deterministic ops or unseeded randomness inside the model",
        ),
    ],
    ids=["stateful-callback", "unseeded-data", "attempt-ordered-data", "nondeterministic-model"],
)
def test_a_broken_job_fails_and_names_the_cause(tmp_path, over, cause):
    report = verify(
        _job(tmp_path, **over),
        steps=STEPS,
        preemptions=PREEMPTIONS,
        seed=3,
        workdir=str(tmp_path / "v"),
    )
    text = report.render()
    assert not report.exact, text
    assert report.first_divergent_step is not None or report.differing_variables, text
    assert any(cause in c for c in report.causes), text
    assert text.startswith("NOT EXACT")


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="--preemptions must be in"):
        verify(_job(tmp_path), steps=4, preemptions=4)
    with pytest.raises(ValueError, match="--steps must be >= 2"):
        verify(_job(tmp_path), steps=1, preemptions=1)
