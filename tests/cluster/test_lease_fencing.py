"""The cluster side of fencing: the coordinator's writers carry its lease generation, a lost
lease stops an attempt without a save and without writing, and ``spotrain gc`` takes the lease
and keeps only verified checkpoints."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cluster.attempt import AttemptContext, AttemptResult, CoordinatorOptions
from cluster.cli import main
from cluster.coordinator import Coordinator
from storage.checkpoints import CheckpointStore
from storage.errors import LeaseLostError, StaleWriterError
from storage.lease import Lease
from storage.location import RunLocation
from storage.run_record import RunRecord

from .fakes import commit, runner_without_ray
from .test_coordinator import make_spec


def _files(root: Path) -> set[str]:
    return {str(p) for p in root.rglob("*") if p.is_file() and p.name != "lease.json"}


class TakenOverRunner:
    """Commits one step, then a newer coordinator takes the run over, then it fails."""

    def __init__(self, loc: RunLocation) -> None:
        self.loc = loc
        self.after_takeover: set[str] = set()

    def run(self, ctx: AttemptContext) -> AttemptResult:
        assert ctx.lease_generation is not None
        commit(ctx.location, 5)
        # a newer coordinator whose clock is past the old lease's expiry takes the run over
        Lease(self.loc, "newer", 30.0, clock=lambda: time.time() + 1000).acquire()
        self.after_takeover = _files(Path(self.loc.root))
        raise RuntimeError("a worker died")

    def close(self) -> bool:
        return False


def test_stale_coordinator_writes_nothing_after_a_takeover(tmp_path: Path) -> None:
    spec = make_spec(tmp_path)
    opts = CoordinatorOptions(lease_ttl_s=10, lease_renew_s=5, backoff_override_s=0)
    loc = RunLocation.from_url(spec.run_url)
    runner = TakenOverRunner(loc)
    c = Coordinator(spec, opts, runner)
    c.start()
    assert c.record.fence is not None and c.store.fence is not None
    c.step()  # PENDING -> RUNNING
    with pytest.raises(StaleWriterError):
        c.step()  # the failure would be recorded: refused
    c.close()
    assert _files(Path(loc.root)) == runner.after_takeover


class BlockingTrainer:
    def __init__(self) -> None:
        self.release = threading.Event()

    def fit(self) -> Any:
        self.release.wait(30)
        return None


def test_lost_lease_stops_without_an_emergency_save(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = BlockingTrainer()
    saves: list[Any] = []
    runner, ctx = runner_without_ray(
        monkeypatch,
        make_spec(tmp_path),
        trainer,
        lambda ctx, thread: saves.append(ctx),
        lease_generation=3,
    )
    ctx.lease_lost.set()
    ctx.stop.set()  # on_lost = request_stop sets both: the lost lease wins
    try:
        with pytest.raises(LeaseLostError, match="without saving"):
            runner.run(ctx)
    finally:
        trainer.release.set()
        runner.close()
    assert saves == []


def _run_with_steps(tmp_path: Path, steps: tuple[int, ...]) -> tuple[str, CheckpointStore]:
    url = f"file://{tmp_path}/runs/demo"
    RunRecord(url).write_spec({"name": "demo", "checkpoint": {"keep_last": 2}})
    for s in steps:
        commit(url, s)
    return url, CheckpointStore(url)


def test_gc_is_refused_while_a_coordinator_holds_the_lease(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    url, store = _run_with_steps(tmp_path, (10, 20, 30))
    Lease(url, "live-coordinator:1", 30.0).acquire()
    assert main(["gc", url, "--keep-last", "1"]) == 5
    assert "held by live-coordinator:1" in capsys.readouterr().err
    assert store.committed_steps() == [10, 20, 30]


def test_gc_keeps_the_newest_good_step(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    url, store = _run_with_steps(tmp_path, (10, 20, 30))
    m = store.manifest(30)
    path = Path(store.loc.step_dir(30)) / m.file_path(m.files[0].path)
    path.write_bytes(path.read_bytes()[:3])  # the latest step's data truncated
    assert main(["gc", url, "--keep-last", "1"]) == 0
    assert store.committed_steps() == [20]
    info = Lease(url, "reader", 30.0).read()
    assert info is not None and info.released and info.holder.startswith("gc:")
