"""The ``spotrain`` command line (placeholder until the coordinator lands)."""

from __future__ import annotations

import argparse
from importlib.metadata import version


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="spotrain", description="Preemption-tolerant Keras training on Ray."
    )
    parser.add_argument("--version", action="version", version=f"spotrain {version('spotrain')}")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    parser.parse_args(argv)
    parser.print_help()
    return 0
