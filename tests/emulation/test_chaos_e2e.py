"""``spotrain emulate`` end to end: each fault kind, then a seeded random mix, on a real
multi-raylet Ray cluster with real TensorFlow training. Each run must finish with the final
weights of an uninterrupted run, lose no step on a noticed preemption, never restore a
checkpoint that failed verification, and leave every attempt and fault in its events."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from storage.location import RunLocation
from storage.run_record import RunRecord
from trainer.verify import committed_tensors, differing_tensors

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
JOB = "examples/digits.yaml"
#: The same job with a pause in its model's build (tests/emulation/slow_start.py).
SLOW_START_JOB = "tests/emulation/slow-start-digits.yaml"
EPOCHS = "3"
#: The random schedule spans ~90 s of faults; the run must outlast it.
RANDOM_EPOCHS = "12"
#: The digits job without early stopping, and enough epochs of it (~0.8 s each on 2 cores) that
#: a kill 30 s into training lands. examples/digits.yaml's early stopping ended its run before
#: that once Ray Train's PreemptionWatcher no longer polled beside the training.
LONG_JOB = "tests/emulation/long-digits.yaml"
WARM_EPOCHS = "80"


def _env() -> dict[str, str]:
    return {
        **os.environ,
        "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
        "SPOTRAIN_BACKOFF_S": "0.5",
        "SPOTRAIN_METRICS_EVENT_INTERVAL_S": "1",
    }


def _spotrain(*args: str, timeout_s: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "cluster", *args],
        cwd=REPO,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=timeout_s,
        check=False,
    )


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Final tensors of an uninterrupted 2-worker run, per epoch count (computed once each)."""
    cache: dict[str, dict[str, Any]] = {}

    def get(epochs: str = EPOCHS) -> dict[str, Any]:
        if epochs not in cache:
            storage = f"file://{tmp_path_factory.mktemp('reference')}"
            out = _spotrain("run", JOB, "--storage", storage, "--epochs", epochs, "--workers", "2")
            assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
            cache[epochs] = committed_tensors(RunLocation.from_url(f"{storage}/digits-mlp"))[0]
        return cache[epochs]

    return get


@pytest.fixture
def reference(references) -> dict[str, Any]:
    return references()


def _events(run_url: str) -> list[dict[str, Any]]:
    """The run's events in the record's order (read as spotrain reads them)."""
    return [e.to_dict() for e in RunRecord(RunLocation.from_url(run_url)).events()]


def _emulate(
    tmp_path: Path,
    *chaos: str,
    epochs: str = EPOCHS,
    job: str = JOB,
    nodes: str = "2",
    name: str = "digits-mlp",
) -> tuple[dict[str, Any], str]:
    storage = f"file://{tmp_path}/runs"
    report_path = tmp_path / "report.json"
    out = _spotrain(
        "emulate",
        job,
        "--nodes",
        nodes,
        "--storage",
        storage,
        "--epochs",
        epochs,
        "--report-json",
        str(report_path),
        *chaos,
    )
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-3000:]
    return json.loads(report_path.read_text()), f"{storage}/{name}"


def _check_run(report: dict[str, Any], run_url: str, reference: dict[str, Any]) -> list[dict]:
    """The run ended bitwise equal to ``reference``, and its record is sound."""
    got, _ = committed_tensors(RunLocation.from_url(run_url))
    assert differing_tensors(reference, got) == []
    return _check_record(report, run_url)


def _check_record(report: dict[str, Any], run_url: str) -> list[dict]:
    """The run succeeded with 2 workers, every fault landed and was noticed, and no restore
    loaded an uncommitted or corrupt checkpoint; returns the run's events."""
    assert report["status"]["state"] == "SUCCEEDED"
    _, state = committed_tensors(RunLocation.from_url(run_url))
    assert state["world_size"] == 2

    events = _events(run_url)
    kinds = [e["kind"] for e in events]
    assert "checkpoint_corrupt" not in kinds
    committed = {e["payload"]["step"] for e in events if e["kind"] == "checkpoint_commit"}
    restored = [e["payload"]["step"] for e in events if e["kind"] == "restore"]
    assert set(restored) <= committed, "a restore loaded a step that was never committed"
    hit = [f for f in report["faults"] if not f["skipped"] and f["kind"] != "add-node"]
    assert hit, f"no fault landed: {report['faults']}"
    interruptions = kinds.count("failure") + kinds.count("preemption")
    driver_kills = sum(f["kind"] == "kill-driver" for f in hit)
    assert interruptions + driver_kills >= len(hit), (kinds, report["faults"])
    assert kinds.count("attempt_start") >= 2
    unnoticed = [c["fault"] for c in report["costs"] if c["detection_s"] is None]
    assert not unnoticed, f"faults the run record never noticed: {unnoticed}"
    return events


