"""``spotrain verify``: check locally that a job resumes exactly after preemptions."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from cluster.exit_codes import ExitCode


def add_commands(sub: Any) -> None:
    """Add the ``verify`` subcommand to ``spotrain``'s subparsers."""
    ve = sub.add_parser("verify", help="check locally that a job resumes exactly after preemptions")
    ve.add_argument("job", metavar="JOB.yaml")
    ve.add_argument("--steps", type=int, default=60, help="steps of each of the two runs")
    ve.add_argument("--preemptions", type=int, default=3, help="interruptions of the second run")
    ve.add_argument("--seed", type=int, default=0, help="seed of the interruption steps")


def cmd_verify(args: argparse.Namespace) -> int:
    from cluster.spec import load_spec
    from trainer.verify import verify

    spec = load_spec(args.job)
    try:
        report = verify(
            spec.to_train_job(), steps=args.steps, preemptions=args.preemptions, seed=args.seed
        )
    except ValueError as exc:
        print(f"spotrain verify: error: {exc}", file=sys.stderr)
        return int(ExitCode.USAGE)
    print(report.render())
    return int(ExitCode.OK if report.exact else ExitCode.USER_ERROR)


HANDLERS = {"verify": cmd_verify}
