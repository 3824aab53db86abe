"""The commit of one checkpoint step, one function per step of the protocol.

Works on object stores without atomic rename:

1. :func:`existing_step`: a second commit of an already committed step is a no-op that returns
   the existing manifest when that step verifies. A committed step is never deleted to be
   rewritten, so a step never vanishes for readers and a stale writer can never replace a newer
   writer's step (training is deterministic: the same step is the same state; first writer
   wins). A committed step that does *not* verify (torn, edited, truncated) is not a checkpoint
   anyone can restore: its manifest is removed (fenced) and the step is committed anew.
2. :func:`commit_new` uploads every file in parallel under a fresh per-commit folder
   ``<run>/checkpoints/<N:012d>/<commit>/`` (``commit`` = ``g<lease generation>-<random>``), so
   two commits of one step never write the same object; sha256 of each file is computed
   alongside (on real local files copy and hash are one pass per file).
3. :func:`check_uploaded`: the uploaded sizes are checked against one listing of the step.
4. :func:`write_manifest`: the fence is checked, then ``MANIFEST.json`` (files with size +
   sha256 relative to the commit folder, the folder's name as ``prefix``, the writer's
   generation, the caller's JSON state and a digest over all of it) is written **create-only**
   (local files: temp + ``os.link``; S3: ``If-None-Match: *``; memory: under a lock). That one
   write is the commit. When another commit of the step won, this one removes its own folder and
   returns the winner's manifest: two concurrent commits of one step leave one whole step.

A failure in steps 2-4 removes this commit's own folder (:func:`abandon`, best effort) and
raises a typed error; nothing is ever half-committed. A process killed before step 4 leaves an
unreferenced folder (or an uncommitted step directory) that readers ignore and the sweep
(:mod:`storage.pruning`) removes once older than its age threshold. Durability against a power
loss of the machine itself is the backend's.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from storage import events
from storage.errors import CorruptCheckpointError, SpotrainError
from storage.lease_backends import backend_for
from storage.manifest import FileEntry, Manifest
from storage.transfer import step_sizes

#: A :class:`storage.checkpoints.CheckpointStore` (which imports this module, not the reverse).
CheckpointStore = Any

logger = logging.getLogger(__name__)


def existing_step(store: CheckpointStore, step: int) -> Manifest | None:
    """Step 1: the verified manifest of an already committed ``step`` (None if there is
    none). A committed step that does not verify is un-committed (fenced) here."""
    try:
        m = store.verify_step(step)
    except FileNotFoundError:
        return None
    except CorruptCheckpointError as exc:
        store._check_fence(f"replacing corrupt step {step}")
        logger.warning(
            "[run=%s step=%d] committed step does not verify (%s); committing it anew",
            store.url,
            step,
            store.loc.redact(str(exc)),
        )
        store._rm(store.loc.manifest_path(step))  # its folders are swept later
        return None
    logger.info(
        "[run=%s step=%d] already committed (generation %s); keeping it",
        store.url,
        step,
        m.generation,
    )
    return m


def commit_prefix(store: CheckpointStore) -> str:
    gen = "x" if store.fence is None else str(store.fence.generation)
    return f"g{gen}-{uuid.uuid4().hex[:12]}"


def commit_new(
    store: CheckpointStore,
    step: int,
    root: Path,
    rels: list[str],
    state_json: str,
    report: Mapping[str, Any] | None = None,
    consume: bool = False,
) -> Manifest:
    t0 = time.monotonic()
    prefix = commit_prefix(store)
    folder = f"{store.loc.step_dir(step)}/{prefix}"
    try:
        hashes = store._transfer.put_files(root, rels, folder, consume)
        files = tuple(FileEntry(rel, *hashes[rel]) for rel in rels)
        check_uploaded(store, step, prefix, files)
        manifest = store._write_manifest(step, files, state_json, prefix)
    except Exception as exc:
        landed = _landed(store, step, prefix)
        if landed is None:
            abandon(store, step, folder, exc)
            raise
        manifest = landed  # the manifest write failed only in its answer: it is committed
    except BaseException as exc:
        abandon(store, step, folder, exc)
        raise
    if manifest is None:  # another commit of this step won: keep the winner's
        store._rm(folder, recursive=True)
        winner = store.verify_step(step)
        logger.info("[run=%s step=%d] a concurrent commit won; keeping it", store.url, step)
        return winner
    store._verified.add((step, manifest.digest))
    report_commit(store, manifest, time.monotonic() - t0, report)
    return manifest


def _landed(store: CheckpointStore, step: int, prefix: str) -> Manifest | None:
    """The committed manifest of ``step`` if it is this commit's (``prefix``), else None."""
    try:
        m = store.manifest(step)
    except Exception:  # absent, unreadable or unreachable: not known to be this commit's
        return None
    return m if m.prefix == prefix else None


