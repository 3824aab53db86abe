"""What ``spotrain run`` shows while it runs: log setup, a live progress display (rich on a
TTY, JSON progress lines with ``--log-format json``), and the event lines it prints."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TextIO

from cluster import constants

if TYPE_CHECKING:
    from storage.location import RunLocation

logger = logging.getLogger("spotrain")


class JsonFormatter(logging.Formatter):
    """One JSON object per log record (``--log-format json``)."""

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


def setup_logging(log_format: str, verbose: bool) -> None:
    """Log lines to stderr (text; INFO with ``verbose``) or JSON lines to stdout."""
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.StreamHandler(sys.stdout if log_format == "json" else sys.stderr)
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
        level = logging.INFO
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        level = logging.INFO if verbose else logging.WARNING
    root.addHandler(handler)
    root.setLevel(level)
    for noisy in ("ray", "filelock", "fsspec", "botocore", "s3fs", "aiobotocore"):
        logging.getLogger(noisy).setLevel(logging.INFO if verbose else logging.WARNING)
    # Ray's "Token authentication is enabled for this Ray cluster" banner, on every embedded
    # start (Ray 2.60 turns token auth on by default): shown with -v only
    from trainer.ray_internals import RAY_TOKEN_BANNER_LOGGER

    logging.getLogger(RAY_TOKEN_BANNER_LOGGER).setLevel(logging.INFO if verbose else logging.ERROR)


def iso(ts: float | None) -> str:
    """A unix time as UTC ISO 8601 (``?`` for none)."""
    if ts is None:
        return "?"
    return datetime.fromtimestamp(ts, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def emit(args: argparse.Namespace, event: str, message: str, **fields: Any) -> None:
    """A JSON line on stdout (``--log-format json``), else the message (summaries on stdout)."""
    if getattr(args, "log_format", "text") == "json":
        print(json.dumps({"event": event, "message": message, **fields}, default=str), flush=True)
    else:
        stream: TextIO = sys.stdout if event == "summary" else sys.stderr
        print(message, file=stream, flush=True)


def safe_status(location: RunLocation) -> Any:
    """The run's status report, or None when it cannot be read."""
    from cluster.status import collect_status

    try:
        return collect_status(location)
    except Exception:  # display only: never fail the run because the summary could not be read
        logger.debug("could not read the run's status", exc_info=True)
        return None


class Progress:
    """Live display (rich, TTY), JSON progress lines (--log-format json), or nothing."""

    def __init__(self, args: argparse.Namespace, location: RunLocation, tty: bool) -> None:
        self.json = args.log_format == "json"
        self.tty = tty
        self.location = location
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
                rep = safe_status(self.location)
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
            if rep.save_line():
                table.add_row("saves", rep.save_line())
            table.add_row("attempts", str(rep.attempts))
            table.add_row("preemptions", str(rep.preemptions))
            if rep.lost_steps:
                table.add_row("lost steps", str(rep.lost_steps))
            return table

        console = Console()
        with Live(console=console, refresh_per_second=2, transient=True) as live:
            while not self._stop.wait(interval):
                rep = safe_status(self.location)
                if rep is not None:
                    live.update(render(rep))
