"""The driver's spare watcher never starts a Ray of its own."""

import os

os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback only; before ray

import ray

from cluster.ray.node_spares import NodeSpares


def test_a_watcher_polled_without_ray_does_not_start_one():
    """Ray's runtime-context and KV calls start a local Ray when none is connected: a watcher
    left polling after a shutdown must not (seen in the test process: every later ``ray.init``
    then failed with "called ray.init twice")."""
    assert not ray.is_initialized()
    assert NodeSpares(count=1, keep_alive_s=1).poll() == []
    assert not ray.is_initialized()
