"""Recovery benchmark: what each kind of fault costs, and goodput under periodic preemptions.

Runs ``spotrain emulate`` (a real multi-raylet Ray cluster on this machine, real TensorFlow
training of bench/recovery-job.yaml: the digits MLP, 2 workers) and reads its JSON report:

1. per fault kind (median of ``--repeats`` runs): detection, then the restart split into process
   (Ray tears the worker group down, places and starts a new one: Python, Ray and TensorFlow
   imports), strategy (collective set-up: it waits for the slowest worker to start), build
   (model, input, optimizer slots) and restore, and steps lost. Beside restore: the time to read one committed checkpoint's bytes straight
   from the same storage, the floor a restore cannot beat. ``drain-node`` and ``kill-node`` add
   the replacement node at the fault (it starts cold: its processes import TensorFlow after it
   joins); their ``-standby`` variants add it 25 s before the fault, when the driver asks it
   for a warm spare (:mod:`cluster.ray.node_spares`).
2. goodput with a noticed preemption (drain-node) every T seconds: the training time of an
   uninterrupted run of the same job, measured in this run, divided by the training time under
   preemptions, with the lost time broken down. Both clocks start when the training workers are
   first up, so cluster and driver start-up count in neither. Each drained node's replacement
   joins ``STANDBY_LEAD_S`` before the notice (``--replacement standby``, the default: capacity
   that is already there holds a warm spare, as in the ``-standby`` faults), or with the notice
   (``--replacement at-notice``: a cold machine whose processes import TensorFlow after it
   joins). The figures are spotrain's and Ray's cost, not the wait for the cloud to supply a
   machine.

3. cold start (bench/cold_start.py): launch -> first training step of a fresh ``spotrain run``
   beside the anchor's launch -> ``fit`` start (Ray's own TensorflowTrainer + tf-keras script).
4. the anchor's restarts: the same model under Ray Train's own restart with stock
   ``tf.keras.callbacks.BackupAndRestore`` and the same faults (kill-worker, kill-node).

Targets are printed beside the figures, and spotrain/anchor ratios.

    python bench/recovery.py [--repeats 3] [--periods 30,60,120] [--epochs 300] [--json]
    python bench/recovery.py --quick --only cold-start      # a smoke test of one part
    python bench/recovery.py --only faults --faults kill-driver,kill-worker

The emulated nodes share this machine's cores, so every process start competes with the
surviving workers for CPU; on real nodes the process phase is shorter.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fsspec

REPO = Path(__file__).resolve().parents[1]
JOB = "bench/recovery-job.yaml"
RUN_NAME = "recovery-bench"
DRAIN_DEADLINE_S = 8
#: Faults come this long after the workers are up: after the first commits, and after the warm
#: spares (asked for after the first step) finished importing TensorFlow. On this 2-core machine
#: they compete with training for the cores: at 15 s a drain-node-standby found its spares still
#: importing (restart 11.5 s, not warm; 8.4 s warm at 30 s). Real preemptions come minutes apart.
FAULT_AT_S = 30
STANDBY_AT_S = 5  # a standby node joins this long after the workers are up
#: Goodput runs (``--replacement standby``): a drained node's replacement joins this long before
#: the notice (at most half the period), time for its spare to import TensorFlow.
STANDBY_LEAD_S = 25
REPLACEMENTS = ("standby", "at-notice")
FAULTS = {
    "kill-worker": f"kill-worker@{FAULT_AT_S}s",
    "drain-node": f"drain-node@{FAULT_AT_S}s:deadline={DRAIN_DEADLINE_S},add-node@{FAULT_AT_S}s",
    "kill-node": f"kill-node@{FAULT_AT_S}s,add-node@{FAULT_AT_S}s",
    "kill-driver": f"kill-driver@{FAULT_AT_S}s",
    # the replacement capacity joined before the fault (a standby node): the driver asks it for
    # a warm spare when it joins, so the restarted group starts warm on both nodes
    "drain-node-standby": f"add-node@{STANDBY_AT_S}s,"
    f"drain-node@{FAULT_AT_S}s:deadline={DRAIN_DEADLINE_S}",
    "kill-node-standby": f"add-node@{STANDBY_AT_S}s,kill-node@{FAULT_AT_S}s",
}
#: The fault each kind's figures are about (its name up to "-standby").
FAULT_OF = {kind: kind.removesuffix("-standby") for kind in FAULTS}
PHASES = ("detection_s", "process_s", "strategy_s", "build_s", "restore_s")
#: Targets (seconds of recovery per fault, goodput per period, cold start).
TARGETS = {"kill-worker": 5.0, "drain-node": 6.0, "kill-node": 8.0, "kill-driver": 20.0}
GOODPUT_TARGETS = {120.0: 0.95, 60.0: 0.90}
COLD_START_TARGET_S, COLD_START_TARGET_RATIO = 25.0, 0.5
ANCHOR_FAULTS = ("kill-worker", "kill-node")
ANCHOR_EPOCHS_FACTOR = 5  # the anchor's epochs = this x --fault-epochs
PARTS = ("faults", "goodput", "cold-start", "anchor")


def emulate(chaos: str | None, epochs: int, workdir: Path) -> dict[str, Any]:
    """One ``spotrain emulate`` run; returns its JSON report."""
    workdir.mkdir(parents=True, exist_ok=True)
    report = workdir / "report.json"
    cmd = [sys.executable, "-m", "cluster", "emulate", JOB, "--nodes", "2", "--epochs", str(epochs)]
    cmd += ["--storage", f"file://{workdir}/runs", "--report-json", str(report)]
    if chaos:
        cmd += ["--chaos", chaos]
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "SPOTRAIN_BACKOFF_S": "0.5"}
    env["SPOTRAIN_JOIN_LOCAL_RAY"] = "0"
    started = time.monotonic()
    for attempt in range(3):
        out = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
        # a cluster that could not start (ports taken by other Ray clusters on a shared
        # machine) never got its workers up: start it again; anything later is a failure
        if out.returncode == 0 or "workers-up" in out.stdout or attempt == 2:
            break
        print(
            f"  emulate could not start its cluster; again ({out.stderr[-300:]})", file=sys.stderr
        )
        shutil.rmtree(workdir / "runs", ignore_errors=True)
    if out.returncode != 0:
        raise RuntimeError(
            f"emulate {chaos!r} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-2000:]}"
        )
    print(f"  ran {chaos or 'no faults'} ({time.monotonic() - started:.0f}s)", file=sys.stderr)
    return json.loads(report.read_text())


def training_s(report: dict[str, Any]) -> float:
    """Seconds from the training workers first up to the driver's successful exit."""
    up = [t["at_s"] for t in report["timeline"] if t["what"] == "workers-up"]
    return float(report["wall_s"] - (up[0] if up else 0.0))


