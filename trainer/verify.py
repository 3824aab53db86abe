"""``spotrain verify``: is a job's resume exact, before anyone pays for a cluster?

The job runs here, as one worker without Ray, twice for the same number of steps: once
straight, once interrupted at K seeded random steps (an exception at a step boundary, so the
work since the last commit is lost and recomputed, as after a SIGKILL). The resume is exact
when both runs end with bitwise-equal variables and every step reports the same loss.

When they differ, the report says where (the first step whose loss differs, the variables that
differ and by how much) and the likely causes it can detect:

- a callback with state but no ``get_state()`` / ``set_state()``;
- ``make_dataset`` whose values change from call to call (unseeded randomness);
- ``make_dataset`` whose order changes from call to call (it depends on the attempt);
- ``managed_input: false`` (spotrain does not control the order);
- two uninterrupted runs that differ although the data is stable (non-deterministic ops or
  unseeded randomness inside the model).
"""

from __future__ import annotations

import hashlib
import logging
import random
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from storage.location import RunLocation
from trainer import env
from trainer.data import DataContext
from trainer.job import TrainJob, load_job_entry
from trainer.local import run_local
from trainer.state import cls_is_base_only, get_callback_state
from trainer.training import build_callbacks
from trainer.user_code import user_code

import numpy as np  # isort: skip
import tensorflow as tf  # isort: skip

logger = logging.getLogger(__name__)

#: Examples of make_dataset compared between calls when probing the data pipeline.
DATA_PROBE_EXAMPLES = 512


class SimulatedPreemption(Exception):
    """Raised by verify at a chosen step to end an attempt abruptly."""


@dataclass(frozen=True)
class VariableDiff:
    name: str
    max_abs_diff: float


@dataclass
class RunTrace:
    """What one (possibly interrupted) run did: every loss seen per global step, final weights."""

    losses: dict[int, list[float]] = field(default_factory=dict)
    weights: list[tuple[str, np.ndarray]] = field(default_factory=list)
    attempts: int = 0

    @property
    def last_step(self) -> int:
        return max(self.losses, default=0)


@dataclass
class VerifyReport:
    steps: int
    interrupted_at: list[int]
    attempts: int
    first_divergent_step: int | None = None
    divergent_losses: tuple[float, float] | None = None
    differing_variables: list[VariableDiff] = field(default_factory=list)
    causes: list[str] = field(default_factory=list)

    @property
    def exact(self) -> bool:
        return self.first_divergent_step is None and not self.differing_variables

    def render(self) -> str:
        head = (
            f"ran {self.steps} steps straight and again interrupted at steps "
            f"{self.interrupted_at} ({self.attempts} attempts)"
        )
        if self.exact:
            return f"EXACT: {head}; final variables and every step's loss are bitwise equal."
        lines = [f"NOT EXACT: {head}."]
        if self.first_divergent_step is not None and self.divergent_losses is not None:
            straight, resumed = self.divergent_losses
            lines.append(
                f"  first step whose loss differs: {self.first_divergent_step} "
                f"(straight {straight!r}, interrupted {resumed!r})"
            )
        if self.differing_variables:
            lines.append(f"  {len(self.differing_variables)} variables differ, largest first:")
            lines += [
                f"    {d.name}: max |diff| {d.max_abs_diff:.3g}"
                for d in self.differing_variables[:10]
            ]
        lines.append("  likely causes:" if self.causes else "  no known cause detected.")
        lines += [f"    - {cause}" for cause in self.causes]
        return "\n".join(lines)


class _StepTrace(tf.keras.callbacks.Callback):
    """Records each step's loss, stops at ``stop_at`` and raises at ``interrupt_at``."""

    spotrain_stateless = True

    def __init__(self, trace: RunTrace, stop_at: int, interrupt_at: int | None):
        super().__init__()
        self.trace, self.stop_at, self.interrupt_at = trace, stop_at, interrupt_at

    def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
        step = int(self.model.optimizer.iterations.numpy())
        self.trace.losses.setdefault(step, []).append(float((logs or {}).get("loss", np.nan)))
        if step == self.interrupt_at:
            raise SimulatedPreemption(f"verify: simulated preemption after step {step}")
        if step >= self.stop_at:
            self.model.stop_training = True


