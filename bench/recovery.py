"""Recovery benchmark: what each kind of fault costs, and goodput under periodic preemptions.

Runs ``spotrain emulate`` (a real multi-raylet Ray cluster on this machine, real TensorFlow
training of examples/digits.yaml with 2 workers) and reads its JSON report:

1. per fault kind: median detection / restart / restore seconds and steps lost (``--repeats``);
2. goodput with a noticed preemption (drain-node, capacity back after the deadline) every T
   seconds: the training time of an uninterrupted run of the same job measured in this run,
   divided by the training time under preemptions. Both clocks start when the training workers
   are first up, so cluster and driver start-up count in neither.

    python bench/recovery.py [--repeats 3] [--periods 30,60,120] [--epochs 6] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
JOB = "examples/digits.yaml"
DRAIN_DEADLINE_S = 8
FAULTS = {
    "kill-worker": "kill-worker@4s",
    "drain-node": f"drain-node@4s:deadline={DRAIN_DEADLINE_S},add-node@{4 + DRAIN_DEADLINE_S + 1}s",
    "kill-node": "kill-node@4s,add-node@6s",
    "kill-driver": "kill-driver@4s",
}


def emulate(chaos: str | None, epochs: int, workdir: Path) -> dict[str, Any]:
    """One ``spotrain emulate`` run; returns its JSON report."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / "report.json"
    cmd = [sys.executable, "-m", "cluster", "emulate", JOB, "--nodes", "2", "--epochs", str(epochs)]
    cmd += ["--storage", f"file://{workdir}/runs", "--report-json", str(report)]
    if chaos:
        cmd += ["--chaos", chaos]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "SPOTRAIN_BACKOFF_S": "0.5"}
    out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"emulate {chaos!r} exited {out.returncode}:\n{out.stdout[-3000:]}")
    return json.loads(report.read_text())


def training_s(report: dict[str, Any]) -> float:
    """Seconds from the training workers first up to the driver's successful exit."""
    times = {t["what"]: t["at_s"] for t in report["timeline"] if t["what"] == "workers-up"}
    return float(report["wall_s"] - times.get("workers-up", 0.0))


def _median(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def fault_table(repeats: int, epochs: int, base: Path) -> list[dict[str, Any]]:
    rows = []
    for kind, chaos in FAULTS.items():
        costs = []
        for i in range(repeats):
            report = emulate(chaos, epochs, base / f"{kind}-{i}")
            costs += [c for c in report["costs"] if c["fault"].startswith(kind)]
        rows.append(
            {
                "fault": kind,
                "samples": len(costs),
                **{
                    key: _median([c[key] for c in costs])
                    for key in ("detection_s", "restart_s", "restore_s", "recovery_s", "steps_lost")
                },
            }
        )
    return rows


def goodput_table(periods: list[float], epochs: int, base: Path) -> list[dict[str, Any]]:
    baseline = training_s(emulate(None, epochs, base / "baseline"))
    rows = [{"period_s": None, "training_s": baseline, "goodput": 1.0, "preemptions": 0}]
    for period in periods:
        items = []
        for k in range(1, 40):
            at = k * period
            items += [f"drain-node@{at:g}s:deadline={DRAIN_DEADLINE_S}"]
            items += [f"add-node@{at + DRAIN_DEADLINE_S + 1:g}s"]
        report = emulate(",".join(items), epochs, base / f"period-{period:g}")
        took = training_s(report)
        costs = report["costs"]
        rows.append(
            {
                "period_s": period,
                "training_s": took,
                "goodput": baseline / took,
                "preemptions": len(costs),
                "lost_detection_s": sum(c["detection_s"] or 0 for c in costs),
                "lost_restart_s": sum(c["restart_s"] or 0 for c in costs),
                "lost_restore_s": sum(c["restore_s"] or 0 for c in costs),
                "steps_lost": sum(c["steps_lost"] or 0 for c in costs),
            }
        )
    return rows


def _fmt(value: Any, unit: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:.1f}{unit}" if isinstance(value, float) else f"{value}{unit}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=1, help="runs per fault kind (median)")
    parser.add_argument("--periods", default="30,60", help="seconds between preemptions")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the digits job")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args()
    periods = [float(p) for p in args.periods.split(",") if p]
    with tempfile.TemporaryDirectory(prefix="spotrain-bench-recovery-") as tmp:
        faults = fault_table(args.repeats, args.epochs, Path(tmp) / "faults")
        goodput = goodput_table(periods, args.epochs, Path(tmp) / "goodput")
    if args.json:
        print(json.dumps({"faults": faults, "goodput": goodput}, indent=2))
        return 0
    print(f"recovery per fault kind (median of {args.repeats} run(s), 2 workers, digits MLP)")
    print(f"{'fault':<12} {'detect':>7} {'restart':>8} {'restore':>8} {'total':>7} {'lost':>5}")
    for r in faults:
        print(
            f"{r['fault']:<12} {_fmt(r['detection_s'], 's'):>7} {_fmt(r['restart_s'], 's'):>8} "
            f"{_fmt(r['restore_s'], 's'):>8} {_fmt(r['recovery_s'], 's'):>7} "
            f"{_fmt(r['steps_lost']):>5}"
        )
    print("\ngoodput under a noticed preemption (drain-node) every T seconds")
    print(
        f"{'T':>6} {'train':>7} {'goodput':>8} {'preempt':>8} {'detect':>7} {'restart':>8} {'lost':>5}"
    )
    for r in goodput:
        print(
            f"{_fmt(r['period_s'], 's') if r['period_s'] else 'none':>6} "
            f"{_fmt(r['training_s'], 's'):>7} {r['goodput'] * 100:>7.1f}% {r['preemptions']:>8} "
            f"{_fmt(r.get('lost_detection_s'), 's'):>7} {_fmt(r.get('lost_restart_s'), 's'):>8} "
            f"{_fmt(r.get('steps_lost')):>5}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
