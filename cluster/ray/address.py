"""Which Ray a driver uses: the one it is told to join, a live one on its node, or its own.

In order: ``--address``; ``RAY_ADDRESS`` (set under ``ray job submit``); the head a ``ray start``
left running on this node (its GCS address is in ``<ray temp dir>/ray_current_cluster``, the
file Ray's own ``ray.init()`` reads), when its GCS port answers; otherwise None: an embedded Ray
(``ray.init(address="local")``). A killed head leaves that file behind, and a plain ``ray.init()``
would then try to join the dead cluster; the port probe tells a dead head from a live one in
milliseconds. ``SPOTRAIN_JOIN_LOCAL_RAY=0`` turns the local look-up off.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Mapping

from cluster import constants

__all__ = ["choose_address", "local_head_address"]


def _ray_temp_dir(environ: Mapping[str, str]) -> str:
    """Ray's default temp dir (``RAY_TMPDIR``, else ``TMPDIR`` on Linux, else ``/tmp``) + ray."""
    if environ.get("RAY_TMPDIR"):
        base = environ["RAY_TMPDIR"]
    elif sys.platform.startswith("linux") and environ.get("TMPDIR"):
        base = environ["TMPDIR"]
    else:
        base = "/tmp"
    return os.path.join(base, "ray")


def _answers(address: str, timeout_s: float) -> bool:
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout_s):
            return True
    except (OSError, ValueError):
        return False


def local_head_address(
    environ: Mapping[str, str] | None = None, timeout_s: float = 0.5
) -> str | None:
    """The GCS address of a live ``ray start`` head on this node, or None."""
    environ = os.environ if environ is None else environ
    try:
        with open(os.path.join(_ray_temp_dir(environ), "ray_current_cluster")) as f:
            address = f.read().strip()
    except OSError:
        return None
    return address if address and _answers(address, timeout_s) else None


def choose_address(
    explicit: str | None, environ: Mapping[str, str] | None = None
) -> tuple[str | None, str]:
    """(address to join or None for an embedded Ray, where it came from)."""
    environ = os.environ if environ is None else environ
    if explicit:
        return explicit, "--address"
    if environ.get("RAY_ADDRESS"):
        return environ["RAY_ADDRESS"], "RAY_ADDRESS"
    if environ.get(constants.JOIN_LOCAL_RAY_ENV, "1") != "0":
        local = local_head_address(environ)
        if local is not None:
            return local, "the live Ray head on this node (ray start)"
    return None, "embedded"