def check_uploaded(
    store: CheckpointStore, step: int, prefix: str, files: tuple[FileEntry, ...]
) -> None:
    """Step 3: every uploaded file has its local size (one listing of the step)."""
    sizes = step_sizes(store.loc, store._find(store.loc.step_dir(step), "list uploaded"), step)
    for entry in files:
        got = sizes.get(f"{prefix}/{entry.path}")
        if got != entry.size:
            raise CorruptCheckpointError(
                f"uploaded {entry.path} has size {got} on {store.url}, expected "
                f"{entry.size}; the commit was abandoned",
                store.url,
            )


def write_manifest(
    store: CheckpointStore, step: int, files: tuple[FileEntry, ...], state_json: str, prefix: str
) -> Manifest | None:
    """Step 4, the commit: check the fence, then write ``MANIFEST.json`` create-only;
    return exactly what readers see, or None when another commit of the step won."""
    generation = None if store.fence is None else store.fence.generation
    data = Manifest(
        step=step,
        files=files,
        state=json.loads(state_json),
        prefix=prefix,
        generation=generation,
    ).to_json()
    manifest = Manifest.from_json(data)
    path = store.loc.manifest_path(step)
    store._check_fence(f"commit of step {step}")
    created = backend_for(store.loc, path, store._call, what="manifest").create(data)
    return None if created is None else manifest


def abandon(store: CheckpointStore, step: int, folder: str, exc: BaseException) -> None:
    """A failed commit: remove this commit's own folder (best effort; sweep catches the
    rest). Nothing else: the folder is unique to this commit and nobody references it."""
    logger.warning(
        "[run=%s step=%d] commit failed, removing the uncommitted upload: %s",
        store.url,
        step,
        store.loc.redact(str(exc)),
    )
    try:
        store._rm(folder, recursive=True)
    except SpotrainError as cleanup_exc:  # keep the original error; sweep will clean up
        logger.warning("[run=%s step=%d] cleanup failed: %s", store.url, step, cleanup_exc)


def report_commit(
    store: CheckpointStore,
    manifest: Manifest,
    elapsed: float,
    report: Mapping[str, Any] | None = None,
) -> None:
    """Log the commit and write its ``checkpoint_commit`` event; ``report``: the saver's own
    fields of it (``attempt``, ``blocked_s``, ``waited``; ``started``, a ``time.monotonic()``
    of this process, becomes ``commit_s``)."""
    extra = dict(report or {})
    started = extra.pop("started", None)
    if isinstance(started, int | float):
        extra["commit_s"] = round(time.monotonic() - started, 3)
    mib = manifest.total_bytes / 2**20
    logger.info(
        "[run=%s step=%d] committed %d files, %.1f MiB in %.2fs (%.0f MiB/s)",
        store.url,
        manifest.step,
        len(manifest.files),
        mib,
        elapsed,
        mib / elapsed if elapsed > 0 else 0.0,
    )
    store._event(
        events.write_checkpoint_commit,
        step=manifest.step,
        files=len(manifest.files),
        bytes=manifest.total_bytes,
        seconds=round(elapsed, 3),
        **extra,
    )
