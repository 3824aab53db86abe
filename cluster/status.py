"""``spotrain status``: the run's state and progress, read from storage alone (no Ray, no TF).

Sources, all written and queried through :mod:`storage.events` (log order: generation, then
each writer's sequence; never a clock):
- ``state`` events (cluster.state) -> state;
- ``attempt_start`` / ``preemption`` / ``failure`` / ``restore`` events -> attempts,
  preemptions, lost steps;
- ``metrics`` events (written by the Ray controller from the chief's ``ray.train.report``,
  see cluster.ray.hooks) and the latest manifest's ``state`` (the trainer's training state:
  ``epoch``, ``global_step``, ``steps_per_epoch``, ``total_steps``, ``history``) -> progress and
  the metrics history plotted by ``--plot``.

Lost steps: for each restore, the steps between the restored step and the furthest step
reached before it (as last reported; by earlier attempts when the restore names its attempt)
had to be recomputed.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

from storage import events as run_events
from storage.events import Kind

if TYPE_CHECKING:
    from storage.location import RunLocation

_NUMERIC = (int, float)


@dataclass
class MetricPoint:
    """One point of the metrics history: what the chief reported at ``global_step``."""

    global_step: int
    epoch: int | None
    attempt: int | None
    time: float
    values: dict[str, float]


@dataclass
class Marker:
    """A preemption / failure / restore on the time line, at the global step it happened."""

    kind: str
    time: float
    global_step: int | None
    detail: str = ""


@dataclass
class StatusReport:
    run_url: str
    name: str | None
    state: str
    epoch: int | None = None
    epochs: int | None = None
    global_step: int | None = None
    total_steps: int | None = None
    steps_per_epoch: int | None = None
    attempts: int = 0
    preemptions: int = 0
    failures: int = 0
    lost_steps: int = 0
    latest_checkpoint: dict[str, Any] | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    samples_per_s: float | None = None
    message: str = ""
    user_traceback: str = ""
    history: list[MetricPoint] = field(default_factory=list)
    markers: list[Marker] = field(default_factory=list)
    updated: float | None = None
    #: Committed steps newer than ``latest_checkpoint`` whose manifest does not parse.
    corrupt_steps: list[int] = field(default_factory=list)
    #: The current attempt's saves: ``{"median", "last", "n"}`` seconds training was blocked per
    #: save, and seconds from snapshot to commit (``checkpoint_commit`` events); None: no save.
    save_blocked_s: dict[str, float] | None = None
    commit_s: dict[str, float] | None = None
    #: saves that waited for the previous snapshot's write (the save policy is "wait")
    saves_waited: int = 0

    def to_json(self, with_history: bool = False) -> dict[str, Any]:
        out: dict[str, Any] = {
            "run_url": self.run_url,
            "name": self.name,
            "state": self.state,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "global_step": self.global_step,
            "total_steps": self.total_steps,
            "steps_per_epoch": self.steps_per_epoch,
            "attempts": self.attempts,
            "preemptions": self.preemptions,
            "failures": self.failures,
            "lost_steps": self.lost_steps,
            "latest_checkpoint": self.latest_checkpoint,
            "metrics": self.metrics,
            "samples_per_s": self.samples_per_s,
            "message": self.message,
            "updated": self.updated,
            "corrupt_steps": self.corrupt_steps,
            "save_blocked_s": self.save_blocked_s,
            "commit_s": self.commit_s,
            "saves_waited": self.saves_waited,
        }
        if with_history:
            out["history"] = [asdict(p) for p in self.history]
            out["markers"] = [asdict(m) for m in self.markers]
        return out

    def save_line(self) -> str:
        """``blocked 12 ms median (last 11 ms) | commit 0.84 s median (last 0.91 s) | 6 saves,
        0 waited`` for the current attempt, or "" before its first commit."""
        b, c = self.save_blocked_s, self.commit_s
        if not b:
            return ""
        parts = [f"blocked {b['median'] * 1e3:.0f} ms median (last {b['last'] * 1e3:.0f} ms)"]
        if c:
            parts.append(f"commit {c['median']:.2f} s median (last {c['last']:.2f} s)")
        parts.append(f"{int(b['n'])} saves, {self.saves_waited} waited")
        return " | ".join(parts)

    def progress_line(self) -> str:
        """One line, e.g. ``digits-mlp SUCCEEDED step 120/120 epoch 3/3 loss 0.31 ...``."""
        parts = [self.name or self.run_url, self.state]
        if self.global_step is not None:
            total = f"/{self.total_steps}" if self.total_steps else ""
            parts.append(f"step {self.global_step}{total}")
        if self.epoch is not None:
            parts.append(f"epoch {self.epoch}" + (f"/{self.epochs}" if self.epochs else ""))
        for key in ("loss", "val_loss"):
            if key in self.metrics:
                parts.append(f"{key} {self.metrics[key]:.4g}")
        if self.samples_per_s:
            parts.append(f"{self.samples_per_s:.0f} samples/s")
        lc = self.latest_checkpoint
        if lc:
            parts.append(f"last commit step {lc['step']} ({_age(lc.get('age_s'))} ago)")
        parts.append(f"attempts {self.attempts}")
        parts.append(f"preemptions {self.preemptions}")
        if self.lost_steps:
            parts.append(f"lost steps {self.lost_steps}")
        return " | ".join(parts)


def _median_last(values: Any) -> dict[str, float] | None:
    if not values:
        return None
    ordered = sorted(values)
    mid = len(ordered) // 2
    median = ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2
    return {"median": round(median, 6), "last": values[-1], "n": len(values)}


def _age(age_s: float | None) -> str:
    if age_s is None:
        return "?"
    if age_s < 120:
        return f"{age_s:.0f}s"
    if age_s < 7200:
        return f"{age_s / 60:.0f}m"
    return f"{age_s / 3600:.1f}h"


def resolve_target(target: str) -> tuple[str, dict[str, Any]]:
    """A run URL, or a job spec YAML (-> its run URL and storage options)."""
    if target.endswith((".yaml", ".yml")) and os.path.isfile(target):
        from cluster.spec import load_spec

        # entry points are not checked: reading a run needs neither them nor their files
        spec = load_spec(target, check_entry_points=False)
        return spec.run_url, dict(spec.storage_options)
    return target, {}


def target_location(target: str) -> RunLocation:
    """The run of ``target`` (a run URL or a job spec YAML, see :func:`resolve_target`) as the
    one :class:`storage.location.RunLocation` a read-only command works on."""
    from storage.location import RunLocation

    url, storage_options = resolve_target(target)
    return RunLocation.from_url(url, storage_options)


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, _NUMERIC):
        return None
    f = float(value)
    return f if math.isfinite(f) else None


def _int(value: Any) -> int | None:
    f = _num(value)
    return int(f) if f is not None else None


def _history_from_state(state: dict[str, Any]) -> list[MetricPoint]:
    """The trainer's metrics history in the manifest state, if it keeps one.

    Accepted shapes: the trainer's ``{"history": [{"epoch": e, "logs": {"loss":…}}, …]}``
    (per epoch, 0-based), rows with ``global_step``, or Keras'
    ``{"history": {"loss": [...], "val_loss": [...]}}``.
    """
    hist = state.get("metrics_history", state.get("history"))
    points: list[MetricPoint] = []
    spe = _int(state.get("steps_per_epoch"))
    if isinstance(hist, list):
        for row in hist:
            if not isinstance(row, dict):
                continue
            if isinstance(row.get("logs"), dict):  # trainer: {"epoch": e, "logs": {...}}
                row = {**row["logs"], "epoch": row.get("epoch")}
            gs = _int(row.get("global_step"))
            ep = _int(row.get("epoch"))
            if gs is None and ep is not None and spe:
                gs = (ep + 1) * spe
            if gs is None:
                continue
            vals = {k: v for k, v in ((k, _num(v)) for k, v in row.items()) if v is not None}
            vals.pop("global_step", None)
            vals.pop("epoch", None)
            points.append(MetricPoint(gs, ep, None, 0.0, vals))
    elif isinstance(hist, dict) and spe:
        n = max((len(v) for v in hist.values() if isinstance(v, list)), default=0)
        for i in range(n):
            vals = {}
            for k, seq in hist.items():
                if isinstance(seq, list) and i < len(seq) and _num(seq[i]) is not None:
                    vals[k] = float(seq[i])
            points.append(MetricPoint((i + 1) * spe, i, None, 0.0, vals))
    return points


def collect_status(location: RunLocation) -> StatusReport:
    """Build the report from the run record and the checkpoints (read-only).

    The report's ``run_url`` is ``location.url`` (the URL as given, credentials masked)."""
    from cluster.errors import reading_run
    from storage.checkpoints import CheckpointStore
    from storage.errors import CorruptCheckpointError
    from storage.run_record import RunRecord

    record = RunRecord(location)
    store = CheckpointStore(location)
    with reading_run(location.url):
        doc = record.read_spec()
        events = record.events()
    latest, corrupt = None, []
    for step in reversed(store.committed_steps()):
        try:  # a step whose manifest does not parse is shown, and skipped as restore skips it
            latest = store.manifest(step)
            break
        except (CorruptCheckpointError, FileNotFoundError):
            corrupt.append(step)
    rep = build_report(location.url, doc, events, latest)
    rep.corrupt_steps = sorted(corrupt)
    return rep


