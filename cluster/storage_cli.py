"""The read-only and storage commands of ``spotrain``: status / checkpoints / export / gc.

They read (``gc``: prune) a run's storage only: no Ray, and no TensorFlow except ``export``
(imported lazily), so they work from a laptop with access to the storage.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import TYPE_CHECKING, Any

from cluster.display import iso
from cluster.exit_codes import ExitCode

if TYPE_CHECKING:
    from storage.location import RunLocation


def add_commands(sub: Any) -> None:
    """Add the ``status``, ``checkpoints``, ``export`` and ``gc`` subcommands."""
    st = sub.add_parser("status", help="state and progress of a run (reads storage only)")
    st.add_argument("target", metavar="RUN_URL_OR_JOB", help="run URL or job spec YAML")
    st.add_argument("--json", action="store_true", help="print JSON")
    st.add_argument("--plot", metavar="FILE.png", help="write loss vs global step to FILE.png")

    ck = sub.add_parser("checkpoints", help="committed checkpoints of a run")
    ck.add_argument("target", metavar="RUN_URL", help="run URL or job spec YAML")
    ck.add_argument("--json", action="store_true", help="print JSON")

    ex = sub.add_parser("export", help="export a committed checkpoint as a Keras model")
    ex.add_argument("target", metavar="RUN_URL", help="run URL or job spec YAML")
    ex.add_argument("--out", required=True, help="model.keras, model.h5 or a SavedModel directory")
    ex.add_argument(
        "--step", type=int, help="exactly this committed step (default: the latest that verifies)"
    )
    ex.add_argument(
        "--model",
        metavar="FILE.py:fn",
        help="build the model with this entry point instead of the one run.json names (export "
        "runs that code here)",
    )

    gc = sub.add_parser("gc", help="apply retention and sweep uncommitted leftovers")
    gc.add_argument("target", metavar="RUN_URL", help="run URL or job spec YAML")
    gc.add_argument("--keep-last", type=int, help="default: the run's checkpoint.keep_last")
    gc.add_argument("--keep-every", type=int, help="default: the run's checkpoint.keep_every")
    gc.add_argument(
        "--min-age-s", type=float, default=None, help="sweep only leftovers older than this"
    )


def _target(target: str) -> RunLocation:
    """The command's run, resolved once (a run URL or a job spec YAML)."""
    from cluster.status import target_location

    return target_location(target)


def _require_run(location: RunLocation) -> dict[str, Any]:
    """The run's ``run.json``; NoRunError when there is no run at ``location``."""
    from cluster.errors import NoRunError, reading_run
    from storage.run_record import RunRecord

    with reading_run(location.url):
        doc = RunRecord(location).read_spec()
    if doc is None:
        raise NoRunError(location.url)
    return doc


def cmd_status(args: argparse.Namespace) -> int:
    from cluster.status import collect_status

    location = _target(args.target)
    _require_run(location)
    rep = collect_status(location)
    plot_path = None
    if args.plot:
        from cluster.plot import write_plot

        plot_path = write_plot(rep, args.plot)
    if args.json:
        data = rep.to_json()
        if plot_path:
            data["plot"] = plot_path
        print(json.dumps(data, indent=2, default=str))
    else:
        print(_status_text(rep))
        if plot_path:
            print(f"plot: {plot_path}")
    return ExitCode.OK


def _status_text(rep: Any) -> str:
    lines = [f"run          {rep.name or '-'}  ({rep.run_url})", f"state        {rep.state}"]
    total = f" / {rep.total_steps}" if rep.total_steps else ""
    lines.append(f"global step  {rep.global_step if rep.global_step is not None else '-'}{total}")
    epochs = f" / {rep.epochs}" if rep.epochs else ""
    lines.append(f"epoch        {rep.epoch if rep.epoch is not None else '-'}{epochs}")
    lines.append(
        f"attempts     {rep.attempts}   preemptions {rep.preemptions}   failures {rep.failures}"
    )
    lines.append(f"lost steps   {rep.lost_steps} (recomputed after restores)")
    lc = rep.latest_checkpoint
    if lc:
        lines.append(
            f"last commit  step {lc['step']} (epoch {lc['epoch']}), {lc['age_s']:.0f}s ago, "
            f"{float(lc['bytes']) / 1e6:.1f} MB"
        )
    else:
        lines.append("last commit  none")
    if rep.save_line():
        lines.append(f"saves        {rep.save_line()}")
    if rep.corrupt_steps:
        lines.append(
            f"corrupt      steps {rep.corrupt_steps} (manifest unreadable; restore falls back)"
        )
    if rep.metrics:
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(rep.metrics.items()))
        lines.append(f"metrics      {shown}")
    if rep.samples_per_s:
        lines.append(f"throughput   {rep.samples_per_s:.0f} samples/s")
    if rep.message:
        lines.append(f"error        {rep.message.splitlines()[0] if rep.message else ''}")
    return "\n".join(lines)


