"""Overhead of spotrain's BackupAndRestore on a 2-worker CPU run (issue 3's benchmark).

A ~5.3M-parameter MLP (checkpoint ~63 MB with Adam) trains under MultiWorkerMirroredStrategy
on Ray (TensorflowTrainer, 2 CPU workers). Inside ONE worker group the same model runs short
``fit`` segments of ``3*N+1`` steps, interleaved round-robin (the order rotates every round):

  plain        model.fit, no checkpointing                                    (a)
  spotrain-file  spotrain BackupAndRestore(save_freq=N) to file://            (b)
  spotrain-s3    the same to a SeaweedFS S3 server on loopback (--no-s3 skips) (b)
  stock        tf.keras.callbacks.BackupAndRestore(save_freq=N), local disk   (c)

Steps/s is measured from the first batch to the last batch of each segment (restore at train
begin and the final commit at train end are outside the window; the 3 saves per segment are
inside). Prints the median steps/s per variant, the overhead % vs plain and the mean time a
step is blocked per save. Run: ``python bench/overhead.py [--save-every 20 --rounds 3]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, ClassVar

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ["TF_USE_LEGACY_KERAS"] = "1"

UNITS = (2048, 1024, 1024)
FEATURES, CLASSES, EXAMPLES = 1024, 10, 4096


def bench_worker(cfg: dict[str, Any]) -> None:
    """Runs on every Ray worker: all variants, interleaved; rank 0 writes the results."""
    import numpy as np

    from trainer import env
    from trainer.callback import BackupAndRestore
    from trainer.cluster_context import WorkerContext
    from trainer.data import ResumableInput

    import tensorflow as tf  # isort: skip

    worker = WorkerContext.detect()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    env.configure(0, deterministic=False)
    with strategy.scope():
        inputs = tf.keras.Input((FEATURES,))
        h = inputs
        for u in UNITS:
            h = tf.keras.layers.Dense(u, activation="relu")(h)
        model = tf.keras.Model(inputs, tf.keras.layers.Dense(CLASSES)(h))
        model.compile(
            tf.keras.optimizers.Adam(1e-4),
            tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        )
    rng = np.random.default_rng(0)
    x = rng.normal(size=(EXAMPLES, FEATURES)).astype("float32")
    y = rng.integers(0, CLASSES, EXAMPLES)
    n = cfg["save_every"]
    steps = 3 * n + 1
    g = cfg["global_batch_size"]
    inp = ResumableInput(tf.data.Dataset.from_tensor_slices((x, y)), EXAMPLES, g, 0, 10_000)

    class Timer(tf.keras.callbacks.Callback):
        def on_train_batch_begin(self, batch, logs=None):
            if batch == 0:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.t1 = time.perf_counter()
            self.batches = batch + 1

    class TimedStock(tf.keras.callbacks.BackupAndRestore):
        blocked: ClassVar[list[float]] = []

        def on_train_batch_end(self, batch, logs=None):
            t0 = time.perf_counter()
            before = self._batches_count
            super().on_train_batch_end(batch, logs)
            if self._batches_count == 0 and before:  # it saved
                TimedStock.blocked.append(time.perf_counter() - t0)

    results: dict[str, dict[str, list[float]]] = {}
    variants = list(cfg["variants"])
    base = tempfile.mkdtemp(prefix=f"bench-overhead-{worker.rank}-")
    segment = 0
    # warm-up segment: traces the train function outside the measurements
    model.fit(inp.distribute(strategy), epochs=1, steps_per_epoch=5, verbose=0)
    for rnd in range(cfg["rounds"]):
        order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]
        for v in order:
            segment += 1
            timer = Timer()
            cbs: list[Any] = [timer]
            bar = None
            if v.startswith("spotrain"):
                url = (
                    f"file://{cfg['shared_dir']}/run-{segment}"
                    if v == "spotrain-file"
                    else f"{cfg['s3_base']}/run-{segment}"
                )
                bar = BackupAndRestore(
                    url,
                    save_freq=n,
                    delete_checkpoint=False,
                    worker=worker,
                    storage_options=cfg["s3_options"] if v == "spotrain-s3" else None,
                    keep_last=1,
                    preemption_poll_steps=0,
                    global_batch_size=g,
                )
                cbs.append(bar)
            elif v == "stock":
                TimedStock.blocked = []
                cbs.append(TimedStock(os.path.join(base, f"stock-{segment}"), save_freq=n))
            model.fit(
                inp.distribute(strategy),
                epochs=1,
                steps_per_epoch=steps,
                callbacks=cbs,
                verbose=0,
            )
            # stock BackupAndRestore.on_train_end does `del model._training_state`, which
            # breaks the next fit of the same model (tf-keras 2.21): put the attribute back
            model._training_state = None
            r = results.setdefault(v, {"steps_per_s": [], "blocked_s": []})
            r["steps_per_s"].append((timer.batches - 1) / (timer.t1 - timer.t0))
            if bar is not None:
                # the in-window saves (the final save at train end is excluded)
                r["blocked_s"].append(bar.stats.blocked_s - bar.stats.last_blocked_s)
                r.setdefault("saves", []).append(bar.stats.saves - 1)
            elif v == "stock":
                r["blocked_s"].append(sum(TimedStock.blocked))
                r.setdefault("saves", []).append(len(TimedStock.blocked))
    shutil.rmtree(base, ignore_errors=True)
    if worker.rank == 0:
        Path(cfg["out"]).write_text(json.dumps(results))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--save-every", type=int, default=20, help="N: save every N steps")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--global-batch-size", type=int, default=256)
    p.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS variant")
    args = p.parse_args()

    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    variants = ["plain", "spotrain-file", "stock"]
    server = None
    s3_options: dict[str, Any] = {}
    s3_base = ""
    if not args.no_s3:
        from storage.testing.seaweed import SeaweedServer

        server = SeaweedServer.start(tmp / "weed")
        s3_options = server.storage_options
        s3_base = f"s3://{server.bucket}/bench-overhead"
        variants.insert(2, "spotrain-s3")
    try:
        ray.init(
            address="local",
            num_cpus=args.workers,
            include_dashboard=False,
            runtime_env={"env_vars": {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}},
        )
        out = tmp / "results.json"
        cfg = {
            "save_every": args.save_every,
            "rounds": args.rounds,
            "global_batch_size": args.global_batch_size,
            "variants": variants,
            "shared_dir": str(tmp / "runs"),
            "s3_base": s3_base,
            "s3_options": s3_options,
            "out": str(out),
        }
        t0 = time.time()
        TensorflowTrainer(
            bench_worker,
            train_loop_config=cfg,
            scaling_config=ScalingConfig(num_workers=args.workers),
            run_config=RunConfig(name="bench-overhead", storage_path=str(tmp / "ray")),
        ).fit()
        results = json.loads(out.read_text())
    finally:
        ray.shutdown()
        if server is not None:
            server.stop()
    ckpt_mb = (
        sum(f.stat().st_size for f in (tmp / "runs").rglob("*") if f.is_file() and "run-" in str(f))
        / 2**20
        / max(1, len(list((tmp / "runs").glob("run-*"))))
    )
    plain = statistics.median(results["plain"]["steps_per_s"])
    print(
        f"\nbench/overhead.py: {args.workers} CPU workers, MLP {FEATURES}-"
        f"{'-'.join(map(str, UNITS))}-{CLASSES} (~5.3M params, checkpoint ~{ckpt_mb:.0f} MB), "
        f"global batch {args.global_batch_size}, save every {args.save_every} steps, "
        f"{args.rounds} interleaved rounds, {time.time() - t0:.0f}s"
    )
    print(
        f"{'variant':15s} {'steps/s (median)':>17s} {'overhead':>9s} {'blocked/save':>13s}  per round"
    )
    for v in variants:
        r = results[v]
        sps = statistics.median(r["steps_per_s"])
        saves = sum(r.get("saves", [])) or 0
        blocked = (sum(r["blocked_s"]) / saves) if saves else 0.0
        over = (plain - sps) / plain * 100 if v != "plain" else 0.0
        rounds = " ".join(f"{s:.2f}" for s in r["steps_per_s"])
        print(f"{v:15s} {sps:17.3f} {over:8.1f}% {blocked * 1000:10.0f} ms  {rounds}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
