"""``spotrain emulate``: a job on an emulated multi-node cluster on this machine, under chaos."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

from cluster.exit_codes import ExitCode

#: A killed driver's lease blocks the next ``spotrain run`` this long in emulations (seconds).
EMULATION_LEASE_TTL_S = "10"


def add_commands(sub: Any) -> None:
    """Add the ``emulate`` subcommand to ``spotrain``'s subparsers."""
    em = sub.add_parser(
        "emulate",
        help="run a job on an emulated multi-node cluster on this machine, injecting faults",
    )
    em.add_argument("job", metavar="JOB.yaml")
    em.add_argument("--nodes", type=int, default=2, help="worker raylets (one worker each)")
    chaos = em.add_mutually_exclusive_group()
    chaos.add_argument(
        "--chaos",
        metavar="SCHEDULE",
        help="e.g. kill-worker@30s,drain-node@60s:deadline=20,kill-node@90s,kill-driver@2m,"
        "add-node@150s (times count from when training workers are first up)",
    )
    chaos.add_argument(
        "--chaos-random", type=float, metavar="RATE", help="random faults per minute"
    )
    em.add_argument("--chaos-seed", type=int, default=0, help="seed of --chaos-random")
    em.add_argument(
        "--chaos-duration-s", type=float, default=180.0, help="span of --chaos-random faults"
    )
    em.add_argument(
        "--chaos-min-gap-s", type=float, default=10.0, help="least time between random faults"
    )
    em.add_argument(
        "--clock",
        choices=("workers", "training"),
        default="workers",
        help="fault times count from when training workers are first up (default), or from "
        "the run's first committed checkpoint (training)",
    )
    em.add_argument("--report-json", metavar="FILE", help="also write the report as JSON")
    em.add_argument("--reference", action="store_true", help="compare with an uninterrupted run")
    em.add_argument("--storage", help="override storage (run URL = <storage>/<name>)")
    em.add_argument("--epochs", type=int, help="override epochs")
    em.add_argument("--timeout-s", type=float, default=1800.0, help="give up after this long")


def cmd_emulate(args: argparse.Namespace) -> int:
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # loopback; before ray
    from cluster.chaos.emulator import Emulator, EmulatorOptions
    from cluster.chaos.report import fault_costs, render, report_json
    from cluster.chaos.schedule import parse_schedule, random_schedule
    from cluster.spec import load_spec
    from cluster.status import collect_status
    from storage.location import RunLocation
    from storage.run_record import RunRecord

    spec = load_spec(args.job).with_overrides(storage=args.storage, epochs=args.epochs)
    if args.chaos:
        faults = parse_schedule(args.chaos)
    elif args.chaos_random:
        faults = random_schedule(
            rate_per_min=args.chaos_random,
            seed=args.chaos_seed,
            duration_s=args.chaos_duration_s,
            min_gap_s=args.chaos_min_gap_s,
        )
    else:
        faults = []
    print("schedule: " + (", ".join(f.describe() for f in faults) or "no faults"))
    overrides = ["--storage", spec.storage, "--epochs", str(spec.epochs)]
    location = RunLocation.from_url(spec.run_url, spec.storage_options)
    clock_ready = None
    if args.clock == "training":
        from storage.checkpoints import CheckpointStore

        store = CheckpointStore(location)

        def clock_ready() -> bool:
            return bool(store.committed_steps())

    options = EmulatorOptions(
        nodes=args.nodes,
        cpus_per_node=max(1, math.ceil(spec.scaling.cpus_per_worker)),
        driver_args=overrides,
        driver_env={"SPOTRAIN_LEASE_TTL_S": EMULATION_LEASE_TTL_S},
        timeout_s=args.timeout_s,
        clock_ready=clock_ready,
    )
    result = Emulator(args.job, faults, options).run()
    events = RunRecord(location).events()
    summary = collect_status(location).to_json()
    costs = fault_costs(result, events)
    print(render(result, costs, summary))
    if args.report_json:
        with open(args.report_json, "w") as f:
            json.dump(report_json(result, costs, summary), f, indent=2, default=str)
    if not result.succeeded:
        return result.exit_code if result.exit_code > 0 else int(ExitCode.INFRA_ERROR)
    if args.reference:
        return _compare_with_reference(args, spec, options)
    return int(ExitCode.OK)


def _compare_with_reference(args: argparse.Namespace, spec: Any, options: Any) -> int:
    from dataclasses import replace

    from cluster.chaos.emulator import Emulator
    from storage.location import RunLocation
    from trainer.verify import committed_tensors, differing_tensors

    ref_storage = spec.storage.rstrip("/") + "-reference"
    ref_spec = spec.with_overrides(storage=ref_storage)
    ref_options = replace(
        options, driver_args=["--storage", ref_storage, "--epochs", str(spec.epochs)]
    )
    print(f"reference: the same job without faults under {ref_spec.run_url}")
    ref = Emulator(args.job, [], ref_options).run()
    if not ref.succeeded:
        print(f"reference run failed with exit code {ref.exit_code}", file=sys.stderr)
        return int(ExitCode.INFRA_ERROR)
    got, state = committed_tensors(RunLocation.from_url(spec.run_url, spec.storage_options))
    want, ref_state = committed_tensors(
        RunLocation.from_url(ref_spec.run_url, ref_spec.storage_options)
    )
    differ = differing_tensors(want, got)
    if not differ:
        print(f"final weights: bitwise EQUAL to the uninterrupted run ({len(want)} tensors)")
        return int(ExitCode.OK)
    sizes = (ref_state.get("world_size"), state.get("world_size"))
    print(
        f"final weights: {len(differ)} of {len(want)} tensors DIFFER from the uninterrupted run "
        f"(world size reference/chaos: {sizes[0]}/{sizes[1]}); first: {differ[:5]}"
    )
    return int(ExitCode.INFRA_ERROR)


HANDLERS = {"emulate": cmd_emulate}
