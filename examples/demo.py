"""What ``make run`` does: train the digits job locally, preempt it half-way, resume, report.

1. ``spotrain run JOB --storage file://./runs/demo`` as a subprocess (2 local CPU workers);
2. when about half of the steps are committed, SIGTERM it (``--kill``: SIGKILL, i.e. the driver
   vanishes; the next run waits for its lease to expire, shortened here to 15 s);
3. ``spotrain run`` again: it resumes from the latest committed checkpoint;
4. ``spotrain status`` and ``--plot``; prints where the plot is.

Usage: python examples/demo.py [JOB.yaml] [--kill] [--storage URL]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def spotrain(*args: str) -> list[str]:
    return [sys.executable, "-m", "cluster.cli", *args]


def status_json(target: str, env: dict[str, str]) -> dict:
    out = subprocess.run(
        spotrain("status", target, "--json"), capture_output=True, text=True, env=env, cwd=ROOT
    )
    if out.returncode != 0:
        return {}
    return json.loads(out.stdout)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("job", nargs="?", default="examples/digits.yaml")
    parser.add_argument("--kill", action="store_true", help="SIGKILL instead of SIGTERM")
    parser.add_argument("--storage", default="file://./runs/demo")
    parser.add_argument("--at", type=float, default=0.5, help="preempt at this fraction")
    args = parser.parse_args(argv)

    env = dict(os.environ)
    env.setdefault("SPOTRAIN_LEASE_TTL_S", "15")  # a SIGKILLed driver blocks the rerun this long
    env.setdefault("SPOTRAIN_BACKOFF_S", "1")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH", "")) if p)
    storage = args.storage
    if storage.startswith("file://./"):
        local = os.path.join(ROOT, storage[len("file://./") :])
        shutil.rmtree(local, ignore_errors=True)  # a fresh demo every time

    sys.path.insert(0, ROOT)
    from cluster.spec import load_spec

    spec = load_spec(os.path.join(ROOT, args.job), working_dir=ROOT).with_overrides(storage=storage)
    target = spec.run_url
    run_cmd = spotrain("run", args.job, "--storage", storage)

    print(f"$ spotrain run {args.job} --storage {storage}", flush=True)
    t0 = time.time()
    proc = subprocess.Popen(run_cmd, cwd=ROOT, env=env)
    sig = signal.SIGKILL if args.kill else signal.SIGTERM
    while proc.poll() is None:
        time.sleep(1.0)
        st = status_json(target, env)
        total = st.get("total_steps") or 0
        committed = (st.get("latest_checkpoint") or {}).get("step") or 0
        if total and committed >= args.at * total:
            print(
                f"\n>>> step {committed}/{total} committed after {time.time() - t0:.0f}s: "
                f"sending {sig.name} to the driver (pid {proc.pid})",
                flush=True,
            )
            proc.send_signal(sig)
            break
    rc = proc.wait()
    print(f">>> first run exited with code {rc} (75 = preempted, run again to resume)", flush=True)

    print(f"\n$ spotrain run {args.job} --storage {storage}   # resumes", flush=True)
    rc2 = subprocess.run(run_cmd, cwd=ROOT, env=env).returncode
    deadline = time.time() + float(env["SPOTRAIN_LEASE_TTL_S"]) + 30
    while rc2 == 5 and time.time() < deadline:  # a SIGKILLed driver's lease has not expired yet
        print(">>> the killed driver's lease is still valid; retrying in 3s", flush=True)
        time.sleep(3)
        rc2 = subprocess.run(run_cmd, cwd=ROOT, env=env).returncode
    print(f">>> second run exited with code {rc2}", flush=True)

    plot = os.path.join(ROOT, "runs", f"{spec.name}.png")
    print(f"\n$ spotrain status {target} --plot {plot}", flush=True)
    subprocess.run(spotrain("status", target, "--plot", plot), cwd=ROOT, env=env)
    print(f"total wall time {time.time() - t0:.0f}s")
    return rc2


if __name__ == "__main__":
    sys.exit(main())