def checkpoint_read_s(workdir: Path) -> float:
    """Seconds to read every file of the newest committed checkpoint (best of 3), cold of
    spotrain's code: the floor a restore from this storage cannot beat."""
    step_dirs = sorted((workdir / "runs" / RUN_NAME / "checkpoints").iterdir())
    fs = fsspec.filesystem("file")
    files = [p for p in step_dirs[-1].rglob("*") if p.is_file()]
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        for path in files:
            fs.cat_file(str(path))
        best = min(best, time.perf_counter() - started)
    return best


def tensorflow_import_s() -> float:
    """Seconds a fresh Python process takes to import TensorFlow (best of 3), for reference."""
    code = "import time; t = time.perf_counter(); import tensorflow; print(time.perf_counter() - t)"
    env = {**os.environ, "TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "3"}
    runs = [
        float(
            subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            ).stdout.split()[-1]
        )
        for _ in range(3)
    ]
    return min(runs)


def _median(values: list[Any]) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.median(known) if known else None


def fault_table(
    repeats: int, epochs: int, base: Path, kinds: list[str] | None = None
) -> list[dict[str, Any]]:
    rows = []
    for kind, chaos in FAULTS.items():
        if kinds and kind not in kinds:
            continue
        costs, reads = [], []
        for i in range(repeats):
            workdir = base / f"{kind}-{i}"
            report = emulate(chaos, epochs, workdir)
            picked = [c for c in report["costs"] if c["fault"].startswith(FAULT_OF[kind])]
            print(f"    {kind} #{i + 1}: {json.dumps(picked)}", file=sys.stderr)
            if not picked:
                print(
                    f"    {kind} #{i + 1}: the run ended before its fault; raise --fault-epochs",
                    file=sys.stderr,
                )
            costs += picked
            reads.append(checkpoint_read_s(workdir))
        row: dict[str, Any] = {"fault": kind, "samples": len(costs)}
        for key in (*PHASES, "restart_s", "recovery_s", "steps_lost"):
            row[key] = _median([c[key] for c in costs])
        row["checkpoint_read_s"] = _median(reads)
        row["target_s"] = TARGETS[FAULT_OF[kind]]
        rows.append(row)
    return rows


