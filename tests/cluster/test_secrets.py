"""No secret from a nested storage option, a URL's user info or a misspelt field appears in
anything spotrain writes (the run folder, on the SeaweedFS S3 server) or prints."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest
import s3fs
import yaml

from cluster.cli import main
from cluster.coordinator import Coordinator, CoordinatorOptions
from cluster.errors import SpecError
from cluster.spec import parse_spec
from cluster.state import RunState
from storage.redaction import MASK, redact, redact_text
from storage.testing.seaweed import SeaweedServer

from .fakes import FakeRunner

ROOT = Path(__file__).resolve().parents[2]
TOY = ROOT / "tests" / "trainer" / "toy_job.py"
PROXY_PASSWORD = "proxy-pw-" + uuid.uuid4().hex[:8]
URL_PASSWORD = "url-pw-" + uuid.uuid4().hex[:8]


def secret_options(server: SeaweedServer) -> dict[str, Any]:
    """The server's real credentials, nested in client_kwargs; a proxy URL with user info."""
    return {
        "client_kwargs": {
            "endpoint_url": server.storage_options["endpoint_url"],
            "region_name": "us-east-1",
            "aws_access_key_id": server.access_key,
            "aws_secret_access_key": server.secret_key,
        },
        # used for https only: the loopback endpoint is http, so the proxy is never dialled
        "config_kwargs": {"proxies": {"https": f"http://puser:{PROXY_PASSWORD}@127.0.0.1:9"}},
    }


def secrets_of(server: SeaweedServer) -> list[str]:
    return [server.access_key, server.secret_key, PROXY_PASSWORD, URL_PASSWORD]


def everything_written(server: SeaweedServer, prefix: str) -> str:
    fs = s3fs.S3FileSystem(**server.storage_options)
    fs.invalidate_cache()
    paths = fs.find(f"{server.bucket}/{prefix}")
    assert paths, "nothing was written"
    return "\n".join(p + "\n" + fs.cat_file(p).decode(errors="replace") for p in paths)


def assert_no_secret(text: str, server: SeaweedServer) -> None:
    for secret in secrets_of(server):
        assert secret not in text, f"secret {secret[:4]}... leaked"


def test_one_redaction_masks_nested_keys_url_user_info_and_keeps_safe_keys() -> None:
    data = {
        "client_kwargs": {"aws_secret_access_key": "S", "endpoint_url": "http://u:pw@h:1/x"},
        "token": {"a": 1},
        "key_prefix": "runs/",
        "anon": False,
        "proxies": ["http://a:b@p:1"],
    }
    assert redact(data) == {
        "client_kwargs": {"aws_secret_access_key": MASK, "endpoint_url": "http://***@h:1/x"},
        "token": MASK,
        "key_prefix": "runs/",
        "anon": False,
        "proxies": ["http://***@p:1"],
    }
    assert redact_text("see s3://AK:SK@bucket/run") == "see s3://***@bucket/run"


def test_spec_errors_name_the_field_not_the_secret(capsys: pytest.CaptureFixture[str]) -> None:
    raw = {"name": "x", "model": f"{TOY}:build_model", "data": f"{TOY}:make_dataset"}
    with pytest.raises(SpecError) as info:
        parse_spec({**raw, "storage_option": {"key": "KEYVALUE1", "secret": "SECRETVALUE1"}})
    assert "'storage_option'" in str(info.value)
    assert "KEYVALUE1" not in str(info.value) and "SECRETVALUE1" not in str(info.value)
    with pytest.raises(SpecError) as info:
        parse_spec({**raw, "storage": 5, "storage_options": {"secret": "SECRETVALUE2"}})
    assert "SECRETVALUE2" not in str(info.value)


def test_the_record_of_a_run_holds_no_secret(
    seaweed: SeaweedServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Through the coordinator (fake attempts: commits, then an error that quotes the URL)."""
    prefix = uuid.uuid4().hex[:10]
    raw = {
        "name": "secret-run",
        "model": f"{TOY}:build_model",
        "data": f"{TOY}:make_dataset",
        "storage": f"s3://{seaweed.bucket}/{prefix}",
        "storage_options": secret_options(seaweed),
        "failures": {"max_failures": 0, "backoff_s": 0},
    }
    spec = parse_spec(raw)
    leak = OSError(f"cannot reach s3://puser:{URL_PASSWORD}@host/x with {seaweed.secret_key}")
    runner = FakeRunner([([5], leak)])
    c = Coordinator(spec, CoordinatorOptions(lease_ttl_s=10, lease_renew_s=5), runner)
    c.start()
    c.run()
    c.close()
    assert c.state.kind is RunState.FAILED
    written = everything_written(seaweed, prefix)
    assert "run.json" in written and "client_kwargs" in written
    assert_no_secret(written, seaweed)
    assert main(["status", f"s3://{seaweed.bucket}/{prefix}/secret-run", "--json"]) in (0, 3, 4)
    # status without the options cannot read the bucket: its error line holds no secret either
    out = capsys.readouterr()
    assert_no_secret(out.out + out.err, seaweed)


@pytest.mark.e2e
@pytest.mark.slow
def test_a_real_run_writes_and_prints_no_secret(seaweed: SeaweedServer, tmp_path: Path) -> None:
    """``spotrain run`` (real Ray, real TensorFlow) with the credentials nested in
    ``client_kwargs`` and a proxy URL with user info; then status and checkpoints."""
    prefix = uuid.uuid4().hex[:10]
    job = tmp_path / "job.yaml"
    spec = {
        "name": "secret-e2e",
        "model": f"{TOY}:build_model",
        "data": f"{TOY}:make_dataset",
        "epochs": 1,
        "global_batch_size": 16,
        "storage": f"s3://{seaweed.bucket}/{prefix}",
        "storage_options": secret_options(seaweed),
        "scaling": {"workers": 1},
        "config": {"lr_mode": "plateau"},
    }
    job.write_text(yaml.safe_dump(spec))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    printed = ""
    for args in (["run", str(job)], ["status", str(job)], ["checkpoints", str(job)]):
        proc = subprocess.run(
            [sys.executable, "-m", "cluster", *args],
            capture_output=True,
            text=True,
            timeout=600,
            cwd=tmp_path,
            env=env,
        )
        printed += proc.stdout + proc.stderr
        assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCEEDED" in printed
    assert_no_secret(printed, seaweed)
    assert_no_secret(everything_written(seaweed, prefix), seaweed)