def _noticed_preemptions_lost_nothing(events: list[dict[str, Any]]) -> None:
    noticed = [
        i for i, e in enumerate(events) if e["kind"] == "preemption" and "step" in e["payload"]
    ]
    assert noticed, "no preemption notice reached the workers"
    committed: set[int] = set()
    for i, e in enumerate(events):
        if e["kind"] == "checkpoint_commit":
            committed.add(e["payload"]["step"])
        if i not in noticed:
            continue
        step = e["payload"]["step"]
        after = [x for x in events[i + 1 :] if x["kind"] in ("restore", "attempt_start")]
        restores = [x for x in after if x["kind"] == "restore"]
        if step == 0 and not committed:  # noticed before anything was committed: a fresh start
            assert not restores or restores[0]["payload"]["step"] == 0
            continue
        assert restores and restores[0]["payload"]["step"] == step


def test_kill_worker(tmp_path, reference):
    report, run_url = _emulate(tmp_path, "--chaos", "kill-worker@4s")
    _check_run(report, run_url, reference)


def test_a_worker_restarted_after_a_fault_was_warm(tmp_path):
    """Once training runs, each worker asks its raylet for a spare process in its runtime env;
    the preload (``trainer.warm``) imports TensorFlow there. The worker group restarted after
    the kill takes the spares: its chief imported TensorFlow before the fault, not after.
    The kill comes 30 s into training: on a 2-core machine two spares import TensorFlow while
    two workers train, at idle CPU priority for up to 15 s (``trainer.idle_import``), and were
    seen still importing 12 s in at normal priority. The run (``LONG_JOB``, no early stopping)
    trains well past 30 s, so the kill lands; the other chaos tests show the bitwise equality,
    so this one checks the record without a reference run."""
    report, run_url = _emulate(
        tmp_path,
        "--clock",
        "training",
        "--chaos",
        "kill-worker@30s",
        epochs=WARM_EPOCHS,
        job=LONG_JOB,
    )
    events = _check_record(report, run_url)
    fault = next(f for f in report["faults"] if f["kind"] == "kill-worker" and not f["skipped"])
    after = [e for e in events if e["kind"] == "restore" and e["time"] > fault["wall_time"]]
    assert after, "no restore after the fault"
    warm_at = after[0]["payload"].get("warm_at")
    assert warm_at is not None, f"the restarted chief was not preloaded: {after[0]['payload']}"
    assert warm_at < fault["wall_time"], "the restarted chief imported TensorFlow after the fault"


def test_drain_node_is_a_noticed_preemption_that_loses_no_step(tmp_path, references):
    # The fault clock starts at the first commit (--clock training): the drain comes 2 s into
    # the 12-epoch run's ~10 s of training, whatever the start-up took. Timed from the workers'
    # processes' start instead, the drain landed in start-up on a slow machine (acted on only
    # once training started) or, once start-up and training got faster, after the run's end.
    # The drained node is released once its notice's checkpoint is committed; the node added
    # 6 s later gives the run its second worker back.
    report, run_url = _emulate(
        tmp_path,
        "--clock",
        "training",
        "--chaos",
        "drain-node@2s:deadline=20,add-node@8s",
        epochs=RANDOM_EPOCHS,
    )
    events = _check_run(report, run_url, references(RANDOM_EPOCHS))
    _noticed_preemptions_lost_nothing(events)
    assert report["status"]["lost_steps"] == 0


