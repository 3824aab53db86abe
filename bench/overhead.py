"""Overhead of spotrain's BackupAndRestore on a 2-worker CPU run, against Ray's own and stock
Keras checkpointing, in one run on one SeaweedFS server.

An MLP (default ~5.3M parameters, checkpoint ~63 MB with Adam; ``--model large``: ~47M, ~570
MB) trains under MultiWorkerMirroredStrategy on Ray (TensorflowTrainer, 2 CPU workers). Inside
ONE worker group the same model runs many short ``fit`` segments of 3 epochs x N steps,
interleaved round-robin (the order rotates every round), so every variant saves at global
steps N and 2N inside the timed window (first batch to last batch; the restore at train begin
and the final save at train end are outside it):

  plain          model.fit, no checkpointing                                   (the pair's base)
  spotrain-s3    spotrain BackupAndRestore(save_freq=N) to SeaweedFS S3 (--no-s3 skips)
  spotrain-file  the same to file://
  stock          tf.keras.callbacks.BackupAndRestore(save_freq="epoch"), local disk
  ray-sync       ray.train.tensorflow.keras.ReportCheckpointCallback(checkpoint_on="epoch_end")
                 (epoch end = every N steps here), Ray storage on the same SeaweedFS
  ray-async      the same through ray.train.report(..., checkpoint_upload_mode=ASYNC)
  s3-traffic     plain, while another process uploads a checkpoint-sized object to the same
                 server every N steps: what the uploads cost this machine (client, loopback,
                 server and its disk all share the workers' cores), with no spotrain code in the
                 workers; spotrain-s3's overhead beyond it is spotrain's own

Per variant: the ratio of its steps/s to plain's in the same round, pair by pair; its median
and a bootstrap 95 % interval (overhead = 1 - ratio); the median time a save blocked a step
(spotrain: its SaveStats; stock and Ray: the time inside their save hook on rank 0); and the
spotrain/anchor ratio of the overheads; and the cores the SeaweedFS server itself used during the
variant's segments (it runs on the same machine as the workers, which a remote store would not:
on a 2-core machine 0.2 cores is a tenth of the machine taken from training). ``--quick``: a tiny model and 2 rounds (a smoke test).
Run: ``python bench/overhead.py [--rounds 12 --save-every 10] [--json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
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

FEATURES, CLASSES, EXAMPLES = 1024, 10, 4096
MODELS = {  # name: (hidden units, global batch size)
    "default": ((2048, 1024, 1024), 256),
    "large": ((4608, 4608, 4608), 16),
    "quick": ((256, 256), 64),
}


def bench_worker(cfg: dict[str, Any]) -> None:
    """Runs on every Ray worker: all variants, interleaved; rank 0 writes the results."""
    import numpy as np
    import ray.train
    from ray.train import CheckpointUploadMode
    from ray.train.tensorflow import TensorflowCheckpoint
    from ray.train.tensorflow.keras import ReportCheckpointCallback

    from trainer import env
    from trainer.callback import BackupAndRestore
    from trainer.cluster_context import WorkerContext
    from trainer.data import ResumableInput

    import tensorflow as tf  # isort: skip

    worker = WorkerContext.detect()
    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    env.configure(0, deterministic=False)
    units = cfg["units"]
    with strategy.scope():
        inputs = tf.keras.Input((FEATURES,))
        h = inputs
        for u in units:
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
    g = cfg["global_batch_size"]
    spec = (tf.TensorSpec((FEATURES,), tf.float32), tf.TensorSpec((), tf.int64))
    inp = ResumableInput(tf.data.Dataset.from_tensor_slices((x, y)), EXAMPLES, g, 0, 10_000)

    class Timer(tf.keras.callbacks.Callback):
        """First batch begin to last batch end of the segment (3 epochs)."""

        def on_train_begin(self, logs=None):
            self.t0 = -1.0
            self.batches = 0

        def on_train_batch_begin(self, batch, logs=None):
            if self.t0 < 0:
                self.t0 = time.perf_counter()

        def on_train_batch_end(self, batch, logs=None):
            self.t1 = time.perf_counter()
            self.batches += 1

    class TimedStock(tf.keras.callbacks.BackupAndRestore):
        blocked: ClassVar[list[float]] = []

        def on_epoch_end(self, epoch, logs=None):
            t0 = time.perf_counter()
            super().on_epoch_end(epoch, logs)
            if epoch < 2:  # in the window
                TimedStock.blocked.append(time.perf_counter() - t0)

    class TimedRay(ReportCheckpointCallback):
        """Ray's callback; ``upload_async``: its save through ``checkpoint_upload_mode=ASYNC``."""

        blocked: ClassVar[list[float]] = []
        upload_async = False

        def _handle(self, logs, when):
            t0 = time.perf_counter()
            if self.upload_async:
                ckpt = TensorflowCheckpoint._from_model_internal(self.model)
                ray.train.report(
                    self._get_reported_metrics(logs),
                    checkpoint=ckpt,
                    checkpoint_upload_mode=CheckpointUploadMode.ASYNC,
                    delete_local_checkpoint_after_upload=True,
                )
            else:
                super()._handle(logs, when)
            self.epochs_seen = getattr(self, "epochs_seen", 0) + 1
            if self.epochs_seen < 3:  # in the window
                TimedRay.blocked.append(time.perf_counter() - t0)

    class ForeignUploads(tf.keras.callbacks.Callback):
        """Every N steps (rank 0) asks the uploader process for one checkpoint-sized upload."""

        def __init__(self, uploader: Any) -> None:
            super().__init__()
            self.uploader = uploader

        def on_train_batch_end(self, batch, logs=None):
            if (batch + 1) % n == 0 and self.uploader is not None:
                self.uploader.stdin.write(b"x\n")
                self.uploader.stdin.flush()

    results: dict[str, dict[str, list[float]]] = {}
    variants = list(cfg["variants"])
    uploader = None
    if "s3-traffic" in variants and worker.rank == 0:
        ckpt_bytes = 3 * 4 * model.count_params()  # weights and Adam's two slots, float32
        uploader = start_uploader(cfg["s3_base"], cfg["s3_options"], ckpt_bytes)
    base = tempfile.mkdtemp(prefix=f"bench-overhead-{worker.rank}-")
    segment = 0
    # warm-up segment: traces the train function outside the measurements
    model.fit(inp.distribute(strategy), epochs=1, steps_per_epoch=3, verbose=0)
    for rnd in range(cfg["rounds"]):
        order = variants[rnd % len(variants) :] + variants[: rnd % len(variants)]
        for v in order:
            segment += 1
            timer = Timer()
            cbs: list[Any] = [timer]
            bar = None
            blocked: list[float] = []
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
                    element_spec=spec,  # fit's own is a PerReplicaSpec under the strategy
                )
                cbs.append(bar)
            elif v == "stock":
                TimedStock.blocked = []
                cbs.append(TimedStock(os.path.join(base, f"stock-{segment}")))
            elif v == "s3-traffic":
                cbs.append(ForeignUploads(uploader))
            elif v.startswith("ray"):
                TimedRay.blocked = []
                cb = TimedRay(checkpoint_on="epoch_end", report_metrics_on="epoch_end")
                cb.upload_async = v == "ray-async"
                cbs.append(cb)
            server_cpu0, wall0 = server_cpu_s(cfg["server_pid"]), time.perf_counter()
            model.fit(
                inp.distribute(strategy), epochs=3, steps_per_epoch=n, callbacks=cbs, verbose=0
            )
            server_cores = (server_cpu_s(cfg["server_pid"]) - server_cpu0) / (
                time.perf_counter() - wall0
            )
            # stock BackupAndRestore.on_train_end does `del model._training_state`, which
            # breaks the next fit of the same model (tf-keras 2.21): put the attribute back
            model._training_state = None
            if bar is not None:  # the in-window saves (the final save at train end excluded)
                blocked = bar.stats.history_s[:-1]
            elif v == "stock":
                blocked = list(TimedStock.blocked)
            elif v.startswith("ray"):
                blocked = list(TimedRay.blocked)
            r = results.setdefault(v, {"steps_per_s": [], "blocked_s": [], "server_cores": []})
            r["server_cores"].append(server_cores)
            r["steps_per_s"].append((timer.batches - 1) / (timer.t1 - timer.t0))
            r["blocked_s"].extend(blocked)
    shutil.rmtree(base, ignore_errors=True)
    if uploader is not None:
        uploader.stdin.close()
        uploader.wait(60)
    if worker.rank == 0:
        Path(cfg["out"]).write_text(json.dumps(results))


