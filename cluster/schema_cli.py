"""``spotrain schema``: print the job spec's JSON Schema, or check job files against the spec.

The schema is ``cluster.spec.json_schema()`` (derived from ``JobSpec``), with the keys as job
files spell them (``async``, not ``async_upload``). Point an editor's YAML language server at it,
e.g. a first line ``# yaml-language-server: $schema=spotrain-job.schema.json`` after
``spotrain schema > spotrain-job.schema.json``.

``--check FILE...`` validates each file as ``spotrain run`` does (entry points resolved against
the current directory): exit 0 when all are valid, else 3 at the first invalid one, with the
same error line as ``spotrain run``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from cluster.exit_codes import ExitCode


def add_commands(sub: Any) -> None:
    """Add ``schema`` to ``spotrain``'s subparsers."""
    p = sub.add_parser("schema", help="print the JSON Schema of job spec files, or check job files")
    p.add_argument(
        "--check",
        nargs="+",
        metavar="JOB.yaml",
        help="validate these job files instead (exit 3 at the first invalid one)",
    )


def cmd_schema(args: argparse.Namespace) -> int:
    from cluster.errors import SpecError
    from cluster.spec import json_schema, load_spec

    if not args.check:
        print(json.dumps(json_schema(), indent=2))
        return ExitCode.OK
    for path in args.check:
        try:
            load_spec(path)
        except SpecError as exc:
            print(str(exc), file=sys.stderr, flush=True)
            return ExitCode.USER_ERROR
        print(f"{path}: valid")
    return ExitCode.OK


HANDLERS = {"schema": cmd_schema}
