"""Preemption notices: Ray's notice (faked through WorkerContext) and SIGTERM make the attempt
save at the next poll step, commit, record a 'preemption' event and raise PreemptedError; the
next attempt resumes with zero steps lost and ignores the notice it already handled. A notice
before the attempt's first step ends it at once, with nothing to save."""

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


NOTICE = "PreemptionInfo(deadline=1234, ranks=[0])"


class NoticeAfter(WorkerContext):
    """A single worker whose (Ray) preemption notice appears once training reached step
    ``after`` (0: there from the start, as when the drain came during the start-up)."""

    def __init__(self, after: int, notice: str = NOTICE) -> None:
        super().__init__()
        self.after = after
        self.notice = notice
        self.step = 0

    def local_preemption_notice(self) -> Any:
        return self.notice if self.step >= self.after else None


class CountSteps(tf.keras.callbacks.Callback):
    """Tells the fake worker how far training got (the trained steps, restored ones included)."""

    spotrain_stateless = True

    def __init__(self, worker: NoticeAfter) -> None:
        super().__init__()
        self.worker = worker

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        self.worker.step = int(self.model.optimizer.iterations.numpy())


def _train(job: TrainJob, worker: NoticeAfter) -> Any:
    return train(job, worker, extra_callbacks=[CountSteps(worker)])


def test_ray_notice_saves_then_raises_and_resume_is_exact(tmp_path: Path, reference: Any) -> None:
    ref_tensors, ref_manifest, _ = reference("plateau")
    job = TrainJob.from_dict(job_dict(tmp_path, "notice", "plateau", preemption_poll_steps=4))
    with pytest.raises(PreemptedError) as info:
        _train(job, NoticeAfter(7))
    assert info.value.step == 8 and info.value.retryable  # the next poll after step 7
    assert [e["payload"]["step"] for e in events(job.run_url, "preemption")] == [8]
    # the next attempt sees the same notice (the node is still draining): it must not stop
    # again for it, and it resumes at step 8 exactly
    result = _train(job, NoticeAfter(0))
    assert result.restored_step == 8 and result.finished
    tensors, manifest = final_checkpoint(job.run_url)
    assert_bitwise_equal(ref_tensors, tensors)
    assert history_of(manifest) == history_of(ref_manifest)


def test_notice_before_the_first_step_ends_the_attempt_with_nothing_to_save(
    tmp_path: Path, reference: Any
) -> None:
    """A notice that came during the start-up (strategy, build, restore) stops the attempt
    before it trains a step; it saves nothing, and the next attempt resumes from the same step."""
    ref_tensors, _, _ = reference("plateau")
    job = TrainJob.from_dict(job_dict(tmp_path, "early", "plateau", preemption_poll_steps=4))
    with pytest.raises(PreemptedError) as fresh:
        _train(job, NoticeAfter(0))
    assert fresh.value.step == 0
    assert not list((tmp_path / "early" / "checkpoints").glob("*/MANIFEST.json"))
    with pytest.raises(PreemptedError):
        _train(job, NoticeAfter(7))  # saves step 8 for NOTICE
    with pytest.raises(PreemptedError) as early:
        _train(job, NoticeAfter(0, notice="PreemptionInfo(another drain)"))
    assert early.value.step == 8 and early.value.reason == "ray-preemption-notice"
    _, manifest = final_checkpoint(job.run_url)
    assert manifest["step"] == 8  # nothing new was committed
    assert [e["payload"]["step"] for e in events(job.run_url, "preemption")] == [0, 8, 8]
    result = _train(job, NoticeAfter(10**9))
    assert result.restored_step == 8 and result.finished
    assert_bitwise_equal(ref_tensors, final_checkpoint(job.run_url)[0])


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


def test_a_save_and_a_poll_at_one_step_share_one_collective(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A save gathers every rank's rows; when a poll is due at the same step, its notice flags
    travel in that same gather: such a step makes exactly one gather, and a notice seen there
    stops the run at that step."""
    import functools

    import numpy as np

    from trainer import callback
    from trainer import state as st
    from trainer.callback import BackupAndRestore
    from trainer.notice_watcher import PollSchedule

    # polls on the step grid only: a slow first step (tracing) would otherwise bring one forward
    monkeypatch.setattr(callback, "PollSchedule", functools.partial(PollSchedule, poll_s=0))
    worker = NoticeAfter(after=6)
    gathers: list[tuple[int, int]] = []  # (trained steps, values gathered)
    real = st.gather_rows
    monkeypatch.setattr(
        st,
        "gather_rows",
        lambda strategy, row: gathers.append((worker.step, len(row))) or real(strategy, row),
    )
    m = tf.keras.Sequential([tf.keras.Input((4,)), tf.keras.layers.Dense(2)])
    m.compile(tf.keras.optimizers.SGD(0.1), loss="mse", metrics=["mae"])
    url = (tmp_path / "run").as_uri()
    bar = BackupAndRestore(url, save_freq=3, preemption_poll_steps=3, worker=worker)
    x, y = np.ones((64, 4), "float32"), np.zeros((64, 2), "float32")
    with pytest.raises(PreemptedError) as stopped:
        m.fit(x, y, batch_size=8, epochs=1, callbacks=[CountSteps(worker), bar], verbose=0)
    assert stopped.value.step == 6
    rows = len(bar.state.own_rows())
    assert rows > 0  # the compiled metrics' totals and counts
    assert [n for g, n in gathers if g == 3] == [2 + rows]  # a save and a poll: one gather
    # the save that saw the notice: its gather, then the emergency save's commit check
    assert [n for g, n in gathers if g == 6] == [2 + rows, 1]
    assert not [g for g, n in gathers if g in (2, 4, 5)]  # no gather between them
    assert [e["payload"]["step"] for e in events(url, "preemption")] == [6]
