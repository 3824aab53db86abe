"""Which Ray a driver uses: --address, RAY_ADDRESS, a live `ray start` head on its node, or its own.

The local head is stood in for by its address file and a real listening socket: what the driver
probes (a dead head leaves the file behind and its port closed).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from cluster.ray.address import choose_address, local_head_address


@pytest.fixture
def listener() -> Iterator[str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        yield f"127.0.0.1:{s.getsockname()[1]}"


def _closed_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{s.getsockname()[1]}"  # nothing listens once it is closed


def _env(tmp_path: Path, address: str | None, **extra: str) -> dict[str, str]:
    if address is not None:
        (tmp_path / "ray").mkdir(exist_ok=True)
        (tmp_path / "ray" / "ray_current_cluster").write_text(address + "\n")
    return {"RAY_TMPDIR": str(tmp_path), **extra}


def test_an_explicit_address_then_ray_address_win(tmp_path: Path, listener: str) -> None:
    env = _env(tmp_path, listener, RAY_ADDRESS="10.0.0.1:6379")
    assert choose_address("ray://head:10001", env) == ("ray://head:10001", "--address")
    assert choose_address(None, env) == ("10.0.0.1:6379", "RAY_ADDRESS")


def test_a_live_local_head_is_joined(tmp_path: Path, listener: str) -> None:
    env = _env(tmp_path, listener)
    assert local_head_address(env) == listener
    address, source = choose_address(None, env)
    assert address == listener and "ray start" in source


def test_a_dead_heads_address_file_is_ignored(tmp_path: Path) -> None:
    env = _env(tmp_path, _closed_port())
    assert local_head_address(env) is None
    assert choose_address(None, env) == (None, "embedded")


def test_no_address_file_or_opted_out_is_embedded(tmp_path: Path, listener: str) -> None:
    assert choose_address(None, _env(tmp_path, None)) == (None, "embedded")
    env = _env(tmp_path, listener, SPOTRAIN_JOIN_LOCAL_RAY="0")
    assert choose_address(None, env) == (None, "embedded")
    assert choose_address(None, {**_env(tmp_path, "garbage"), "RAY_ADDRESS": ""}) == (
        None,
        "embedded",
    )
