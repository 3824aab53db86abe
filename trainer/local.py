"""Run a TrainJob in this process as a single worker, without Ray (tests, ``spotrain verify``).

``python -m trainer.local JOB.json`` runs one attempt and exits 0 (finished), 75 (preempted:
run again to resume), 3 (user error) or 1 (anything else).
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence
from typing import Any

from trainer import env  # noqa: F401
from trainer.cluster_context import WorkerContext
from trainer.errors import PreemptedError, TrainerError, UserCodeError
from trainer.job import TrainJob
from trainer.restore_prefetch import start_restore_prefetch
from trainer.training import TrainResult, train

EXIT_OK, EXIT_FAILED, EXIT_USER, EXIT_PREEMPTED = 0, 1, 3, 75


def run_local(
    job: TrainJob | dict[str, Any],
    *,
    extra_callbacks: Sequence[Any] = (),
    store: Any = None,
    backup_overrides: dict[str, Any] | None = None,
    verbose: int = 0,
) -> TrainResult:
    """One attempt of ``job`` as rank 0 of 1 in this process (default TF strategy). Without a
    ``store``, the newest checkpoint downloads while the model is built."""
    if not isinstance(job, TrainJob):
        job = TrainJob.from_dict(job)
    worker = WorkerContext()
    if store is None:
        worker.restore_prefetch = start_restore_prefetch(job)
    try:
        return train(
            job,
            worker,
            extra_callbacks=extra_callbacks,
            store=store,
            backup_overrides=backup_overrides,
            verbose=verbose,
        )
    finally:  # the restore closes it; an attempt that failed before its restore did not
        if worker.restore_prefetch is not None:
            worker.restore_prefetch.close()


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m trainer.local JOB.json", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    with open(args[0]) as f:
        job = TrainJob.from_dict(json.load(f))
    try:
        result = run_local(job)
    except PreemptedError as exc:
        print(f"preempted: {exc}", file=sys.stderr)
        return EXIT_PREEMPTED
    except UserCodeError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USER
    except TrainerError as exc:
        print(str(exc), file=sys.stderr)
        return EXIT_USER
    print(json.dumps({"global_step": result.global_step, "finished": result.finished}))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
