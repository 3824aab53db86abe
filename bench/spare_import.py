"""What a warm spare's import costs the training beside it, at normal and at idle CPU priority.

Two CPU workers train a small tf-keras MLP under MultiWorkerMirroredStrategy (two processes on
this machine, no Ray). Once they have stepped for a while, two processes run the warm preload
(``import trainer.warm`` in a training worker's env: TensorFlow, tf-keras, the trainer), as the
two spares a restarted attempt asks for do. Variants, alternating round by round:

- ``none``: no import (the noise floor);
- ``normal``: the preload finds no training marker and imports at normal priority;
- ``idle``: the workers marked themselves as training (:func:`trainer.idle_import.mark_training`),
  so the preload imports under SCHED_IDLE (where this process may go back: ``--help`` says).

Printed per variant: the workers' steps/s in the ``--window`` seconds after the imports began
divided by their steps/s in the seconds before (median over rounds), and the imports' time.

    python bench/spare_import.py [--rounds 3] [--window 15] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from storage.testing.ports import free_ports

ROOT = Path(__file__).resolve().parents[1]
VARIANTS = ("none", "normal", "idle")
BEFORE_S = 6.0  # steps/s before the imports: over this many seconds


def worker(rank: int, ports: str, out: str, seconds: float, mark: bool) -> None:
    """One training worker: steps for ``seconds``, writes its batch-end times to ``out``."""
    hosts = [f"127.0.0.1:{p}" for p in ports.split(",")]
    os.environ["TF_CONFIG"] = json.dumps(
        {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": rank}}
    )
    import numpy as np

    from trainer import env  # noqa: F401  (tf-keras before TensorFlow)
    from trainer.idle_import import mark_training

    import tensorflow as tf  # isort: skip

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    with strategy.scope():
        model = tf.keras.Sequential(
            [tf.keras.Input((64,)), tf.keras.layers.Dense(64, "relu"), tf.keras.layers.Dense(10)]
        )
        model.compile("adam", tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    rng = np.random.default_rng(rank)
    x = rng.normal(size=(64 * 64, 64)).astype("float32")
    y = rng.integers(0, 10, size=64 * 64)
    ends: list[float] = []
    stop_at = [0.0]

    class Clock(tf.keras.callbacks.Callback):
        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            ends.append(time.time())
            if len(ends) == 1:
                stop_at[0] = ends[0] + seconds
                if mark:
                    mark_training()
                Path(out + ".first").touch()
            if ends[-1] >= stop_at[0]:
                self.model.stop_training = True

    data = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(32)
    model.fit(data, epochs=1, steps_per_epoch=10**7, verbose=0, callbacks=[Clock()])
    Path(out).write_text(json.dumps(ends))


def one_round(variant: str, args: argparse.Namespace, tmp: Path) -> dict[str, float]:
    ports = ",".join(map(str, free_ports(2)))
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "TMPDIR": str(tmp)}
    total = args.lead + args.window + 3
    mark = "1" if variant == "idle" else "0"
    workers = []
    for rank in range(2):
        out = str(tmp / f"w{rank}.json")
        cmd = [sys.executable, __file__, "--worker", str(rank), ports, out, str(total), mark]
        workers.append(subprocess.Popen(cmd, env=env, cwd=ROOT))
    first = tmp / "w0.json.first"
    while not first.exists():  # the imports begin args.lead seconds after the first step
        if any(w.poll() is not None for w in workers):
            raise RuntimeError("a training worker ended before its first step")
        time.sleep(0.2)
    time.sleep(args.lead)
    t0 = time.time()
    imports = []
    if variant != "none":
        spare_env = {**env, "SPOTRAIN_TRAIN_WORKER": "1"}
        code = "import trainer.warm"
        imports = [
            subprocess.Popen([sys.executable, "-c", code], env=spare_env, cwd=ROOT)
            for _ in range(2)
        ]
    import_s = 0.0
    for p in imports:
        p.wait()
        import_s = max(import_s, time.time() - t0)
    for w in workers:
        if w.wait() != 0:
            raise RuntimeError(f"a training worker exited {w.returncode}")
    ends = json.loads((tmp / "w0.json").read_text())
    before = sum(t0 - BEFORE_S <= t < t0 for t in ends) / BEFORE_S
    after = sum(t0 <= t < t0 + args.window for t in ends) / args.window
    for f in tmp.iterdir():
        if f.is_file():
            f.unlink()
    return {"ratio": after / before, "steps_s_before": before, "import_s": import_s}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="rounds of the three variants")
    ap.add_argument("--window", type=float, default=15.0, help="seconds measured after")
    ap.add_argument("--lead", type=float, default=8.0, help="seconds of steps before")
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--worker", nargs=5, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        rank, ports, out, seconds, mark = args.worker
        worker(int(rank), ports, out, float(seconds), mark == "1")
        return 0
    from trainer.idle_import import can_leave_idle

    runs: dict[str, list[dict[str, float]]] = {v: [] for v in VARIANTS}
    with tempfile.TemporaryDirectory(prefix="spotrain-spare-bench-") as tmp:
        for r in range(args.rounds):
            for variant in VARIANTS:
                row = one_round(variant, args, Path(tmp))
                runs[variant].append(row)
                print(
                    f"round {r + 1} {variant:>6}: steps/s after/before {row['ratio']:.2f} "
                    f"(before {row['steps_s_before']:.1f}), imports {row['import_s']:.1f}s",
                    file=sys.stderr,
                )
    summary: dict[str, dict[str, Any]] = {
        v: {
            "ratio_median": statistics.median(x["ratio"] for x in rows),
            "ratios": [round(x["ratio"], 3) for x in rows],
            "import_s_median": statistics.median(x["import_s"] for x in rows),
        }
        for v, rows in runs.items()
    }
    if args.json:
        print(json.dumps({"idle_priority_available": can_leave_idle(), "variants": summary}))
        return 0
    print(
        f"two spares' import beside two CPU workers ({args.rounds} rounds, {args.window:g} s "
        f"window; idle priority available here: {can_leave_idle()})"
    )
    print(f"{'variant':>8} {'steps/s after / before':>24} {'(rounds)':>22} {'import s':>9}")
    for v, rows in runs.items():
        row = summary[v]
        ratios = ", ".join(f"{x['ratio']:.2f}" for x in rows)
        imp = "-" if v == "none" else f"{row['import_s_median']:.1f}"
        print(f"{v:>8} {row['ratio_median']:>24.2f} {ratios:>22} {imp:>9}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