def cold_start_table(repeats: int, base: Path) -> dict[str, Any]:
    """spotrain's and the anchor's cold starts, run alternately; medians."""
    from cold_start import anchor_cold_start, spotrain_cold_start

    ours, theirs = [], []
    for i in range(repeats):
        ours.append(spotrain_cold_start(base / f"spotrain-{i}"))
        theirs.append(anchor_cold_start(base / f"anchor-{i}"))
        print(
            f"  cold start {i + 1}/{repeats}: {json.dumps([ours[-1], theirs[-1]])}", file=sys.stderr
        )
    row: dict[str, Any] = {k: _median([r[k] for r in ours]) for k in ours[0]}
    row.update({f"anchor_{k}": _median([r[k] for r in theirs]) for k in theirs[0]})
    row["ratio"] = row["first_step_s"] / row["anchor_fit_start_s"]
    return row


def anchor_table(repeats: int, epochs: int, base: Path) -> list[dict[str, Any]]:
    from cold_start import anchor_restart

    rows = []
    for kind in ANCHOR_FAULTS:
        # stock tf-keras trains an epoch faster than spotrain's fault runs (their 40 epochs
        # ended before the fault); the anchor is stopped once it has recovered, so a longer
        # run costs nothing
        runs = [
            anchor_restart(kind, base / f"{kind}-{i}", epochs * ANCHOR_EPOCHS_FACTOR, FAULT_AT_S)
            for i in range(repeats)
        ]
        print(f"  anchor {kind}: {json.dumps(runs)}", file=sys.stderr)
        rows.append(
            {
                "fault": kind,
                "recovery_s": _median([r["recovery_s"] for r in runs]),
                "steps_lost": _median([r["steps_lost"] for r in runs]),
            }
        )
    return rows


def preemption_schedule(period: float, until_s: float, replacement: str) -> str:
    """The chaos of a goodput run: a drain every ``period`` seconds up to ``until_s``, each with
    its replacement node (``REPLACEMENTS``)."""
    lead = min(STANDBY_LEAD_S, period / 2) if replacement == "standby" else 0.0
    items = []
    for k in range(1, int(until_s / period) + 2):
        at = k * period
        items += [
            f"add-node@{max(1.0, at - lead):g}s",
            f"drain-node@{at:g}s:deadline={DRAIN_DEADLINE_S}",
        ]
    return ",".join(items)


def goodput_table(
    periods: list[float], epochs: int, base: Path, replacement: str
) -> list[dict[str, Any]]:
    reference = emulate(None, epochs, base / "baseline-first")
    baseline = training_s(reference)
    step_s = baseline / max(1, int(reference["status"].get("global_step") or 1))
    rows: list[dict[str, Any]] = [
        {
            "period_s": None,
            "training_s": baseline,
            "goodput": 1.0,
            "preemptions": 0,
            "step_s": step_s,
        }
    ]
    for period in periods:
        chaos = preemption_schedule(period, 3 * baseline, replacement)
        report = emulate(chaos, epochs, base / f"period-{period:g}")
        took = training_s(report)
        costs = report["costs"]
        row: dict[str, Any] = {
            "period_s": period,
            "replacement": replacement,
            "training_s": took,
            "goodput": baseline / took,
            "preemptions": len(costs),
            "steps_lost": sum(c["steps_lost"] or 0 for c in costs),
        }
        for key in PHASES:
            row[f"lost_{key}"] = sum(c[key] or 0 for c in costs)
        row["lost_recompute_s"] = row["steps_lost"] * step_s
        # Detection is shown but not counted: after a notice the workers train on until the save.
        accounted = sum(row[f"lost_{key}"] for key in PHASES[1:]) + row["lost_recompute_s"]
        # The rest (signed): the first steps after each restore (tf.function tracing, cold
        # caches), the save on notice, and run-to-run noise of the two runs.
        row["lost_rest_s"] = took - baseline - accounted
        rows.append(row)
    # The same uninterrupted run again, last: its spread from the first is the noise floor, and
    # the goodputs use the mean of the two.
    again = training_s(emulate(None, epochs, base / "baseline-last"))
    mean = (baseline + again) / 2
    rows[0].update(training_s=mean, first_s=baseline, last_s=again)
    for row in rows[1:]:
        row["goodput"] = mean / row["training_s"]
        row["lost_rest_s"] += baseline - mean
    return rows


def _fmt(value: Any, unit: str = "s") -> str:
    if value is None:
        return "-"
    return f"{value:.1f}{unit}" if isinstance(value, float) else f"{value}"


