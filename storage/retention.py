"""Which checkpoint steps to delete: retention of committed steps and the sweep of torn ones.

Pure decisions over step numbers and listings; :mod:`storage.pruning` does the listing, the
verifying and the (fenced) deleting.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

from storage.constants import MANIFEST_NAME
from storage.errors import CheckpointStateError
from storage.location import RunLocation


def _check_keep(keep_last: int, keep_every: int) -> None:
    if isinstance(keep_last, bool) or not isinstance(keep_last, int) or keep_last < 1:
        raise CheckpointStateError(
            f"keep_last={keep_last!r}; fix: keep at least 1 committed checkpoint"
        )
    if isinstance(keep_every, bool) or not isinstance(keep_every, int) or keep_every < 0:
        raise CheckpointStateError(f"keep_every={keep_every!r}; fix: use 0 (off) or > 0")


def steps_to_delete(steps: list[int], keep_last: int, keep_every: int = 0) -> list[int]:
    """Committed ``steps`` (ascending) outside the newest ``keep_last`` and, when
    ``keep_every`` > 0, not divisible by ``keep_every`` (no verification: see
    :func:`verified_steps_to_delete`)."""
    _check_keep(keep_last, keep_every)
    keep = set(steps[-keep_last:])
    if keep_every:
        keep |= {s for s in steps if s % keep_every == 0}
    return [s for s in steps if s not in keep]


def verified_steps_to_delete(
    steps: list[int],
    verified: Callable[[int, bool], bool],
    keep_last: int,
    keep_every: int = 0,
) -> list[int]:
    """Committed ``steps`` (ascending) to delete when only verified steps count.

    ``verified(step, full)`` says whether a step verifies (``full``: every file checksummed).
    Kept: the newest ``keep_last`` steps that verify, the newest of them fully, and, when
    ``keep_every`` > 0, every verifying step divisible by it. Every other committed step is
    deleted, unverified ones included. When no step verifies, nothing is deleted: the last
    verified checkpoint (if the check was wrong) is never lost.
    """
    _check_keep(keep_last, keep_every)
    good: list[int] = []  # newest first
    for s in reversed(steps):
        if not verified(s, False):
            continue
        if not good and not verified(s, True):
            continue
        good.append(s)
    if not good:
        return []
    keep = set(good[:keep_last])
    if keep_every:
        keep |= {s for s in good if s % keep_every == 0}
    return [s for s in steps if s not in keep]


def uncommitted_to_sweep(
    loc: RunLocation,
    listing: Mapping[str, Mapping[str, Any]],
    *,
    now: float,
    min_age_s: float,
) -> list[int]:
    """Steps of a detailed listing of ``loc.checkpoints_dir`` that have no manifest and whose
    newest file is at least ``min_age_s`` old. A step with any file of unknown modification
    time (neither in its info nor from ``loc.fs.modified``) is kept."""
    newest: dict[int, float | None] = {}
    committed = set()
    for p, info in listing.items():
        parsed = loc.split_checkpoint_path(p)
        if parsed is None or info.get("type") == "directory":
            continue
        step, rel = parsed
        if rel == MANIFEST_NAME:
            committed.add(step)
        t = mtime_of(info)
        if t is None:
            t = _modified(loc, p)
        prev = newest.get(step, 0.0)
        newest[step] = None if t is None or prev is None else max(prev, t)
    return [
        step
        for step, t in sorted(newest.items())
        if step not in committed and t is not None and now - t >= min_age_s
    ]


def mtime_of(info: Mapping[str, Any]) -> float | None:
    """Modification time (unix s) from an fsspec info dict of any backend we know."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "created", "modified"):
        value = info.get(key)
        if value is None:
            continue
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
            except ValueError:
                continue
    return None


def _modified(loc: RunLocation, path: str) -> float | None:
    try:
        return float(loc.fs.modified(path).timestamp())
    except (NotImplementedError, OSError, ValueError, AttributeError):
        return None


def unreferenced_to_sweep(
    loc: RunLocation,
    listing: Mapping[str, Mapping[str, Any]],
    referenced: Mapping[int, str],
    *,
    now: float,
    min_age_s: float,
) -> list[tuple[int, str]]:
    """``(step, name)`` of the top-level entries of committed steps that are neither the
    manifest nor the commit folder it references (``referenced``: step -> prefix), whose newest
    file is at least ``min_age_s`` old. Steps whose files lie in the step directory itself
    (prefix "", format 1) are left alone, and so is anything of unknown age."""
    newest: dict[tuple[int, str], float | None] = {}
    for p, info in listing.items():
        parsed = loc.split_checkpoint_path(p)
        if parsed is None or info.get("type") == "directory":
            continue
        step, rel = parsed
        prefix = referenced.get(step)
        top = rel.split("/", 1)[0]
        if not prefix or not rel or top in (prefix, MANIFEST_NAME):
            continue
        t = mtime_of(info)
        if t is None:
            t = _modified(loc, p)
        prev = newest.get((step, top), 0.0)
        newest[(step, top)] = None if t is None or prev is None else max(prev, t)
    return [k for k, t in sorted(newest.items()) if t is not None and now - t >= min_age_s]