UPLOADER = """
import os, sys, json, tempfile, fsspec
base, options, size = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3])
fs = fsspec.filesystem("s3", **options)
blob = tempfile.NamedTemporaryFile(delete=False)
blob.write(os.urandom(size))
blob.close()
for i, _ in enumerate(sys.stdin):
    fs.put_file(blob.name, base.removeprefix("s3://") + f"/s3-traffic/{i % 2}")
os.unlink(blob.name)
"""


def start_uploader(s3_base: str, options: dict[str, Any], size: int) -> Any:
    """A process that uploads ``size`` random bytes to ``s3_base`` per line on its stdin."""
    import subprocess

    return subprocess.Popen(
        [sys.executable, "-c", UPLOADER, s3_base, json.dumps(options), str(size)],
        stdin=subprocess.PIPE,
    )


def server_cpu_s(pid: int) -> float:
    """CPU seconds the S3 server process has used (0 without one): it shares this machine's
    cores with the workers, which a remote object store would not."""
    if not pid:
        return 0.0
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def pair_stats(ratios: list[float], samples: int = 2000, seed: int = 0) -> dict[str, float]:
    """Median of the pair-by-pair ratios and a bootstrap 95 % interval of that median."""
    rnd = random.Random(seed)
    medians = sorted(statistics.median(rnd.choices(ratios, k=len(ratios))) for _ in range(samples))
    return {
        "median": statistics.median(ratios),
        "lo": medians[int(0.025 * samples)],
        "hi": medians[int(0.975 * samples) - 1],
    }


