"""The ``spotrain`` command line: run / status / checkpoints / export / gc.

Only ``run`` needs Ray, only ``export`` needs TensorFlow; both are imported lazily so that
``status``, ``checkpoints`` and ``gc`` work from a laptop with read access to the storage.
Exit codes: see :mod:`cluster.exit_codes`.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
import time
from datetime import datetime, timezone
from importlib.metadata import PackageNotFoundError, version
from typing import Any, TextIO

from cluster import chaos_cli, constants
from cluster.exit_codes import ExitCode

logger = logging.getLogger("spotrain")


def _version() -> str:
    try:
        return version("spotrain")
    except PackageNotFoundError:  # running from a source tree without install
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spotrain",
        description="Preemption-tolerant Keras training on Ray: runs resume from the latest "
        "committed checkpoint after any preemption.",
        epilog="Exit codes: 0 succeeded, 2 bad command line, 3 user error (spec or user code), "
        "4 infrastructure error after retries, 5 run held by another coordinator, "
        "75 preempted (run again to resume).",
    )
    parser.add_argument("--version", action="version", version=f"spotrain {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    run = sub.add_parser("run", help="start a run, or resume it from its latest checkpoint")
    run.add_argument("job", metavar="JOB.yaml", help="job spec (see README: Job spec reference)")
    run.add_argument("--workers", type=int, help="override scaling.workers")
    run.add_argument("--storage", help="override storage (run URL = <storage>/<name>)")
    run.add_argument("--epochs", type=int, help="override epochs")
    run.add_argument(
        "--address",
        help="Ray cluster to join (default: RAY_ADDRESS, else an embedded local Ray)",
    )
    run.add_argument("--log-format", choices=("text", "json"), default="text")
    run.add_argument("-v", "--verbose", action="store_true", help="show Ray and worker logs")

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
    ex.add_argument("--step", type=int, help="committed step (default: the latest)")

    gc = sub.add_parser("gc", help="apply retention and sweep uncommitted leftovers")
    gc.add_argument("target", metavar="RUN_URL", help="run URL or job spec YAML")
    gc.add_argument("--keep-last", type=int, help="default: the run's checkpoint.keep_last")
    gc.add_argument("--keep-every", type=int, help="default: the run's checkpoint.keep_every")
    gc.add_argument(
        "--min-age-s", type=float, default=None, help="sweep only leftovers older than this"
    )
    chaos_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help/--version
        return int(exc.code or 0)
    handlers = {
        "run": cmd_run,
        "status": cmd_status,
        "checkpoints": cmd_checkpoints,
        "export": cmd_export,
        "gc": cmd_gc,
        **chaos_cli.HANDLERS,
    }
    from storage.errors import SpotrainError

    try:
        return int(handlers[args.command](args))
    except SpotrainError as exc:  # process boundary: a clear message instead of a traceback
        print(f"spotrain {args.command}: error: {exc}", file=sys.stderr)
        return int(_code_for(exc))
    except BrokenPipeError:  # `spotrain status | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail too
        return int(ExitCode.OK)


def _code_for(exc: BaseException) -> ExitCode:
    from storage.errors import LeaseHeldError

    if isinstance(exc, LeaseHeldError):
        return ExitCode.HELD
    if getattr(exc, "retryable", False):
        return ExitCode.INFRA_ERROR
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {"StorageError"} and not names & {"InvalidNameError", "NoValidCheckpointError"}:
        return ExitCode.INFRA_ERROR
    return ExitCode.USER_ERROR


# --- logging -------------------------------------------------------------------------------------


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps(
            {
                "event": "log",
                "time": record.created,
                "level": record.levelname,
                "logger": record.name,
                "message": record.getMessage(),
            }
        )


def _setup_logging(log_format: str, tty: bool, verbose: bool) -> None:
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout if log_format == "json" else sys.stderr)
    if log_format == "json":
        handler.setFormatter(_JsonFormatter())
        level = logging.INFO
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        level = logging.INFO if verbose else logging.WARNING
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("ray", "filelock", "fsspec", "botocore", "s3fs", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)


# --- run -----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from cluster.coordinator import Coordinator, CoordinatorOptions
    from cluster.errors import SpecError
    from cluster.spec import load_spec
    from cluster.state import Failed, RunState
    from storage.errors import LeaseHeldError

    tty = sys.stdout.isatty() and args.log_format == "text"
    _setup_logging(args.log_format, tty, args.verbose)
    try:
        spec = load_spec(args.job).with_overrides(
            workers=args.workers, storage=args.storage, epochs=args.epochs
        )
    except SpecError as exc:
        _emit(args, "error", message=str(exc), field=exc.field)
        return ExitCode.USER_ERROR
    coord = Coordinator(spec, CoordinatorOptions(address=args.address, verbose=args.verbose))
    try:
        coord.start()
    except LeaseHeldError as exc:
        until = _iso(exc.expires_at) if exc.expires_at else "unknown"
        _emit(
            args,
            "held",
            message=f"run {spec.run_url} is held by another coordinator ({exc.holder}) until "
            f"{until}; wait for it to finish, or for its lease to expire if it died "
            f"(lease TTL {constants.DEFAULT_LEASE_TTL_S:.0f}s, SPOTRAIN_LEASE_TTL_S)",
            holder=exc.holder,
            expires_at=exc.expires_at,
        )
        return ExitCode.HELD

    previous_handlers = {}

    def on_signal(signum: int, frame: Any) -> None:
        if coord.stop_requested.is_set():
            logger.warning("second signal: exiting now; the last committed checkpoint stands")
            os._exit(int(ExitCode.PREEMPTED))
        logger.warning("signal %d: saving and stopping (run again to resume)", signum)
        coord.request_stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        previous_handlers[sig] = signal.signal(sig, on_signal)
    display = _Progress(args, coord.run_url, spec.storage_options, tty)
    display.start()
    try:
        final = coord.run()
    finally:
        display.stop()
        coord.close()
        for sig, h in previous_handlers.items():
            signal.signal(sig, h)

    report = _safe_status(coord.run_url, spec.storage_options)
    summary = report.progress_line() if report else f"{spec.name} {final.kind.value}"
    if final.kind is RunState.SUCCEEDED:
        _emit(args, "summary", message=summary, state="SUCCEEDED", code=0)
        return ExitCode.OK
    if isinstance(final, Failed):
        if final.user_traceback:
            print(final.user_traceback.rstrip(), file=sys.stderr)
        code = ExitCode.USER_ERROR if final.is_user_error else ExitCode.INFRA_ERROR
        what = (
            "error in your code (not retried)"
            if final.reason == "user_code"
            else f"{final.reason} failure, retry budget spent ({final.extra.get('budget', '')}); "
            "run again to resume from the latest checkpoint"
        )
        first_line = final.message.strip().splitlines()[0] if final.message.strip() else ""
        _emit(
            args,
            "summary",
            message=f"{summary}\nFAILED: {what}: {first_line}",
            state="FAILED",
            code=int(code),
        )
        return code
    _emit(
        args,
        "summary",
        message=f"{summary}\nPREEMPTED: state saved; run again to resume",
        state="PREEMPTED",
        code=int(ExitCode.PREEMPTED),
    )
    return ExitCode.PREEMPTED


def _iso(ts: float | None) -> str:
    if ts is None:
        return "?"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _emit(args: argparse.Namespace, event: str, message: str, **fields: Any) -> None:
    if getattr(args, "log_format", "text") == "json":
        print(json.dumps({"event": event, "message": message, **fields}, default=str), flush=True)
    else:
        stream: TextIO = sys.stdout if event == "summary" else sys.stderr
        print(message, file=stream, flush=True)


def _safe_status(run_url: str, storage_options: dict[str, Any]) -> Any:
    from cluster.status import collect_status

    try:
        return collect_status(run_url, storage_options)
    except Exception:  # display only: never fail the run because the summary could not be read
        logger.debug("could not read the run's status", exc_info=True)
        return None


class _Progress:
    """Live display (rich, TTY), JSON progress lines (--log-format json), or nothing."""

    def __init__(
        self, args: argparse.Namespace, run_url: str, storage_options: dict[str, Any], tty: bool
    ) -> None:
        self.json = args.log_format == "json"
        self.tty = tty
        self.run_url = run_url
        self.storage_options = storage_options
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.json or self.tty:
            self._thread = threading.Thread(
                target=self._loop, name="spotrain-progress", daemon=True
            )
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _loop(self) -> None:
        interval = constants.DEFAULT_PROGRESS_INTERVAL_S
        if self.json:
            last = None
            while not self._stop.wait(interval):
                rep = _safe_status(self.run_url, self.storage_options)
                if rep is None:
                    continue
                data = rep.to_json()
                key = (
                    data["state"],
                    data["global_step"],
                    data["attempts"],
                    json.dumps(data["latest_checkpoint"], default=str),
                )
                if key != last:
                    last = key
                    print(json.dumps({"event": "progress", **data}, default=str), flush=True)
            return
        from rich.console import Console
        from rich.live import Live
        from rich.table import Table

        def render(rep: Any) -> Table:
            table = Table(title=f"spotrain {rep.name or rep.run_url}", show_header=False, box=None)
            table.add_row("state", rep.state)
            total = f" / {rep.total_steps}" if rep.total_steps else ""
            table.add_row(
                "step", f"{rep.global_step if rep.global_step is not None else '-'}{total}"
            )
            table.add_row(
                "epoch",
                f"{rep.epoch if rep.epoch is not None else '-'}"
                + (f" / {rep.epochs}" if rep.epochs else ""),
            )
            for k in ("loss", "val_loss"):
                if k in rep.metrics:
                    table.add_row(k, f"{rep.metrics[k]:.4f}")
            if rep.samples_per_s:
                table.add_row("samples/s", f"{rep.samples_per_s:.0f}")
            lc = rep.latest_checkpoint
            table.add_row(
                "last commit", f"step {lc['step']}, {lc['age_s']:.0f}s ago" if lc else "-"
            )
            table.add_row("attempts", str(rep.attempts))
            table.add_row("preemptions", str(rep.preemptions))
            if rep.lost_steps:
                table.add_row("lost steps", str(rep.lost_steps))
            return table

        console = Console()
        with Live(console=console, refresh_per_second=2, transient=True) as live:
            while not self._stop.wait(interval):
                rep = _safe_status(self.run_url, self.storage_options)
                if rep is not None:
                    live.update(render(rep))


# --- read-only commands --------------------------------------------------------------------------


def _target(target: str) -> tuple[str, dict[str, Any]]:
    from cluster.status import resolve_target

    return resolve_target(target)


def _require_run(run_url: str, storage_options: dict[str, Any]) -> None:
    from cluster.errors import NoRunError
    from storage.run_record import RunRecord

    if RunRecord(run_url, storage_options=storage_options or None).read_spec() is None:
        raise NoRunError(run_url)


def cmd_status(args: argparse.Namespace) -> int:
    from cluster.status import collect_status

    run_url, opts = _target(args.target)
    _require_run(run_url, opts)
    rep = collect_status(run_url, opts)
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

    run_url, opts = _target(args.target)
    _require_run(run_url, opts)
    store = CheckpointStore(run_url, storage_options=opts or None)
    rows: list[dict[str, Any]] = []
    for step in store.committed_steps():
        m = store.manifest(step)
        rows.append(
            {
                "step": m.step,
                "epoch": (m.state or {}).get("epoch"),
                "bytes": m.total_bytes,
                "files": len(m.files),
                "created": m.created,
                "created_iso": _iso(m.created),
                "finished": bool((m.state or {}).get("finished", False)),
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2))
        return ExitCode.OK
    if not rows:
        print(f"no committed checkpoints under {run_url}")
        return ExitCode.OK
    print(f"{'step':>10}  {'epoch':>5}  {'size':>10}  {'files':>5}  created")
    for r in rows:
        epoch = "-" if r["epoch"] is None else str(r["epoch"])
        flag = "  (final)" if r["finished"] else ""
        print(
            f"{r['step']:>10}  {epoch:>5}  {r['bytes'] / 1e6:>8.2f}MB  {r['files']:>5}  {r['created_iso']}{flag}"
        )
    return ExitCode.OK


def cmd_gc(args: argparse.Namespace) -> int:
    from storage.checkpoints import CheckpointStore
    from storage.run_record import RunRecord

    run_url, opts = _target(args.target)
    _require_run(run_url, opts)
    doc = RunRecord(run_url, storage_options=opts or None).read_spec() or {}
    ck = (doc.get("spec") or {}).get("checkpoint") or {}
    keep_last = args.keep_last if args.keep_last is not None else int(ck.get("keep_last", 3))
    keep_every = args.keep_every if args.keep_every is not None else int(ck.get("keep_every", 0))
    store = CheckpointStore(run_url, storage_options=opts or None)
    deleted = store.apply_retention(keep_last, keep_every) if keep_last > 0 else []
    swept = (
        store.sweep_uncommitted(min_age_s=args.min_age_s)
        if args.min_age_s is not None
        else store.sweep_uncommitted()
    )
    print(
        f"retention keep_last={keep_last} keep_every={keep_every}: deleted steps {deleted or 'none'}; "
        f"swept uncommitted {swept or 'none'}; kept {store.committed_steps()}"
    )
    return ExitCode.OK


def cmd_export(args: argparse.Namespace) -> int:
    from cluster.export import export_model

    run_url, opts = _target(args.target)
    t0 = time.time()
    out, step = export_model(run_url, args.out, step=args.step, storage_options=opts)
    print(f"exported step {step} of {run_url} to {out} ({time.time() - t0:.1f}s)")
    return ExitCode.OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
