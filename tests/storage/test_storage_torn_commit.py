"""A writer SIGKILLed mid-commit leaves nothing readers can see; the step can be redone.

The child pauses at a named point of CheckpointStore.commit (tests.storage.commit_pause patches
the real upload and manifest functions) and signals it reached it by creating a file, so the kill
lands exactly there, not by timing luck.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from storage.checkpoints import CheckpointStore, StoreOptions
from storage.run_record import RunRecord
from tests.conftest import FAST_RETRY
from tests.storage.helpers import make_checkpoint, read_tree

MiB = 2**20
BIG = {f"shard-{i}.bin": 4 * MiB for i in range(4)}  # 16 MiB in 4 files

CHILD = """
import json, sys
from storage.checkpoints import CheckpointStore, StoreOptions
from tests.storage.commit_pause import install
install(sys.argv[4], sys.argv[5])
store = CheckpointStore(sys.argv[1], json.loads(sys.argv[2]), StoreOptions(concurrency=1))
store.commit(2, sys.argv[3], {"step": 2})
print("COMMITTED")
"""


def _wait_for(path: Path, proc: subprocess.Popen[bytes], timeout_s: float = 60) -> None:
    """Wait until the child reports the pause point (a condition, not a timed guess)."""
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            pytest.fail(f"child exited ({proc.returncode}) before {path.name}:\n{out}")
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"child never reached {path.name}")
        time.sleep(0.01)


def _files(store: CheckpointStore, step: int) -> list[str]:
    store.fs.invalidate_cache()
    found = store.fs.find(store.loc.step_dir(step), detail=True)
    return sorted(p.rsplit("/", 1)[-1] for p, i in found.items() if i.get("type") == "file")


@pytest.mark.parametrize("point", ["after_files:1", "before_manifest"])
def test_sigkill_mid_commit(
    point: str, run_url: str, storage_options: dict[str, Any], backend: str, tmp_path: Path
) -> None:
    store = CheckpointStore(run_url, storage_options, StoreOptions(retry=FAST_RETRY))
    good = make_checkpoint(tmp_path / "c1", {"w.bin": 1000})
    store.commit(1, tmp_path / "c1", {"step": 1})
    big = make_checkpoint(tmp_path / "c2", BIG)

    if backend == "memory":
        # memory:// lives inside one process, so a killed writer cannot be observed from
        # another: leave the exact torn state a kill would (files, no manifest) instead.
        n = 1 if point == "after_files:1" else len(BIG)
        for rel in sorted(BIG)[:n]:
            store.fs.pipe_file(f"{store.loc.step_dir(2)}/{rel}", big[rel])
    else:
        flags = tmp_path / "flags"
        flags.mkdir()
        proc = subprocess.Popen(
            [
                sys.executable,
                "-c",
                CHILD,
                run_url,
                json.dumps(storage_options),
                str(tmp_path / "c2"),
                point,
                str(flags),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        _wait_for(flags / f"{point}.reached", proc)
        os.kill(proc.pid, signal.SIGKILL)
        assert proc.wait(30) == -signal.SIGKILL

    written = _files(store, 2)
    if point == "after_files:1":
        assert 1 <= len(written) < len(BIG)  # killed between files
    else:
        assert written == sorted(BIG)  # every file there, the manifest not

    # readers behave as if step 2 never began
    assert store.committed_steps() == [1]
    latest = store.latest()
    assert latest is not None and latest.step == 1
    assert store.restore(tmp_path / "out").step == 1
    assert read_tree(tmp_path / "out") == good
    assert RunRecord(run_url, storage_options).events(["checkpoint_corrupt"]) == []

    # the same step commits fine afterwards, replacing the leftovers
    store.commit(2, tmp_path / "c2", {"step": 2})
    assert store.committed_steps() == [1, 2]
    assert store.restore(tmp_path / "out2").step == 2
    assert read_tree(tmp_path / "out2") == big
