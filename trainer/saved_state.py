"""What a save puts into the manifest's ``state`` (the training state restore reads back), and
how long saves blocked training."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from trainer import state as st
from trainer.backup_options import BackupOptions
from trainer.model_io import ModelParts
from trainer.other_callbacks import OtherCallbacks

STATE_FORMAT = 1


@dataclass
class SaveStats:
    """How long saves blocked training (the snapshot; writing and upload run in the
    background), and how many saves waited for the previous snapshot's write."""

    saves: int = 0
    blocked_s: float = 0.0
    last_blocked_s: float = 0.0
    waited: int = 0
    #: blocked time of each save, the latest ``MAX_HISTORY``
    history_s: list[float] = field(default_factory=list)

    MAX_HISTORY = 10_000

    def add(self, blocked_s: float) -> None:
        self.saves += 1
        self.blocked_s += blocked_s
        self.last_blocked_s = blocked_s
        self.history_s.append(blocked_s)
        del self.history_s[: -self.MAX_HISTORY]

    @property
    def mean_blocked_s(self) -> float:
        return self.blocked_s / self.saves if self.saves else 0.0


@dataclass(frozen=True)
class ManifestPosition:
    """Where training stands at a save: global step, epoch, step in epoch, steps per epoch."""

    global_step: int
    epoch: int
    step_in_epoch: int
    steps_per_epoch: int
    finished: bool


def manifest_state(
    at: ManifestPosition,
    options: BackupOptions,
    world_size: int,
    parts: ModelParts,
    others: OtherCallbacks,
    train_counter: Any,
    notice: str | None,
) -> dict[str, Any]:
    """The JSON training state saved with a checkpoint (position, seeds, fingerprint, other
    callbacks' state, history, per-rank layout)."""
    fingerprint, detail = parts.fingerprint
    state = {
        "format": STATE_FORMAT,
        "epoch": at.epoch,
        "step_in_epoch": at.step_in_epoch,
        "global_step": at.global_step,
        "steps_per_epoch": at.steps_per_epoch,
        "samples_seen": at.global_step * options.global_batch_size,
        "world_size": world_size,
        "global_batch_size": options.global_batch_size,
        "seed": options.seed,
        "finished": at.finished,
        "fingerprint": fingerprint,
        "fingerprint_detail": detail,
        "callbacks": others.states(options.strict_callback_state),
        "history": others.history(),
        "rank_state": {"n_model": parts.n_model_on_read, "n_vars": len(parts.on_read)},
        "saved_at": time.time(),
        "train_counter": train_counter,
        "preemption_notice": notice,
    }
    state.update(options.extra_state)
    return st.to_json_value(state)
