"""The anchor of bench/recovery.py: Ray's own TensorflowTrainer + tf-keras, no spotrain.

The same digits MLP as bench/recovery-job.yaml (examples/digits.py: model, data, batch 64, 2
workers, MultiWorkerMirroredStrategy), written as Ray's documentation writes it: the data sharded
by tf.data auto-sharding, stock ``tf.keras.callbacks.BackupAndRestore(save_freq=10)`` into a
local folder, Ray Train's own restarts (``FailureConfig(max_failures)``). Rank 0 appends marks
to ``--marks`` (one ``<what> <unix time> <global step>`` line each): ``fit_start`` at every
``on_train_begin`` (after each restart too) and ``step`` at every batch end.

    python bench/anchor_keras.py --marks FILE --backup-dir DIR [--epochs 6] [--address ADDR]

Without ``--address`` (and ``RAY_ADDRESS``) it starts a local Ray as a user would
(``ray.init(num_cpus=workers)``, Ray's defaults otherwise).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Keras 3 fails under MWMS (see DESIGN.md)
os.environ.setdefault("RAY_CHDIR_TO_TRIAL_DIR", "0")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

REPO = Path(__file__).resolve().parents[1]
BATCH = 64
CONFIG = {"hidden": 64, "dropout": 0.2, "learning_rate": 0.002}


def train_loop(config: dict[str, Any]) -> None:
    import tensorflow as tf

    sys.path.insert(0, config["repo"])
    from examples import digits

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    rank = int(json.loads(os.environ["TF_CONFIG"])["task"]["index"])
    marks = config["marks"] if rank == 0 else None

    class Marks(tf.keras.callbacks.Callback):
        def _mark(self, what: str) -> None:
            if marks:
                step = int(self.model.optimizer.iterations.numpy())
                with open(marks, "a") as f:
                    f.write(f"{what} {time.time():.3f} {step}\n")

        def on_train_begin(self, logs: Any = None) -> None:
            self._mark("fit_start")

        def on_train_batch_end(self, batch: int, logs: Any = None) -> None:
            self._mark("step")

    with strategy.scope():
        model = digits.build_model(CONFIG)
    x, y = digits._arrays(CONFIG)
    n = len(x) - digits.VAL_EXAMPLES
    train = tf.data.Dataset.from_tensor_slices((x[:n], y[:n])).shuffle(n, seed=1234)
    train = train.batch(BATCH, drop_remainder=True).repeat()
    model.fit(
        train,
        epochs=config["epochs"],
        steps_per_epoch=n // BATCH,
        verbose=0,
        callbacks=[
            tf.keras.callbacks.BackupAndRestore(config["backup_dir"], save_freq=10),
            Marks(),
        ],
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--marks", required=True, help="file rank 0 appends its marks to")
    parser.add_argument("--backup-dir", required=True, help="BackupAndRestore's folder")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-failures", type=int, default=10)
    parser.add_argument("--address", default=os.environ.get("RAY_ADDRESS"))
    args = parser.parse_args()

    import ray
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    env = {"env_vars": {"TF_USE_LEGACY_KERAS": "1", "TF_CPP_MIN_LOG_LEVEL": "2"}}
    if args.address:
        ray.init(address=args.address, runtime_env=env, log_to_driver=False)
    else:
        ray.init(address="local", num_cpus=args.workers, runtime_env=env, log_to_driver=False)
    trainer = TensorflowTrainer(
        train_loop,
        train_loop_config={
            "repo": str(REPO),
            "marks": args.marks,
            "backup_dir": args.backup_dir,
            "epochs": args.epochs,
        },
        scaling_config=ScalingConfig(num_workers=args.workers, resources_per_worker={"CPU": 1}),
        run_config=RunConfig(
            name="anchor",
            storage_path=str(Path(args.backup_dir).parent / "ray"),
            failure_config=FailureConfig(max_failures=args.max_failures),
        ),
    )
    trainer.fit()
    ray.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