def test_a_notice_during_start_up_ends_the_attempt_at_once(tmp_path, reference):
    """The drain comes while the workers start (importing, forming the group, building): their
    watchers see it, and before the first step the ranks agree to stop with nothing to save; the
    drained node is released as soon as its worker ended, long before the 60 s deadline."""
    report, run_url = _emulate(
        tmp_path, "--chaos", "drain-node@1s:deadline=60,add-node@2s", job=SLOW_START_JOB
    )
    events = _check_run(report, run_url, reference)
    _noticed_preemptions_lost_nothing(events)
    early = [
        e
        for e in events
        if e["kind"] == "preemption" and "source" not in e["payload"] and e["payload"]["step"] == 0
    ]
    assert early, "the notice was not acted on before the first step"
    assert report["status"]["lost_steps"] == 0 and report["status"]["failures"] == 0
    assert report["wall_s"] < 600


def test_kill_node_then_capacity_returns(tmp_path, reference):
    report, run_url = _emulate(tmp_path, "--chaos", "kill-node@4s,add-node@6s")
    _check_run(report, run_url, reference)


def test_kill_driver_is_resumed_by_the_next_invocation(tmp_path, references):
    """The kill comes 1 s after the first commit (``--clock training``), so the next driver
    resumes mid-run. A kill 5 s after the workers' processes existed once landed after the
    3-epoch run had already finished: the second driver only recorded the success."""
    report, run_url = _emulate(
        tmp_path, "--clock", "training", "--chaos", "kill-driver@1s", epochs=RANDOM_EPOCHS
    )
    events = _check_run(report, run_url, references(RANDOM_EPOCHS))
    assert report["driver_starts"] >= 2
    starts = [e["payload"] for e in events if e["kind"] == "attempt_start"]
    resumed = [p for p in starts if p["source"] == "driver"][-1]
    assert (resumed["from_step"] or 0) > 0, "the second driver did not resume from a commit"


def test_seeded_random_schedule_of_mixed_faults(tmp_path, references):
    report, run_url = _emulate(
        tmp_path,
        "--chaos-random",
        "10",
        "--chaos-seed",
        "3",
        "--chaos-duration-s",
        "70",
        "--chaos-min-gap-s",
        "9",
        epochs=RANDOM_EPOCHS,
    )
    kinds = {f["kind"] for f in report["faults"] if not f["skipped"]}
    assert len([f for f in report["faults"] if not f["skipped"]]) >= 5
    assert len(kinds - {"add-node"}) >= 2, f"not a mix: {kinds}"
    _check_run(report, run_url, references(RANDOM_EPOCHS))


def _emulate_elastic(tmp_path: Path, *chaos: str, epochs: str, nodes: str) -> tuple[dict, str]:
    return _emulate(
        tmp_path,
        *chaos,
        epochs=epochs,
        job="examples/digits-elastic.yaml",
        nodes=nodes,
        name="digits-elastic",
    )


def test_elastic_run_continues_with_fewer_workers_after_losing_a_node(tmp_path):
    report, run_url = _emulate_elastic(
        tmp_path, "--chaos", "kill-node@4s", epochs=EPOCHS, nodes="2"
    )
    assert report["status"]["state"] == "SUCCEEDED"
    assert report["status"]["total_steps"] == report["status"]["global_step"]
    _, state = committed_tensors(RunLocation.from_url(run_url))
    assert state["world_size"] == 1, "no node came back: the run must have shrunk to 1 worker"
    assert state["global_batch_size"] == 64


def test_elastic_run_grows_when_capacity_arrives(tmp_path):
    """Start where one worker fits; Ray Train's resize check (every ``resize_check_s``) sees the
    added node and restarts the group with 2 workers from a 1-worker checkpoint. The fault
    clock starts at the first commit (``--clock training``): a resize can come 10 s after the
    group started, and a node that joined before the first commit could restart the group with
    nothing to restore (seen: the grown group started from step 0)."""
    report, run_url = _emulate_elastic(
        tmp_path, "--clock", "training", "--chaos", "add-node@1s", epochs="40", nodes="1"
    )
    assert report["status"]["state"] == "SUCCEEDED"
    restores = [e["payload"] for e in _events(run_url) if e["kind"] == "restore"]
    grown = [r for r in restores if r["saved_by_world_size"] == 1 and r["world_size"] == 2]
    assert grown, f"never grew from 1 to 2 workers: {restores}"
    _, state = committed_tensors(RunLocation.from_url(run_url))
    assert state["world_size"] == 2 and state["global_batch_size"] == 64