def cmd_checkpoints(args: argparse.Namespace) -> int:
    from storage.checkpoints import CheckpointStore
    from storage.errors import CorruptCheckpointError

    location = _target(args.target)
    _require_run(location)
    store = CheckpointStore(location)
    rows: list[dict[str, Any]] = []
    for step in store.committed_steps():
        try:
            m = store.manifest(step)
        except (CorruptCheckpointError, FileNotFoundError) as exc:
            # shown, not fatal: a restore skips this step and falls back to an older one
            rows.append({"step": step, "corrupt": location.redact(str(exc))})
            continue
        rows.append(
            {
                "step": m.step,
                "epoch": (m.state or {}).get("epoch"),
                "bytes": m.total_bytes,
                "files": len(m.files),
                "created": m.created,
                "created_iso": iso(m.created),
                "finished": bool((m.state or {}).get("finished", False)),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return ExitCode.OK
    if not rows:
        print(f"no committed checkpoints under {location.url}")
        return ExitCode.OK
    print(f"{'step':>10}  {'epoch':>5}  {'size':>10}  {'files':>5}  created")
    for r in rows:
        if "corrupt" in r:
            print(f"{r['step']:>10}  corrupt (skipped by restore): {r['corrupt']}")
            continue
        epoch = "-" if r["epoch"] is None else str(r["epoch"])
        flag = "  (final)" if r["finished"] else ""
        print(
            f"{r['step']:>10}  {epoch:>5}  {r['bytes'] / 1e6:>8.2f}MB  {r['files']:>5}  {r['created_iso']}{flag}"
        )
    return ExitCode.OK


def cmd_gc(args: argparse.Namespace) -> int:
    """Retention + sweep, holding the run's lease (LeaseHeldError, exit 5, while a live
    coordinator holds it) and fenced by its generation: a coordinator that takes the run over
    meanwhile makes every further delete refused."""
    from cluster.attempt import CoordinatorOptions
    from cluster.lease_keeper import LeaseKeeper
    from trainer.job import CheckpointPolicy

    location = _target(args.target)
    doc = _require_run(location)
    ck = (doc.get("spec") or {}).get("checkpoint") or {}
    policy = CheckpointPolicy()  # the spec's defaults, for a run.json that leaves a field out
    keep_last = (
        args.keep_last if args.keep_last is not None else int(ck.get("keep_last", policy.keep_last))
    )
    keep_every = (
        args.keep_every
        if args.keep_every is not None
        else int(ck.get("keep_every", policy.keep_every))
    )
    keeper = LeaseKeeper(location, CoordinatorOptions(holder_id=_gc_holder()))
    keeper.acquire()  # LeaseHeldError: exit 5, "held by ..."
    try:
        deleted, swept, kept = _gc_fenced(location, keeper, keep_last, keep_every, args.min_age_s)
    finally:
        keeper.release()
    print(
        f"retention keep_last={keep_last} keep_every={keep_every}: deleted steps {deleted or 'none'}; "
        f"swept uncommitted {swept or 'none'}; kept {kept}"
    )
    return ExitCode.OK


def _gc_holder() -> str:
    import os
    import socket
    import uuid

    return f"gc:{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


def _gc_fenced(
    location: RunLocation,
    keeper: Any,
    keep_last: int,
    keep_every: int,
    min_age_s: float | None,
) -> tuple[list[int], list[int], list[int]]:
    """(deleted, swept, kept) of retention + sweep under ``keeper``'s fence."""
    from storage.checkpoints import CheckpointStore

    store = CheckpointStore(location, fence=keeper.fence)
    deleted = store.apply_retention(keep_last, keep_every) if keep_last > 0 else []
    swept = (
        store.sweep_uncommitted(min_age_s=min_age_s)
        if min_age_s is not None
        else store.sweep_uncommitted()
    )
    return deleted, swept, store.committed_steps()


def cmd_export(args: argparse.Namespace) -> int:
    from cluster.export import export_model

    location = _target(args.target)
    t0 = time.time()
    out, step = export_model(location, args.out, step=args.step, model_entry=args.model)
    print(f"exported step {step} of {location.url} to {out} ({time.time() - t0:.1f}s)")
    return ExitCode.OK


HANDLERS = {
    "status": cmd_status,
    "checkpoints": cmd_checkpoints,
    "export": cmd_export,
    "gc": cmd_gc,
}
