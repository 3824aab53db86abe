from __future__ import annotations

import logging
import pickle

import pytest

from storage.errors import (
    InvalidNameError,
    LeaseHeldError,
    NoValidCheckpointError,
    PermanentStorageError,
    SpotrainError,
    TransientStorageError,
)
from storage.location import (
    RunLocation,
    join_run_url,
    redact_url,
    validate_name,
    validate_relpath,
    validate_step,
)


@pytest.mark.parametrize("name", ["digits-mlp", "a", "run_1.v2", "0abc"])
def test_valid_names(name: str) -> None:
    assert validate_name(name) == name
    assert join_run_url("file://./runs/", name) == f"file://./runs/{name}"


@pytest.mark.parametrize(
    "name", ["", "..", "a/b", "a\\b", "/abs", "../x", "a..b", "UPPER", ".hidden", "x" * 200, 5]
)
def test_invalid_names(name: object) -> None:
    with pytest.raises(InvalidNameError, match="fix:"):
        validate_name(name)  # type: ignore[arg-type]
    if isinstance(name, str):
        with pytest.raises(InvalidNameError):
            join_run_url("s3://bucket/runs", name)


@pytest.mark.parametrize("step", [-1, 10**12, 1.0, "3", True, None])
def test_invalid_steps(step: object) -> None:
    with pytest.raises(InvalidNameError, match="step="):
        validate_step(step)


def test_valid_steps() -> None:
    assert validate_step(0) == 0
    assert validate_step(10**12 - 1) == 10**12 - 1


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a//b", "a/./b", "C:/x", "a\\b", ""])
def test_invalid_relpaths(path: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_relpath(path)


def test_run_location_paths(tmp_path) -> None:
    loc = RunLocation.from_url(f"file://{tmp_path}/runs/r1")
    assert loc.root == f"{tmp_path}/runs/r1"
    assert loc.run_json.endswith("/r1/run.json")
    assert loc.events_dir.endswith("/r1/events")
    assert loc.lease_path.endswith("/r1/lease.json")
    assert loc.step_dir(42).endswith("/r1/checkpoints/000000000042")
    assert loc.is_local
    bare = RunLocation.from_url(str(tmp_path / "runs" / "r1"))
    assert bare.root == loc.root


@pytest.mark.parametrize("url", ["", "file:///", "/", "memory://", "file:///a/../b"])
def test_run_location_refuses_roots(url: str) -> None:
    with pytest.raises(InvalidNameError):
        RunLocation.from_url(url)


def test_redact_url() -> None:
    assert redact_url("s3://AKIA:SECRETX@bucket/run") == "s3://***@bucket/run"
    out = redact_url("https://host/path?X-Amz-Signature=abc123&X-Amz-Credential=cred&a=1")
    assert "abc123" not in out and "cred" not in out and "a=1" in out
    assert redact_url("/plain/path") == "/plain/path"
    # nothing to mask: the URL exactly as given (status --json shows it)
    for url in ("memory:///x/run", "FILE:///tmp/run", "s3://b/r?versionId=1&a", "file://./runs/x"):
        assert redact_url(url) == url


def test_redact_text_masks_storage_option_secrets() -> None:
    opts = {
        "key": "AKIAEXAMPLE",
        "secret": "s3cr3t-value",
        "client_kwargs": {"aws_session_token": "tok-123"},
    }
    text = "failed with key AKIAEXAMPLE secret s3cr3t-value token tok-123 at s3://u:p@b/x"
    out = RunLocation.from_url("memory://x/run", opts).redact(text)
    for s in ("AKIAEXAMPLE", "s3cr3t-value", "tok-123", "u:p@"):
        assert s not in out


def test_location_never_exposes_secrets_in_url(tmp_path) -> None:
    loc = RunLocation.from_url("memory://u:pw-secret@x/run", {"secret": "abcdef-secret"})
    assert "pw-secret" not in loc.url
    assert loc.redact("oops abcdef-secret") == "oops ***"


def test_errors_pickle_and_flags() -> None:
    errs: list[SpotrainError] = [
        TransientStorageError("t", "s3://b/r"),
        PermanentStorageError("p", "s3://b/r"),
        NoValidCheckpointError("n", "s3://b/r", [3, 2]),
        LeaseHeldError("l", "s3://b/r", "host:1", 123.0),
    ]
    for e in errs:
        e2 = pickle.loads(pickle.dumps(e))
        assert type(e2) is type(e) and str(e2) == str(e) and e2.url == e.url  # type: ignore[attr-defined]
    assert errs[0].retryable and not errs[1].retryable
    held = pickle.loads(pickle.dumps(errs[3]))
    assert held.holder == "host:1" and held.expires_at == 123.0
    assert pickle.loads(pickle.dumps(errs[2])).tried == (3, 2)


def test_permanent_error_message_is_redacted(tmp_path, caplog: pytest.LogCaptureFixture) -> None:
    """A failing backend whose error text carries the secret: neither message nor log shows it."""
    import fsspec

    from storage.checkpoints import CheckpointStore, StoreOptions
    from tests.conftest import FAST_RETRY
    from tests.fakes import FaultyFileSystem
    from tests.storage.helpers import make_checkpoint

    secret = "very-secret-key-123"
    fs = FaultyFileSystem(fsspec.filesystem("memory"))
    fs.fail("put_file", lambda: PermissionError(f"denied for secret={secret}"), times=None)
    store = CheckpointStore(
        "memory://redact/run",
        {"secret": secret},
        StoreOptions(retry=FAST_RETRY),
        fs=fs,
    )
    make_checkpoint(tmp_path / "ck")
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PermanentStorageError) as info:
        store.commit(1, tmp_path / "ck", {})
    assert secret not in str(info.value)
    assert "fix:" in str(info.value)
    assert secret not in caplog.text


