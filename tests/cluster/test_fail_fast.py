"""Impossible input is refused before Ray or TensorFlow start; deterministic worker errors are
not retried; a run whose every checkpoint is corrupt says how to start fresh (exit 6); the
"finished" shortcut verifies the final checkpoint first."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from cluster.cli import main
from cluster.coordinator import Coordinator, CoordinatorOptions
from cluster.errors import SpecError
from cluster.failure_policy import FailureKind, FailurePolicy, classify
from cluster.spec import parse_spec
from cluster.state import RunState
from storage.checkpoints import CheckpointStore
from storage.errors import NoValidCheckpointError
from storage.location import RunLocation
from storage.run_record import RunRecord
from tests.fakes import corrupt_file
from trainer.errors import ModelMismatchError

from .fakes import FakeRunner, commit
from .test_failure_policy import WorkerGroupError, wrap

ROOT = Path(__file__).resolve().parents[2]
BASE = {
    "name": "demo",
    "model": "examples/digits.py:build_model",
    "data": "examples/digits.py:make_dataset",
}


@pytest.mark.parametrize(
    ("extra", "field", "allowed"),
    [
        ({"seed": 99999999999999999999999999}, "seed", "from 0 to 4294967295"),
        ({"seed": 2**32}, "seed", "from 0 to 4294967295"),
        ({"epochs": 10**30}, "epochs", "from 1 to 1000000"),
        ({"epochs": 1e30}, "epochs", "expected an integer"),
        ({"global_batch_size": 2**31}, "global_batch_size", "from 1 to 2147483647"),
        ({"checkpoint": {"every_steps": 10**13}}, "checkpoint.every_steps", "from 1 to"),
        ({"global_batch_size": 63}, "global_batch_size", "a multiple of scaling.workers (2)"),
        (
            {"global_batch_size": 64, "scaling": {"workers": [1, 3]}},
            "global_batch_size",
            "every world size in [1, 3] (3 is not)",
        ),
    ],
)
def test_out_of_range_values_name_field_value_and_allowed(
    extra: dict, field: str, allowed: str
) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, **extra}, working_dir=str(ROOT))
    assert info.value.field == field and allowed in str(info.value)


def test_the_largest_allowed_values_pass() -> None:
    spec = parse_spec(
        {**BASE, "seed": 2**32 - 1, "global_batch_size": 60, "scaling": {"workers": [1, 6]}},
        working_dir=str(ROOT),
    )
    assert spec.seed == 2**32 - 1


def test_override_workers_checks_the_batch(tmp_path: Path) -> None:
    spec = parse_spec({**BASE, "global_batch_size": 64}, working_dir=str(ROOT))
    with pytest.raises(SpecError, match="with --workers 3"):
        spec.with_overrides(workers=3)


def test_impossible_batch_exits_3_before_ray_or_tensorflow(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    job = tmp_path / "job.yaml"
    job.write_text(
        "name: demo\nmodel: examples/digits.py:build_model\ndata: examples/digits.py:make_dataset\n"
        f"global_batch_size: 63\nstorage: file://{tmp_path}/runs\n"
    )
    for name in [m for m in sys.modules if m == "ray" or m.startswith("ray.")]:
        monkeypatch.delitem(sys.modules, name)
    assert main(["run", str(job)]) == 3
    assert "global_batch_size" in capsys.readouterr().err
    assert "ray" not in sys.modules and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(
    "exc", [ValueError("Seed must be between 0 and 2**32 - 1"), TypeError("x")]
)
def test_deterministic_errors_inside_workers_are_user_errors(exc: Exception) -> None:
    c = classify(WorkerGroupError({0: wrap(exc, "Traceback (most recent call last):\n  w.py")}))
    assert c.kind is FailureKind.USER_CODE and "w.py" in c.user_traceback
    policy = FailurePolicy()
    verdict = policy.decide(c)
    assert not verdict.restart and policy.counts == {"preemptions": 0, "failures": 0, "storage": 0}


def test_model_mismatch_inside_workers_is_a_user_error() -> None:
    err = ModelMismatchError("file:///r", "a" * 64, "b" * 64, "layers differ")
    assert classify(WorkerGroupError({0: wrap(err)})).kind is FailureKind.USER_CODE


def test_no_usable_checkpoint_is_its_own_kind_and_exit_6(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from cluster.cli import _failed
    from cluster.state import Failed

    err = NoValidCheckpointError("steps [20, 10] are all corrupt", "file:///r", [20, 10])
    c = classify(WorkerGroupError({0: wrap(err)}))
    assert c.kind is FailureKind.NO_CHECKPOINT
    assert not FailurePolicy().decide(c).restart
    code, what = _failed(Failed(reason="no_checkpoint"), "file:///r")
    assert int(code) == 6
    assert "start fresh" in what and "new name" in what and "run again" not in what


def test_one_line_message_keeps_the_head_and_the_traceback_whole() -> None:
    from trainer.errors import UserCodeError

    tb = "Traceback (most recent call last):\n" + "".join(
        f'  File "user.py", line {i}, in f{i}\n' for i in range(2000)
    )
    c = classify(WorkerGroupError({0: wrap(UserCodeError("fit", "ValueError('bad')", tb))}))
    assert c.message == "rank 0: UserCodeError: error in user code (fit): ValueError('bad')"
    assert c.user_traceback == tb


def _coordinator(tmp_path: Path, runner: FakeRunner) -> Coordinator:
    spec = parse_spec(
        {**BASE, "epochs": 2, "storage": f"file://{tmp_path}/runs", "failures": {"backoff_s": 0}},
        working_dir=str(ROOT),
    )
    opts = CoordinatorOptions(lease_ttl_s=10, lease_renew_s=5, backoff_override_s=0)
    return Coordinator(spec, opts, runner)


def test_finished_shortcut_verifies_the_final_checkpoint(tmp_path: Path) -> None:
    runner = FakeRunner([([30], None)])
    c = _coordinator(tmp_path, runner)
    commit(c.location, 10)
    commit(c.location, 20, finished=True)
    final = CheckpointStore(c.location).manifest(20)
    corrupt_file(c.location.fs, f"{c.location.step_dir(20)}/{final.file_path('ckpt.index')}")
    c.start()
    c.run()
    c.close()
    assert c.state.kind is RunState.SUCCEEDED
    assert len(runner.calls) == 1  # not declared SUCCEEDED from the flag: it trained again


def test_finished_shortcut_with_a_good_final_checkpoint_succeeds_at_once(tmp_path: Path) -> None:
    runner = FakeRunner([])
    c = _coordinator(tmp_path, runner)
    commit(c.location, 20, finished=True)
    c.start()
    c.run()
    c.close()
    assert c.state.kind is RunState.SUCCEEDED and runner.calls == []


def test_lease_released_when_start_up_fails_after_taking_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    c = _coordinator(tmp_path, FakeRunner([]))

    def broken(*args: object, **kwargs: object) -> None:
        raise OSError("disk went away")

    with monkeypatch.context() as patch:  # the first event after the lease was taken fails
        patch.setattr(RunRecord, "append_event", broken)
        with pytest.raises(OSError):
            c.start()
    again = _coordinator(tmp_path, FakeRunner([]))
    assert again.start().kind is RunState.PENDING  # not LeaseHeldError
    again.close()
    assert RunLocation.from_url(again.run_url).fs.exists(again.location.lease_path)
