"""Deleting checkpoints safely: verified retention and the sweep of leftovers.

Both run through a :class:`storage.checkpoints.CheckpointStore` and so under its fence: every
delete is checked against the run's lease first (a stale writer deletes nothing). The decisions
(which steps, which folders) are pure functions in :mod:`storage.retention`.

Retention trusts only verified steps: a step counts as kept only when its manifest parses, its
digest holds, its paths are valid and the listed sizes match, and the newest kept step is also
fully checksummed. Unverified committed steps (torn, edited, truncated, ``../`` paths) are never
counted as kept; they are deleted with the rest. When no step verifies, nothing is deleted.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from storage.errors import CorruptCheckpointError
from storage.retention import (
    uncommitted_to_sweep,
    unreferenced_to_sweep,
    verified_steps_to_delete,
)

#: A :class:`storage.checkpoints.CheckpointStore` (which imports this module, not the reverse).
CheckpointStore = Any

logger = logging.getLogger(__name__)


def apply_retention(store: CheckpointStore, keep_last: int, keep_every: int = 0) -> list[int]:
    """Delete committed steps except the newest ``keep_last`` verified ones and, when
    ``keep_every`` > 0, every verified step divisible by ``keep_every``. Returns the deleted
    steps (ascending)."""
    listing = store._find(store.loc.checkpoints_dir, "list checkpoints")

    def verified(step: int, full: bool) -> bool:
        try:
            store.verify_step(step, full=full, listing=listing)
        except (CorruptCheckpointError, FileNotFoundError) as exc:
            logger.warning(
                "[run=%s step=%d] not counted by retention: %s",
                store.url,
                step,
                store.loc.redact(str(exc)),
            )
            return False
        return True

    deleted = verified_steps_to_delete(
        store._committed_in(listing), verified, keep_last, keep_every
    )
    for s in deleted:
        store.delete_step(s)
    if deleted:
        logger.info("[run=%s] retention deleted steps %s", store.url, deleted)
    return deleted


def sweep_uncommitted(store: CheckpointStore, min_age_s: float) -> list[int]:
    """Delete step directories that have no manifest, and commit folders inside committed steps
    that their manifest does not reference (a lost or killed concurrent commit), whose newest
    file is at least ``min_age_s`` old. Returns the swept (uncommitted) steps.

    The age threshold is what keeps this safe: a directory without a manifest may belong to a
    writer that is still uploading it, so it is only removed once nothing in it changed for
    longer than any commit takes. Directories with no readable modification time are left alone.
    """
    loc = store.loc
    listing = store._find(loc.checkpoints_dir, "list checkpoints")
    now = time.time()
    swept = uncommitted_to_sweep(loc, listing, now=now, min_age_s=min_age_s)
    for step in swept:
        store._check_fence(f"sweep of step {step}")
        store._rm(loc.step_dir(step), recursive=True)
    referenced = {}
    for step in store._committed_in(listing):
        with contextlib.suppress(CorruptCheckpointError, FileNotFoundError):
            referenced[step] = store.manifest(step).prefix
    folders = unreferenced_to_sweep(loc, listing, referenced, now=now, min_age_s=min_age_s)
    for step, name in folders:
        store._check_fence(f"sweep of step {step}")
        store._rm(f"{loc.step_dir(step)}/{name}", recursive=True)
    if swept or folders:
        logger.info(
            "[run=%s] swept uncommitted steps %s and leftover commit folders %s",
            store.url,
            swept,
            [f"{s}/{n}" for s, n in folders],
        )
    return swept