def summarize(results: dict[str, dict[str, list[float]]], variants: list[str]) -> dict[str, Any]:
    plain = results["plain"]["steps_per_s"]
    out: dict[str, Any] = {}
    for v in variants:
        r = results[v]
        row: dict[str, Any] = {"steps_per_s": statistics.median(r["steps_per_s"])}
        if v != "plain":
            ratios = [a / b for a, b in zip(r["steps_per_s"], plain, strict=True)]
            row["ratio"] = pair_stats(ratios)
            row["overhead_pct"] = (1 - row["ratio"]["median"]) * 100
        row["blocked_ms_median"] = (
            statistics.median(r["blocked_s"]) * 1e3 if r["blocked_s"] else None
        )
        row["saves"] = len(r["blocked_s"])
        row["server_cores"] = statistics.median(r.get("server_cores") or [0.0])
        out[v] = row
    return out


def ray_storage(server: Any) -> tuple[str, Any]:
    """Ray's storage on the same SeaweedFS server (pyarrow's S3 filesystem)."""
    import pyarrow.fs

    fs = pyarrow.fs.S3FileSystem(
        access_key=server.access_key,
        secret_key=server.secret_key,
        endpoint_override=server.endpoint_url,
        scheme="http",
        region="us-east-1",
    )
    return f"{server.bucket}/bench-overhead-ray", fs


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--save-every", type=int, default=10, help="N: save every N steps")
    p.add_argument("--rounds", type=int, default=12)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--model", choices=sorted(MODELS), default="default")
    p.add_argument("--variants", default="", help="comma list (default: all)")
    p.add_argument("--no-s3", action="store_true", help="skip the SeaweedFS variants")
    p.add_argument("--quick", action="store_true", help="tiny model, 2 rounds: a smoke test")
    p.add_argument("--json", action="store_true", help="print the summary as JSON")
    args = p.parse_args()
    if args.quick:
        args.model, args.rounds, args.save_every = "quick", 2, 3

    import ray
    from ray.train import CheckpointConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    tmp = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
    variants = ["plain", "spotrain-file", "stock"]
    server = None
    s3_options: dict[str, Any] = {}
    s3_base = ""
    storage_path, storage_fs = str(tmp / "ray"), None
    if not args.no_s3:
        from storage.testing.seaweed import SeaweedServer

        server = SeaweedServer.start(tmp / "weed")
        s3_options = server.storage_options
        s3_base = f"s3://{server.bucket}/bench-overhead"
        variants += ["spotrain-s3", "s3-traffic", "ray-sync", "ray-async"]
        storage_path, storage_fs = ray_storage(server)
    if args.variants:
        variants = ["plain"] + [v for v in args.variants.split(",") if v and v != "plain"]
        if server is None and {"spotrain-s3", "s3-traffic"} & set(variants):
            p.error("spotrain-s3 and s3-traffic need the S3 server: drop --no-s3")
    units, batch = MODELS[args.model]
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
            "global_batch_size": batch,
            "units": units,
            "variants": variants,
            "shared_dir": str(tmp / "runs"),
            "s3_base": s3_base,
            "s3_options": s3_options,
            "server_pid": server.proc.pid if server is not None else 0,
            "out": str(out),
        }
        t0 = time.time()
        TensorflowTrainer(
            bench_worker,
            train_loop_config=cfg,
            scaling_config=ScalingConfig(num_workers=args.workers),
            run_config=RunConfig(
                name="bench-overhead",
                storage_path=storage_path,
                storage_filesystem=storage_fs,
                checkpoint_config=CheckpointConfig(num_to_keep=2),
            ),
        ).fit()
        results = json.loads(out.read_text())
    finally:
        ray.shutdown()
        if server is not None:
            server.stop()
    runs = [d for d in (tmp / "runs").glob("run-*") if d.is_dir()]
    ckpt_mb = sum(f.stat().st_size for d in runs for f in d.rglob("ckpt.data*")) / 2**20
    ckpt_mb /= max(1, len(runs))
    params = sum(a * b + b for a, b in zip((FEATURES, *units), (*units, CLASSES), strict=True))
    if not runs:  # no spotrain-file run to measure: the weights and Adam's two slots, float32
        ckpt_mb = 3 * 4 * params / 2**20
    summary = summarize(results, variants)
    if "spotrain-s3" in summary and "s3-traffic" in summary:  # spotrain's part of the S3 cost
        pairs = zip(
            results["spotrain-s3"]["steps_per_s"], results["s3-traffic"]["steps_per_s"], strict=True
        )
        summary["spotrain-s3"]["vs_s3_traffic"] = pair_stats([a / b for a, b in pairs])
    head = {
        "workers": args.workers,
        "model": args.model,
        "params": params,
        "checkpoint_mb": round(ckpt_mb, 1),
        "global_batch_size": batch,
        "save_every": args.save_every,
        "rounds": args.rounds,
        "seconds": round(time.time() - t0),
    }
    shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        print(json.dumps({**head, "variants": summary, "raw": results}, indent=2))
        return 0
    print(
        f"\nbench/overhead.py: {args.workers} CPU workers, model {args.model} "
        f"({params / 1e6:.1f}M params, checkpoint ~{ckpt_mb:.0f} MB), global batch {batch}, "
        f"3 epochs x {args.save_every} steps per segment (saves at N, 2N in the window), "
        f"{args.rounds} interleaved rounds, {head['seconds']}s"
    )
    print(
        f"{'variant':14s} {'steps/s':>8s} {'ratio vs plain [95% CI]':>26s} {'overhead':>9s} "
        f"{'blocked/save':>13s} {'saves':>6s} {'S3 server CPU':>14s}"
    )
    for v in variants:
        row = summary[v]
        ratio = row.get("ratio")
        ci = f"{ratio['median']:.3f} [{ratio['lo']:.3f}, {ratio['hi']:.3f}]" if ratio else "-"
        over = f"{row['overhead_pct']:8.1f}%" if ratio else f"{'-':>9s}"
        blk = row["blocked_ms_median"]
        blk_s = f"{blk:10.1f} ms" if blk is not None else f"{'-':>13s}"
        server_cpu = f"{row['server_cores']:9.2f} cores" if row["server_cores"] >= 0.005 else ""
        print(
            f"{v:14s} {row['steps_per_s']:8.2f} {ci:>26s} {over} {blk_s} {row['saves']:6d} "
            f"{server_cpu:>14s}"
        )
    beyond = summary.get("spotrain-s3", {}).get("vs_s3_traffic")
    if beyond:
        print(
            f"spotrain-s3 vs s3-traffic (the same uploads from another process): ratio "
            f"{beyond['median']:.3f} [{beyond['lo']:.3f}, {beyond['hi']:.3f}], overhead beyond "
            f"the uploads' own cost {(1 - beyond['median']) * 100:.1f}%"
        )
    for mine in ("spotrain-s3", "spotrain-file"):
        if mine not in summary:
            continue
        for anchor in ("stock", "ray-sync", "ray-async"):
            if anchor in summary:
                a, b = summary[mine], summary[anchor]
                blk = (
                    f"{a['blocked_ms_median'] / b['blocked_ms_median']:.2f}"
                    if a["blocked_ms_median"] and b["blocked_ms_median"]
                    else "-"
                )
                print(
                    f"{mine}/{anchor}: overhead {a['overhead_pct']:.1f}% vs "
                    f"{b['overhead_pct']:.1f}%, blocked/save ratio {blk}"
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
