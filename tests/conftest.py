"""Shared fixtures: a real S3 server (SeaweedFS) for the whole session, and storage backends.

``run_url`` is parametrized over local files, ``memory://`` and SeaweedFS S3, so every storage
test using it runs on all three. The server starts only when an ``s3`` test needs it (a few
seconds); if it cannot start, the tests fail with its log (nothing is skipped).
"""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# Ray must bind to loopback on this machine; Ray reads this at import, so set it first.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
# A `ray start` head another test (or user) left on this machine is never joined by a test's
# embedded `spotrain run` (inherited by the drivers the tests start); tests that join say so.
os.environ.setdefault("SPOTRAIN_JOIN_LOCAL_RAY", "0")

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # lets tests import tests.fakes with plain `pytest` too
    sys.path.insert(0, str(ROOT))

from storage.retry import RetryOptions  # noqa: E402
from storage.testing.seaweed import SeaweedServer, SeaweedStartError  # noqa: E402

BACKENDS = ("file", "memory", "s3")

#: Retries shrunk so fault tests take milliseconds.
FAST_RETRY = RetryOptions(attempts=4, initial_backoff_s=0.001, max_backoff_s=0.005)


@pytest.fixture(scope="session")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedServer]:
    """A SeaweedFS server (S3 on loopback, static keys, one bucket) for the session."""
    try:
        server = SeaweedServer.start(tmp_path_factory.mktemp("seaweed"))
    except SeaweedStartError as exc:
        pytest.fail(f"SeaweedFS did not start: {exc}", pytrace=False)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def storage_options(backend: str, request: pytest.FixtureRequest) -> dict[str, Any]:
    """fsspec options for ``backend`` (the S3 server's keys and endpoint for ``s3``)."""
    if backend == "s3":
        server: SeaweedServer = request.getfixturevalue("seaweed")
        return dict(server.storage_options)
    return {}


@pytest.fixture
def run_url(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> str:
    """A fresh, empty run URL on each backend (file, memory, s3)."""
    unique = uuid.uuid4().hex[:12]
    if backend == "file":
        return f"file://{tmp_path}/runs/run-{unique}"
    if backend == "memory":
        return f"memory://spotrain-tests/{unique}/run"
    server: SeaweedServer = request.getfixturevalue("seaweed")
    return f"s3://{server.bucket}/{unique}/run"


@pytest.fixture(scope="module", autouse=True)
def no_ray_left_connected() -> Iterator[None]:
    """A module that leaves this process connected to a Ray makes the next module's
    ``ray.init`` fail ("called ray.init twice"): it errors here, at its own teardown."""
    yield
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        ray.shutdown()
        pytest.fail("this test module left the test process connected to Ray", pytrace=False)
