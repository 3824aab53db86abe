"""Helpers of the trainer tests: job factory, checkpoint comparison, attempt loops."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from storage.location import RunLocation
from storage.run_record import RunRecord

REPO = Path(__file__).resolve().parents[2]
TOY = "tests/trainer/toy_job.py"

#: epochs x steps: 96 examples / global batch 16 = 6 steps per epoch
EPOCHS, GLOBAL_BATCH, STEPS_PER_EPOCH = 4, 16, 6

#: Two configurations, because tf-keras' ReduceLROnPlateau cannot change the LR of an optimizer
#: built with a LearningRateSchedule: "schedule" = Adam(ExponentialDecay) + EarlyStopping;
#: "plateau" = Adam(float LR) + ReduceLROnPlateau (fires at least once) + EarlyStopping.
CALLBACKS = {
    "schedule": [{"early_stopping": {"monitor": "val_loss", "patience": 2, "min_delta": 0.0}}],
    "plateau": [
        {"early_stopping": {"monitor": "val_loss", "patience": 3}},
        {
            "reduce_lr_on_plateau": {
                "monitor": "loss",
                "patience": 0,
                "factor": 0.5,
                "min_delta": 0.3,
            }
        },
    ],
}


def job_dict(base: Path, name: str, mode: str = "plateau", **over: Any) -> dict[str, Any]:
    d: dict[str, Any] = {
        "name": name,
        "run_url": f"file://{base}/{name}",
        "model": TOY,
        "data": TOY,
        "val_data": TOY,
        "config": {"lr_mode": mode},
        "epochs": EPOCHS,
        "global_batch_size": GLOBAL_BATCH,
        "seed": 7,
        "working_dir": str(REPO),
        "checkpoint": {"every_steps": 5, "every_epoch": True, "keep_last": 0},
        "callbacks": list(CALLBACKS[mode]),
        "preemption_poll_steps": 0,
    }
    d.update(over)
    return d


def interrupt_spec(steps: list[int], marker_dir: Path, mode: str = "raise") -> dict[str, Any]:
    return {
        "custom": {
            "entry": f"{TOY}:interrupt",
            "steps": list(steps),
            "marker_dir": str(marker_dir),
            "mode": mode,
        }
    }


def run_dir(run_url: str) -> Path:
    return Path(run_url[len("file://") :])


def final_checkpoint(run_url: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every tensor of the newest committed checkpoint (model, optimizer, RNG, per-rank) and
    its manifest."""
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tensorflow as tf

    root = run_dir(run_url) / "checkpoints"
    steps = sorted(p for p in root.iterdir() if (p / "MANIFEST.json").exists())
    step_dir = steps[-1]
    manifest = json.loads((step_dir / "MANIFEST.json").read_text())
    files_dir = step_dir / manifest.get("prefix", "")  # the commit folder holding the files
    tensors: dict[str, np.ndarray] = {}
    for prefix in ("ckpt", "ranks"):
        reader = tf.train.load_checkpoint(str(files_dir / prefix))
        for key in reader.get_variable_to_shape_map():
            if key != "_CHECKPOINTABLE_OBJECT_GRAPH":
                tensors[f"{prefix}/{key}"] = reader.get_tensor(key)
    return tensors, manifest


def assert_bitwise_equal(ref: dict[str, np.ndarray], other: dict[str, np.ndarray]) -> None:
    assert sorted(ref) == sorted(other)
    differ = [k for k in ref if not np.array_equal(ref[k], other[k])]
    assert not differ, f"tensors differ: {differ}"


def history_of(manifest: dict[str, Any]) -> list[dict[str, Any]]:
    return manifest["state"]["history"]


def events(run_url: str, kind: str) -> list[dict[str, Any]]:
    """The run's ``kind`` events in the record's order (read as spotrain reads them)."""
    record = RunRecord(RunLocation.from_url(run_url))
    return [e.to_dict() for e in record.events(kinds=[kind])]