def run_trace(job: TrainJob, steps: int, interrupt_at: list[int]) -> RunTrace:
    """Run ``job`` for ``steps`` steps, raising at each step of ``interrupt_at`` once."""
    trace = RunTrace()
    pending = sorted(interrupt_at)
    while True:
        trace.attempts += 1
        recorder = _StepTrace(trace, steps, pending[0] if pending else None)
        try:
            result = run_local(job, extra_callbacks=[recorder])
        except SimulatedPreemption:
            pending.pop(0)
            continue
        model = result.model
        weights = [*model.weights, *model.optimizer.variables()]
        trace.weights = [(v.name, v.numpy()) for v in weights]
        return trace


def compare_traces(
    reference: RunTrace, other: RunTrace
) -> tuple[int | None, Any, list[VariableDiff]]:
    """(first step whose loss differs, (reference, other) losses there, differing variables)."""
    first, losses = None, None
    for step in sorted(set(reference.losses) | set(other.losses)):
        ref = reference.losses.get(step, [np.nan])[0]
        seen = other.losses.get(step, [np.nan])
        bad = next((x for x in seen if not _same(ref, x)), None)
        if bad is not None:
            first, losses = step, (ref, bad)
            break
    diffs = []
    if len(reference.weights) != len(other.weights):
        diffs.append(VariableDiff("<variable count differs>", float("inf")))
    for (name, a), (_, b) in zip(reference.weights, other.weights, strict=False):
        if a.shape != b.shape:
            diffs.append(VariableDiff(name, float("inf")))
        elif not np.array_equal(a, b):
            delta = np.abs(a.astype(np.float64) - b.astype(np.float64))
            diffs.append(VariableDiff(name, float(np.nanmax(delta)) if delta.size else 0.0))
    diffs.sort(key=lambda d: d.max_abs_diff, reverse=True)
    return first, losses, diffs


def _same(a: float, b: float) -> bool:
    return bool(np.array_equal(np.float64(a), np.float64(b), equal_nan=True))


# cause detection -------------------------------------------------------------------------------
def stateful_callbacks_without_state(job: TrainJob) -> list[str]:
    """Names of the job's callbacks that hold state spotrain cannot save."""
    names = []
    for cb in build_callbacks(job, job.callbacks):
        if get_callback_state(cb) is None and _holds_state(cb):
            names.append(type(cb).__name__)
    return names


def _holds_state(cb: Any) -> bool:
    return not cls_is_base_only(cb) and not getattr(cb, "spotrain_stateless", False)


def data_instability(job: TrainJob) -> str | None:
    """Call make_dataset twice with the same ctx and seeds; describe how the results differ
    (None for a file source, whose rows spotrain reads itself)."""
    make_dataset = load_job_entry(job, "data")
    if make_dataset is None:  # a file source: its order is spotrain's, stable by construction
        return None
    ctx = DataContext(
        config=dict(job.config),
        seed=job.seed,
        global_batch_size=job.global_batch_size,
        managed_input=job.managed_input,
    )
    first, second = (_example_digests(make_dataset, ctx, job.seed) for _ in range(2))
    if first == second:
        return None
    if Counter(first) == Counter(second):
        return (
            "make_dataset returns the same examples in a different order on each call: its "
            "order depends on the attempt (a counter, the time, an unseeded shuffle). Return a "
            "fixed order and let spotrain shuffle by (seed, epoch)"
        )
    return (
        "make_dataset returns different values on each call: unseeded randomness (e.g. "
        "np.random.default_rng() without a seed, or random augmentation outside the model). "
        "Derive every seed from ctx.seed"
    )


