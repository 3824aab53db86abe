"""The ``spotrain`` command line: ``run`` here; the other commands in their own modules.

Only ``run`` needs Ray, only ``export`` needs TensorFlow; both are imported lazily so that
``status``, ``checkpoints`` and ``gc`` (:mod:`cluster.storage_cli`) work from a laptop with read
access to the storage. ``emulate``: :mod:`cluster.chaos.cli`; ``verify``: :mod:`cluster.verify_cli`.
Exit codes: see :mod:`cluster.exit_codes`.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from cluster import constants, schema_cli, storage_cli, verify_cli
from cluster.chaos import cli as chaos_cli
from cluster.display import Progress, emit, iso, safe_status, setup_logging
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

    storage_cli.add_commands(sub)
    chaos_cli.add_commands(sub)
    verify_cli.add_commands(sub)
    schema_cli.add_commands(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on bad usage, 0 on --help/--version
        return int(exc.code or 0)
    handlers = {
        "run": cmd_run,
        **storage_cli.HANDLERS,
        **chaos_cli.HANDLERS,
        **verify_cli.HANDLERS,
        **schema_cli.HANDLERS,
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


# --- run -----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from cluster.attempt import CoordinatorOptions
    from cluster.coordinator import Coordinator
    from cluster.errors import SpecError
    from cluster.ray.runner import RayAttemptRunner
    from cluster.spec import load_spec
    from cluster.state import Failed, RunState
    from storage.errors import LeaseHeldError

    tty = sys.stdout.isatty() and args.log_format == "text"
    setup_logging(args.log_format, args.verbose)
    try:
        spec = load_spec(args.job).with_overrides(
            workers=args.workers, storage=args.storage, epochs=args.epochs
        )
    except SpecError as exc:
        emit(args, "error", message=str(exc), field=exc.field)
        return ExitCode.USER_ERROR
    coord = Coordinator(
        spec, CoordinatorOptions(address=args.address, verbose=args.verbose), RayAttemptRunner()
    )
    try:
        coord.start()
    except LeaseHeldError as exc:
        until = iso(exc.expires_at) if exc.expires_at else "unknown"
        emit(
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
    display = Progress(args, coord.location, tty)
    display.start()
    try:
        final = coord.run()
    finally:
        display.stop()
        coord.close()
        for sig, h in previous_handlers.items():
            signal.signal(sig, h)

    report = safe_status(coord.location)
    summary = report.progress_line() if report else f"{spec.name} {final.kind.value}"
    if final.kind is RunState.SUCCEEDED:
        emit(args, "summary", message=summary, state="SUCCEEDED", code=0)
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
        emit(
            args,
            "summary",
            message=f"{summary}\nFAILED: {what}: {first_line}",
            state="FAILED",
            code=int(code),
        )
        return code
    emit(
        args,
        "summary",
        message=f"{summary}\nPREEMPTED: state saved; run again to resume",
        state="PREEMPTED",
        code=int(ExitCode.PREEMPTED),
    )
    return ExitCode.PREEMPTED


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
