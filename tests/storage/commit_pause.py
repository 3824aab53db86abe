"""Pause a checkpoint commit at a named point, so a test can SIGKILL the process right there.

Patches real functions of storage (no hook in product code): ``after_files:<k>`` pauses once
k files are uploaded (``FileTransfer.put_file``), ``before_manifest`` just before the manifest
is written (``CheckpointStore._write_manifest``). At the point it creates
``<flag_dir>/<point>.reached`` and waits there (up to 10 minutes) to be killed.

In a child process: ``install(point, flag_dir)``; or run a module under it with
``SPOTRAIN_TEST_COMMIT_PAUSE=<point>@<flag_dir> python -m tests.storage.commit_pause MODULE ARGS``.
"""

from __future__ import annotations

import os
import runpy
import sys
import threading
import time
from pathlib import Path
from typing import Any

from storage.checkpoints import CheckpointStore
from storage.transfer import FileTransfer

PAUSE_ENV = "SPOTRAIN_TEST_COMMIT_PAUSE"
POINTS = ("after_files:<k>", "before_manifest")


def _wait_here(flag_dir: Path, point: str) -> None:
    Path(flag_dir, f"{point}.reached").touch()
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:  # waits to be killed by the test
        time.sleep(0.05)


def install(point: str, flag_dir: str | os.PathLike[str]) -> None:
    """Make every later commit in this process pause at ``point`` (see the module docstring)."""
    flags = Path(flag_dir)
    if point == "before_manifest":
        write_manifest = CheckpointStore._write_manifest

        def paused_write(self: CheckpointStore, *args: Any, **kwargs: Any) -> Any:
            _wait_here(flags, point)
            return write_manifest(self, *args, **kwargs)

        CheckpointStore._write_manifest = paused_write  # type: ignore[method-assign]
        return
    name, _, k = point.partition(":")
    if name != "after_files" or not k.isdigit():
        raise ValueError(f"pause point={point!r}; fix: use one of {POINTS}")
    put_file = FileTransfer.put_file
    done = [0]
    lock = threading.Lock()

    def counted_put(self: FileTransfer, *args: Any, **kwargs: Any) -> Any:
        got = put_file(self, *args, **kwargs)
        with lock:
            done[0] += 1
            n = done[0]
        if n == int(k):
            _wait_here(flags, point)
        return got

    FileTransfer.put_file = counted_put  # type: ignore[method-assign]


def main() -> None:
    """``python -m tests.storage.commit_pause MODULE ARGS``: install from PAUSE_ENV, run MODULE."""
    raw = os.environ.get(PAUSE_ENV, "")
    point, _, flag_dir = raw.partition("@")
    if point and flag_dir:
        install(point, flag_dir)
    module, sys.argv = sys.argv[1], sys.argv[1:]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
