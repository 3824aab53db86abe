"""Pin what the S3 stack here does with conditional writes (the lease's S3 backend relies on it).

If one of these starts failing after an upgrade, re-check the guarantees documented in
storage/lease.py.
"""

from __future__ import annotations

import pytest
import s3fs
from botocore.exceptions import ClientError

from storage.testing.seaweed import SeaweedServer


def test_seaweedfs_honours_if_none_match_and_if_match(seaweed: SeaweedServer) -> None:
    client = seaweed._client()
    b, key = seaweed.bucket, "pins/cond"
    client.put_object(Bucket=b, Key=key, Body=b"1", IfNoneMatch="*")
    with pytest.raises(ClientError) as info:
        client.put_object(Bucket=b, Key=key, Body=b"2", IfNoneMatch="*")
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"
    etag = client.head_object(Bucket=b, Key=key)["ETag"]
    with pytest.raises(ClientError):
        client.put_object(Bucket=b, Key=key, Body=b"3", IfMatch='"0123456789abcdef"')
    client.put_object(Bucket=b, Key=key, Body=b"4", IfMatch=etag)
    assert client.get_object(Bucket=b, Key=key)["Body"].read() == b"4"


def test_s3fs_create_mode_error_is_not_file_exists_on_seaweedfs(seaweed: SeaweedServer) -> None:
    """SeaweedFS's 412 carries no Condition field, so s3fs maps it to OSError(EINVAL), not
    FileExistsError: callers must look at the ClientError cause (lease_backends.py does)."""
    fs = s3fs.S3FileSystem(**seaweed.storage_options)
    path = f"{seaweed.bucket}/pins/create"
    fs.pipe_file(path, b"1", mode="create")
    with pytest.raises(OSError) as info:
        fs.pipe_file(path, b"2", mode="create")
    assert not isinstance(info.value, FileExistsError)
    assert isinstance(info.value.__cause__, ClientError)
    assert fs.cat_file(path) == b"1"


def test_seaweedfs_keeps_empty_prefixes_after_delete(seaweed: SeaweedServer) -> None:
    """Deleting every object under a prefix leaves the prefix listed as a directory, so
    storage checks "no files under it", never "does not exist"."""
    fs = s3fs.S3FileSystem(**seaweed.storage_options)
    d = f"{seaweed.bucket}/pins/dir"
    fs.pipe_file(f"{d}/x", b"1")
    fs.rm(d, recursive=True)
    fs.invalidate_cache()
    files = [p for p, i in fs.find(d, detail=True).items() if i["type"] == "file"]
    assert files == []


def test_start_failure_reports_the_log(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from storage.testing.seaweed import SeaweedStartError

    fake = tmp_path / "weed"
    fake.write_text("#!/bin/sh\necho 'bind: address already in use' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("SPOTRAIN_WEED_BIN", str(fake))
    with pytest.raises(SeaweedStartError, match=r"(?s)exited with code 3.*address already in use"):
        SeaweedServer.start(tmp_path / "sw", timeout_s=10)
    monkeypatch.setenv("SPOTRAIN_WEED_BIN", str(tmp_path / "missing"))
    with pytest.raises(SeaweedStartError, match="SPOTRAIN_WEED_BIN"):
        SeaweedServer.start(tmp_path / "sw2", timeout_s=10)


def test_a_commit_without_payload_signing_restores_on_seaweedfs(
    seaweed: SeaweedServer, tmp_path
) -> None:
    """The README's option for plain-http endpoints: botocore then sends UNSIGNED-PAYLOAD
    instead of hashing every body for the signature; SeaweedFS accepts it, and the checkpoint
    verifies (size and sha256 of every file) on restore."""
    from storage.checkpoints import CheckpointStore

    options = {
        **seaweed.storage_options,
        "config_kwargs": {"s3": {"payload_signing_enabled": False}},
    }
    src = tmp_path / "src"
    src.mkdir()
    (src / "ckpt.data-00000-of-00001").write_bytes(bytes(range(256)) * 4096)
    (src / "ckpt.index").write_bytes(b"index")
    store = CheckpointStore(f"s3://{seaweed.bucket}/pins/unsigned", options)
    store.commit(5, src, {"epoch": 1})
    got = CheckpointStore(f"s3://{seaweed.bucket}/pins/unsigned", options).restore(tmp_path / "dst")
    assert got.step == 5
    assert (tmp_path / "dst" / "ckpt.data-00000-of-00001").read_bytes() == (
        src / "ckpt.data-00000-of-00001"
    ).read_bytes()


@pytest.mark.parametrize("bucket", ["b", "Bench", "-bench", "bench_data", "x" * 64])
def test_a_bucket_name_s3_refuses_fails_before_the_server_starts(tmp_path, bucket: str) -> None:
    """SeaweedFS refuses such a bucket until the start-up timeout (60 s): fail at once."""
    with pytest.raises(ValueError, match="not a valid S3 bucket name"):
        SeaweedServer.start(tmp_path, bucket=bucket)
    assert not any(tmp_path.iterdir())  # nothing was started