def print_tables(results: dict[str, Any], args: Any) -> None:
    if results["faults"]:
        print_fault_table(
            results["faults"], results["anchor"], args.repeats, results["tf_import_s"]
        )
    if results["goodput"]:
        print_goodput_table(results["goodput"])
    if results["cold_start"]:
        print_cold_start(results["cold_start"], args.repeats)


def print_fault_table(
    faults: list[dict[str, Any]], anchor: list[dict[str, Any]], repeats: int, tf_import_s: float
) -> None:
    print(f"\nrecovery per fault kind (median of {repeats} run(s); 2 workers, digits MLP)")
    head = ["fault", "detect", "process", "strategy", "build", "restore", "ckpt-read", "total"]
    head += ["target", "lost", "anchor", "ratio"]
    print(f"{head[0]:<12}" + "".join(f"{h:>10}" for h in head[1:]))
    theirs = {r["fault"]: r for r in anchor}
    for r in faults:
        cells = [_fmt(r[k]) for k in (*PHASES, "checkpoint_read_s", "recovery_s")]
        cells += [f"<={r['target_s']:g}s", _fmt(r["steps_lost"])]
        a = theirs.get(r["fault"])
        cells.append(_fmt(a["recovery_s"]) if a else "-")
        ratio = a and r["recovery_s"] and a["recovery_s"] and r["recovery_s"] / a["recovery_s"]
        cells.append(f"{ratio:.2f}" if ratio else "-")
        print(f"{r['fault']:<12}" + "".join(f"{c:>10}" for c in cells))
    for a in anchor:
        if a["fault"] not in {r["fault"] for r in faults}:
            print(f"anchor {a['fault']}: recovery {_fmt(a['recovery_s'])}, lost {a['steps_lost']}")
    print(f"(for reference: a fresh process imports TensorFlow in {tf_import_s:.1f}s here)")


def print_cold_start(row: dict[str, Any], repeats: int) -> None:
    print(f"\ncold start, launch -> first training step (median of {repeats}, alternating)")
    print(
        f"spotrain run: {row['first_step_s']:.1f}s (lease {row['lease_s']:.1f}s, lease -> "
        f"attempt start {row['driver_s']:.1f}s, Ray + Train controller + workers to the "
        f"first step {row['ray_and_workers_s']:.1f}s; {row['attempts']:g} attempt(s); its commit "
        f"at {row['first_commit_s']:.1f}s); target <= {COLD_START_TARGET_S:g}s"
    )
    print(
        f"anchor (Ray TensorflowTrainer + tf-keras): fit start {row['anchor_fit_start_s']:.1f}s, "
        f"first step {row['anchor_first_step_s']:.1f}s"
    )
    print(
        f"spotrain first step / anchor fit start = {row['ratio']:.2f} (target <= "
        f"{COLD_START_TARGET_RATIO:g}); after the final commit the attempt ended in "
        f"{row['end_wait_s']:.1f}s and the driver exited {row['exit_s']:.1f}s later"
    )


def print_goodput_table(goodput: list[dict[str, Any]]) -> None:
    base = goodput[0]
    print(
        f"\ngoodput under a noticed preemption (drain-node, its replacement joining "
        f"{goodput[-1]['replacement']}) every T seconds; "
        f"uninterrupted: {base['first_s']:.0f}s first, {base['last_s']:.0f}s last "
        f"(mean {base['training_s']:.0f}s), {base['step_s'] * 1000:.0f} ms/step"
    )
    head = (
        "T",
        "train",
        "goodput",
        "preempt",
        "detect",
        "process",
        "strategy",
        "build",
        "restore",
        "recompute",
        "rest",
    )
    print("".join(f"{h:>10}" for h in (*head, "target")))
    for r in goodput[1:]:
        cells = [
            _fmt(r["period_s"]),
            _fmt(r["training_s"]),
            f"{r['goodput'] * 100:.1f}%",
            str(r["preemptions"]),
        ]
        cells += [_fmt(r[f"lost_{k}"]) for k in PHASES]
        cells += [_fmt(r["lost_recompute_s"]), _fmt(r["lost_rest_s"])]
        target = GOODPUT_TARGETS.get(float(r["period_s"]))
        cells.append(f">={target * 100:.0f}%" if target else "-")
        print("".join(f"{c:>10}" for c in cells))
    hit = [r for r in goodput[1:] if r["preemptions"]]
    if not hit:
        return
    measured = statistics.median(
        (r["training_s"] - base["training_s"]) / r["preemptions"] for r in hit
    )
    parts = ("process_s", "strategy_s", "build_s", "restore_s", "recompute_s")
    phases = sum(sum(r[f"lost_{k}"] for k in parts) for r in hit) / sum(
        r["preemptions"] for r in hit
    )
    for what, cost in (("run length", measured), ("restart phases", phases)):
        print(
            f"lost per preemption by {what}: {cost:.1f}s -> goodput with one preemption every "
            f"120s = {100 * (120 - cost) / 120:.1f}% (target >= 90%; 95% needs <= 6.0s)"
        )


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    """Send what this process prints while the runs go on to stderr, down to the file
    descriptor: Ray, connected here for the anchor's faults, prints its raylets' deaths to
    stdout, which would corrupt ``--json``."""
    sys.stdout.flush()
    saved = os.dup(1)
    os.dup2(2, 1)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


