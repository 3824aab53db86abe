"""Preemption notices: Ray's notice (faked through WorkerContext) and SIGTERM make the attempt
save at the next poll step, commit, record a 'preemption' event and raise PreemptedError; the
next attempt resumes with zero steps lost and ignores the notice it already handled."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from tests.trainer.helpers import (
    assert_bitwise_equal,
    events,
    final_checkpoint,
    history_of,
    job_dict,
)
from trainer.cluster_context import WorkerContext
from trainer.errors import PreemptedError
from trainer.job import TrainJob
from trainer.training import train

import tensorflow as tf  # isort: skip


class NoticeAfter(WorkerContext):
    """A single worker whose (Ray) preemption notice appears once step >= `after` was polled."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after
        self.polls = 0
        self.step = 0

    def preemption_notice(self) -> Any:
        self.polls += 1
        return "PreemptionInfo(deadline=1234, ranks=[0])" if self.polls * 4 >= self.after else None


def test_ray_notice_saves_then_raises_and_resume_is_exact(tmp_path: Path, reference: Any) -> None:
    ref_tensors, ref_manifest, _ = reference("plateau")
    job = TrainJob.from_dict(job_dict(tmp_path, "notice", "plateau", preemption_poll_steps=4))
    with pytest.raises(PreemptedError) as info:
        train(job, NoticeAfter(8))
    assert info.value.step == 8 and info.value.retryable
    assert [e["payload"]["step"] for e in events(job.run_url, "preemption")] == [8]
    # the next attempt sees the same notice (the node is still draining): it must not stop
    # again for it, and it resumes at step 8 exactly
    result = train(job, NoticeAfter(0))
    assert result.restored_step == 8 and result.finished
    tensors, manifest = final_checkpoint(job.run_url)
    assert_bitwise_equal(ref_tensors, tensors)
    assert history_of(manifest) == history_of(ref_manifest)


class SigtermAt(tf.keras.callbacks.Callback):
    spotrain_stateless = True

    def __init__(self, step: int) -> None:
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            os.kill(os.getpid(), signal.SIGTERM)


def test_sigterm_is_a_preemption_notice(tmp_path: Path) -> None:
    job = TrainJob.from_dict(job_dict(tmp_path, "term", "plateau", preemption_poll_steps=3))
    previous = signal.getsignal(signal.SIGTERM)
    with pytest.raises(PreemptedError, match="SIGTERM") as info:
        train(job, WorkerContext(), extra_callbacks=[SigtermAt(7)])
    assert info.value.step == 9  # next poll after step 7: zero steps lost
    assert signal.getsignal(signal.SIGTERM) == previous  # handler removed again
    _, manifest = final_checkpoint(job.run_url)
    assert manifest["step"] == 9 and not manifest["state"]["finished"]
