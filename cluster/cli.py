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
from typing import TYPE_CHECKING, Any

from cluster import constants, schema_cli, storage_cli, verify_cli
from cluster.chaos import cli as chaos_cli
from cluster.display import Progress, emit, iso, safe_status, setup_logging
from cluster.exit_codes import ExitCode

if TYPE_CHECKING:
    from cluster.coordinator import Coordinator
    from cluster.state import State

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
        "6 run cannot be resumed (no usable checkpoint; start fresh), "
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
    try:
        return int(handlers[args.command](args))
    except BrokenPipeError:  # `spotrain status | head`: the reader has all it wanted
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's final flush must not fail too
        return int(ExitCode.OK)
    except Exception as exc:  # process boundary: one line and a documented code, no traceback
        return int(report_error(args.command, exc))


def report_error(command: str, exc: BaseException) -> ExitCode:
    """Print ``exc`` as one line on stderr (after the user's own traceback, whole, if it carries
    one) and return its exit code. Secrets are masked."""
    from storage.redaction import redact_text

    code, message = describe_error(exc)
    user_tb = getattr(exc, "user_traceback", "")
    if isinstance(user_tb, str) and user_tb.strip():
        print(redact_text(user_tb.rstrip()), file=sys.stderr)
    if os.environ.get(constants.TRACEBACK_ENV):
        import traceback

        traceback.print_exception(type(exc), exc, exc.__traceback__, file=sys.stderr)
    print(f"spotrain {command}: error: {redact_text(message)}", file=sys.stderr)
    return code


def describe_error(exc: BaseException) -> tuple[ExitCode, str]:
    """The exit code and the one-line message of an error that ended a command."""
    from cluster.failure_policy import one_line
    from storage.errors import SpotrainError

    if isinstance(exc, SpotrainError):
        return _code_for(exc), one_line(str(exc), max_chars=4000)
    if isinstance(exc, OSError):  # the local disk or a filesystem outside the run's storage
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return ExitCode.INFRA_ERROR, (
            f"{type(exc).__name__}: {exc.strerror or exc}{where}; fix: check that the path "
            "exists and is writable, and the free space"
        )
    return ExitCode.INFRA_ERROR, (
        f"unexpected {type(exc).__name__}: {one_line(str(exc))}; fix: this is a bug in spotrain "
        f"or its environment: set {constants.TRACEBACK_ENV}=1 to print the traceback and report it"
    )


def _code_for(exc: BaseException) -> ExitCode:
    from cluster.errors import RunDamagedError
    from storage.errors import LeaseHeldError, NoValidCheckpointError

    if isinstance(exc, LeaseHeldError):
        return ExitCode.HELD
    if isinstance(exc, (RunDamagedError, NoValidCheckpointError)):
        return ExitCode.RUN_DAMAGED
    if getattr(exc, "retryable", False):
        return ExitCode.INFRA_ERROR
    names = {c.__name__ for c in type(exc).__mro__}
    if names & {"StorageError"} and not names & {"InvalidNameError"}:
        return ExitCode.INFRA_ERROR
    return ExitCode.USER_ERROR


# --- run -----------------------------------------------------------------------------------------


def cmd_run(args: argparse.Namespace) -> int:
    from cluster.attempt import CoordinatorOptions
    from cluster.coordinator import Coordinator
    from cluster.errors import SpecError
    from cluster.ray.runner import RayAttemptRunner
    from cluster.spec import load_spec
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

    # The driver never imports TensorFlow (cluster/ray/tf_backend.py): its workers do.
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
    left_running = False
    try:
        final = coord.run()
    finally:
        display.stop()
        left_running = coord.close()
        for sig, h in previous_handlers.items():
            signal.signal(sig, h)
    code = _report_final(args, coord, final)
    if left_running:
        # a stopped trainer still calls into Ray in this process: end before it can (Ray ends
        # a process that calls it after shutdown with exit 1, which would hide this code)
        sys.stdout.flush()
        sys.stderr.flush()
        logging.shutdown()
        os._exit(int(code))
    return code


def _report_final(args: argparse.Namespace, coord: Coordinator, final: State) -> ExitCode:
    """Print the run's summary for its final state; return the exit code it maps to."""
    from cluster.state import Failed, RunState

    report = safe_status(coord.location)
    summary = report.progress_line() if report else f"{coord.spec.name} {final.kind.value}"
    if final.kind is RunState.SUCCEEDED:
        emit(args, "summary", message=summary, state="SUCCEEDED", code=0)
        return ExitCode.OK
    if isinstance(final, Failed):
        if final.user_traceback:
            print(final.user_traceback.rstrip(), file=sys.stderr)  # the user's, whole
        code, what = _failed(final, coord.location.url)
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


def _failed(final: Any, url: str) -> tuple[ExitCode, str]:
    """The exit code of a FAILED run and what to say about it."""
    budget = final.extra.get("budget", "")
    if final.reason == "user_code":
        return ExitCode.USER_ERROR, "error in your code (not retried)"
    if final.reason == "spec":
        return ExitCode.USER_ERROR, "invalid job (not retried)"
    if final.reason == "no_checkpoint":
        return ExitCode.RUN_DAMAGED, (
            "no usable checkpoint: every committed checkpoint is corrupt, so resuming cannot "
            f"work; fix: start fresh: give the job a new name, or delete the run folder ({url})"
        )
    if "not retryable" in budget:
        return ExitCode.INFRA_ERROR, f"{final.reason} failure (not retried; fix the cause)"
    return ExitCode.INFRA_ERROR, (
        f"{final.reason} failure, retry budget spent ({budget}); "
        "run again to resume from the latest checkpoint"
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