def build_report(
    run_url: str, doc: dict[str, Any] | None, events: list[Any], latest: Any
) -> StatusReport:
    """Pure function of the stored facts (unit-testable without storage)."""
    spec = (doc or {}).get("spec", {}) if doc else {}
    current = run_events.last_state(events)
    state = current.get("state", "UNKNOWN") if current else ("PENDING" if doc else "UNKNOWN")
    rep = StatusReport(run_url=run_url, name=spec.get("name"), state=state)
    rep.epochs = _int(spec.get("epochs"))
    rep.attempts = run_events.attempts(events)
    counted = run_events.interruptions(events)
    rep.preemptions = sum(1 for e in counted if e.kind == Kind.PREEMPTION)
    rep.failures = sum(1 for e in counted if e.kind == Kind.FAILURE)
    counted_ids = {id(e) for e in counted}
    if current and state == "FAILED":
        rep.message = str(current.get("message", ""))
        rep.user_traceback = str(current.get("user_traceback", ""))
    rep.updated = events[-1].time if events else None

    # Metrics history: events first (per attempt, with times), else the trainer's state.
    reached = -1  # furthest global step known so far, for lost-step accounting
    for ev in events:
        p = ev.payload
        if ev.kind == Kind.METRICS:
            gs = _int(p.get("global_step"))
            if gs is None:
                continue
            vals = {k: v for k, v in ((k, _num(v)) for k, v in p.items()) if v is not None}
            for k in (
                "global_step",
                "epoch",
                "attempt",
                "last_committed_step",
                "total_steps",
                "steps_per_epoch",
            ):
                vals.pop(k, None)
            rep.history.append(
                MetricPoint(gs, _int(p.get("epoch")), _int(p.get("attempt")), ev.time, vals)
            )
            reached = max(reached, gs)
            rep.total_steps = _int(p.get("total_steps")) or rep.total_steps
            rep.steps_per_epoch = _int(p.get("steps_per_epoch")) or rep.steps_per_epoch
        elif ev.kind in (Kind.PREEMPTION, Kind.FAILURE):
            gs = _int(p.get("global_step", p.get("step")))
            if gs is not None:
                reached = max(reached, gs)
            if id(ev) not in counted_ids:
                continue
            rep.markers.append(
                Marker(
                    ev.kind,
                    ev.time,
                    gs if gs is not None else (reached if reached >= 0 else None),
                    str(p.get("failure_kind") or p.get("source") or ""),
                )
            )
        elif ev.kind == Kind.CHECKPOINT_COMMIT:
            gs = _int(p.get("global_step", p.get("step")))
            if gs is not None:
                reached = max(reached, gs)
        elif ev.kind == Kind.RESTORE:
            gs = _int(p.get("global_step", p.get("step")))
            if gs is not None:
                # Writers interleave only causally: with its attempt, the steps reached before
                # a restore are those of earlier attempts, whatever the order of the events.
                attempt = run_events.attempt_of(ev)
                before = None if attempt is None else run_events.reached_before(events, attempt)
                rep.lost_steps += max(0, (reached if before is None else before) - gs)
                reached = gs
            rep.markers.append(Marker(Kind.RESTORE.value, ev.time, gs, f"step {gs}"))

    if latest is not None:
        st = dict(latest.state or {})
        lc_epoch = _int(st.get("epoch"))
        rep.latest_checkpoint = {
            "step": latest.step,
            "epoch": lc_epoch,
            "created": latest.created,
            "age_s": max(0.0, time.time() - latest.created),
            "bytes": latest.total_bytes,
        }
        rep.steps_per_epoch = _int(st.get("steps_per_epoch")) or rep.steps_per_epoch
        rep.total_steps = _int(st.get("total_steps")) or rep.total_steps
        if not rep.history:
            rep.history = _history_from_state(st)
        gs = _int(st.get("global_step", latest.step))
        if gs is not None and (rep.global_step is None or gs > rep.global_step):
            rep.global_step = gs
            rep.epoch = lc_epoch
    if rep.history:
        last = rep.history[-1]
        if rep.global_step is None or last.global_step >= rep.global_step:
            rep.global_step = last.global_step
            rep.epoch = last.epoch if last.epoch is not None else rep.epoch
        rep.metrics = {k: v for k, v in last.values.items() if k != "samples_per_s"}
        for p in reversed(rep.history):
            if "val_loss" in p.values and "val_loss" not in rep.metrics:
                rep.metrics["val_loss"] = p.values["val_loss"]
                break
        rep.samples_per_s = last.values.get("samples_per_s")
    timings = run_events.save_timings(events)
    rep.save_blocked_s = _median_last(timings["blocked_s"])
    rep.commit_s = _median_last(timings["commit_s"])
    rep.saves_waited = timings["waited"]
    if rep.steps_per_epoch and rep.global_step is not None:
        rep.epoch = rep.global_step // rep.steps_per_epoch  # epochs completed
    if rep.total_steps is None and rep.steps_per_epoch and rep.epochs:
        rep.total_steps = rep.steps_per_epoch * rep.epochs
    return rep