@contextlib.contextmanager
def _workdir(keep: Path | None) -> Iterator[Path]:
    """``keep`` (created, left in place), else a temporary directory removed at the end."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        print(f"  runs are kept in {keep}", file=sys.stderr)
        yield keep
        return
    with tempfile.TemporaryDirectory(prefix="spotrain-bench-") as tmp:
        yield Path(tmp)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="runs per fault kind (median)")
    parser.add_argument("--periods", default="30,60,120", help="seconds between preemptions")
    parser.add_argument(
        "--epochs",
        type=int,
        default=300,
        help="epochs of the goodput runs (300: ~4 min of training here, several periods)",
    )
    parser.add_argument(
        "--fault-epochs",
        type=int,
        default=40,
        help="epochs of the fault runs: long enough that training runs past the fault "
        f"({FAULT_AT_S}s after the workers are up)",
    )
    parser.add_argument(
        "--replacement",
        choices=REPLACEMENTS,
        default="standby",
        help=f"goodput runs: a drained node's replacement joins {STANDBY_LEAD_S}s before the "
        "notice (standby: it holds a warm spare) or with it (at-notice: a cold machine)",
    )
    parser.add_argument("--only", choices=PARTS, action="append", help="run these parts only")
    parser.add_argument("--faults", help=f"fault kinds to run (default all: {','.join(FAULTS)})")
    parser.add_argument(
        "--quick", action="store_true", help="smoke test: 1 repeat, short runs, one period (60s)"
    )
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    parser.add_argument(
        "--keep",
        type=Path,
        metavar="DIR",
        help="run in DIR (new or empty) and keep it: each run's report.json and run record "
        "(events), to look into an outlier (default: a temporary directory, removed at the end)",
    )
    args = parser.parse_args()
    if args.quick:
        args.repeats, args.periods, args.epochs, args.fault_epochs = 1, "60", 12, 30
    periods = [float(p) for p in args.periods.split(",") if p]
    kinds = [k for k in (args.faults or "").split(",") if k]
    if args.repeats < 1 or not periods or min(periods) <= DRAIN_DEADLINE_S:
        parser.error(f"--repeats >= 1 and every period > the drain deadline ({DRAIN_DEADLINE_S}s)")
    if set(kinds) - set(FAULTS):
        parser.error(f"--faults: unknown {sorted(set(kinds) - set(FAULTS))}; known: {list(FAULTS)}")
    if args.keep is not None and args.keep.exists() and any(args.keep.iterdir()):
        parser.error(f"--keep {args.keep} is not empty: an earlier run there would be resumed")
    parts = args.only or list(PARTS)
    results: dict[str, Any] = {"faults": [], "goodput": [], "cold_start": None, "anchor": []}
    results["tf_import_s"] = tensorflow_import_s()
    results["errors"] = {}
    with _stdout_to_stderr(), _workdir(args.keep) as base:
        # in this order: the cold start first, on a machine no earlier run has loaded
        runs = (
            ("cold-start", lambda: cold_start_table(args.repeats, base / "cold")),
            (
                "faults",
                lambda: fault_table(args.repeats, args.fault_epochs, base / "faults", kinds),
            ),
            ("anchor", lambda: anchor_table(args.repeats, args.fault_epochs, base / "anchor")),
            (
                "goodput",
                lambda: goodput_table(periods, args.epochs, base / "goodput", args.replacement),
            ),
        )
        for part, run in runs:
            if part not in parts:
                continue
            # a part that fails (a run that ended before its fault, a cluster that could not
            # start) is reported; the other parts' figures are still printed
            try:
                results[part.replace("-", "_")] = run()
            except Exception as exc:  # one part's failure must not lose the others' figures
                results["errors"][part] = f"{type(exc).__name__}: {exc}"
                print(f"  {part} failed: {exc}", file=sys.stderr)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print_tables(results, args)
        for part, why in results["errors"].items():
            print(f"\n{part}: FAILED ({why})")
    return 1 if results["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