def _example_digests(make_dataset: Callable[[Any], Any], ctx: DataContext, seed: int) -> list[str]:
    env.seed_everything(seed)
    out = []
    with user_code("make_dataset"):
        examples = make_dataset(ctx).take(DATA_PROBE_EXAMPLES)
    for example in examples:
        h = hashlib.sha256()
        for part in tf.nest.flatten(example):
            h.update(np.asarray(part).tobytes())
        out.append(h.hexdigest())
    return out


# the whole check -----------------------------------------------------------------------------
def verify(
    job: TrainJob, *, steps: int, preemptions: int, seed: int = 0, workdir: str | None = None
) -> VerifyReport:
    """Run ``job`` straight and interrupted ``preemptions`` times; report whether it is exact."""
    if steps < 2:
        raise ValueError(f"--steps must be >= 2 to leave room for a preemption; received {steps}")
    if not 1 <= preemptions < steps:
        raise ValueError(f"--preemptions must be in [1, steps); received {preemptions}")
    interrupt_at = sorted(random.Random(seed).sample(range(1, steps), preemptions))
    base = Path(workdir or tempfile.mkdtemp(prefix="spotrain-verify-"))

    def fresh(label: str) -> TrainJob:
        return replace(job, run_url=(base / label).resolve().as_uri())

    straight = run_trace(fresh("straight"), steps, [])
    interrupted = run_trace(fresh("interrupted"), steps, interrupt_at)
    first, losses, diffs = compare_traces(straight, interrupted)
    report = VerifyReport(
        steps=straight.last_step,
        interrupted_at=interrupt_at,
        attempts=interrupted.attempts,
        first_divergent_step=first,
        divergent_losses=losses,
        differing_variables=diffs,
    )
    if not report.exact:
        report.causes = _likely_causes(job, straight, fresh("straight-again"), steps)
    return report


def _likely_causes(job: TrainJob, straight: RunTrace, again_job: TrainJob, steps: int) -> list[str]:
    causes = []
    if not job.managed_input:
        causes.append(
            "managed_input is false: spotrain does not shuffle, shard or skip the data, so a "
            "resumed attempt may see other samples; set managed_input: true"
        )
    data = data_instability(job)
    if data:
        causes.append(data)
    for name in stateful_callbacks_without_state(job):
        causes.append(
            f"callback {name} holds state but has no get_state()/set_state(); it restarts from "
            "scratch after a resume. Implement both (JSON-able dict)"
        )
    again = run_trace(again_job, steps, [])
    first, _, diffs = compare_traces(straight, again)
    if (first is not None or diffs) and data is None:
        causes.append(
            "two uninterrupted runs differ although make_dataset is stable: non-deterministic "
            "ops or unseeded randomness inside the model"
            + ("" if job.deterministic else "; set deterministic: true")
        )
    return causes


# final weights from storage ---------------------------------------------------------------------
def committed_tensors(
    location: RunLocation, step: int | None = None
) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Every tensor of a committed checkpoint (default: the latest) and its training state.

    Reads storage only (no model code): the way to compare two runs' final weights bitwise.
    """
    from storage.checkpoints import CheckpointStore

    store = CheckpointStore(location)
    with tempfile.TemporaryDirectory(prefix="spotrain-tensors-") as tmp:
        manifest = store.restore(tmp, step=step)
        tensors: dict[str, np.ndarray] = {}
        prefixes = sorted({Path(f.path).name.split(".")[0] for f in manifest.files})
        for prefix in prefixes:
            if not any(Path(tmp).glob(f"{prefix}.index")):
                continue
            reader = tf.train.load_checkpoint(str(Path(tmp) / prefix))
            for key in reader.get_variable_to_shape_map():
                if key != "_CHECKPOINTABLE_OBJECT_GRAPH":
                    tensors[f"{prefix}/{key}"] = reader.get_tensor(key)
    return tensors, dict(manifest.state)


def differing_tensors(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> list[str]:
    """Names of tensors that are missing on one side or not bitwise equal."""
    names = sorted(set(a) | set(b))
    return [n for n in names if n not in a or n not in b or not np.array_equal(a[n], b[n])]