def test_check_writable(run_url: str, storage_options: dict) -> None:
    loc = RunLocation.from_url(run_url, storage_options)
    loc.check_writable()
    loc.fs.invalidate_cache()
    assert [p for p in loc.fs.find(loc.root) if ".spotrain-probe" in p] == []


def test_check_writable_refused(seaweed) -> None:
    loc = RunLocation.from_url(
        "s3://no-such-bucket-probe/run", dict(seaweed.storage_options, secret="bad-secret-zzz")
    )
    with pytest.raises(PermanentStorageError) as info:
        loc.check_writable()
    assert "bad-secret-zzz" not in str(info.value)


def test_split_checkpoint_path_is_the_one_step_parser() -> None:
    loc = RunLocation.from_url("memory://x/run")
    step_dir = loc.step_dir(42)
    assert loc.split_checkpoint_path(step_dir) == (42, "")
    assert loc.split_checkpoint_path(step_dir + "/") == (42, "")
    assert loc.split_checkpoint_path(loc.manifest_path(42)) == (42, "MANIFEST.json")
    assert loc.split_checkpoint_path(step_dir + "/a/b.bin") == (42, "a/b.bin")
    assert loc.split_checkpoint_path(loc.checkpoints_dir + "/42/x") is None
    assert loc.split_checkpoint_path(loc.checkpoints_dir + "/tmp-000000000001/x") is None
    assert loc.split_checkpoint_path(loc.run_json) is None


def test_storage_classes_take_one_run_location(
    run_url: str, storage_options: dict, tmp_path
) -> None:
    from storage.checkpoints import CheckpointStore, StoreOptions
    from storage.lease import Lease
    from storage.run_record import RunRecord
    from tests.conftest import FAST_RETRY
    from tests.storage.helpers import make_checkpoint

    loc = RunLocation.from_url(run_url, storage_options)
    store = CheckpointStore(loc, options=StoreOptions(retry=FAST_RETRY))
    assert store.loc is loc and store.record.loc is loc
    assert RunRecord(loc).loc is loc
    assert Lease(loc, "host:1").loc is loc
    assert RunLocation.resolve(loc) is loc
    for make in (CheckpointStore, RunRecord, lambda *a, **k: Lease(a[0], "h", **k)):
        with pytest.raises(TypeError, match="already a RunLocation"):
            make(loc, storage_options={"anon": True})
    make_checkpoint(tmp_path / "c")
    store.commit(1, tmp_path / "c", {"step": 1})
    # the URL form still works and sees the same run
    assert CheckpointStore(run_url, storage_options).committed_steps() == [1]


def test_check_writable_below_a_file_is_permanent(tmp_path) -> None:
    (tmp_path / "runs").write_text("x")
    loc = RunLocation.from_url(f"file://{tmp_path}/runs/job")
    with pytest.raises(PermanentStorageError, match=r"write probe failed.*fix: ") as info:
        loc.check_writable()
    assert info.value.url == loc.url
    assert (tmp_path / "runs").read_text() == "x"


def test_run_location_pickles(tmp_path) -> None:
    loc = RunLocation.from_url(f"file://{tmp_path}/run", {"secret": "abcdef-secret"})
    again = pickle.loads(pickle.dumps(loc))
    assert (again.url, again.root, again.secrets) == (loc.url, loc.root, loc.secrets)
    again.check_writable()
