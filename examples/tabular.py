"""A spotrain job on Parquet files: 8 numeric features, 3 classes, a small Keras MLP.

spotrain reads the files itself (``data: {parquet: ...}`` in ``tabular.yaml``): row counts from
the footers, each worker reads only the row groups of its own rows, a resume starts at the
next example. Write the data first::

    python examples/tabular.py write data/tabular --rows 200000 --files 8

``build_model(config)`` is the only code the job needs; ``noisy`` is an optional per-example
``map`` (``map: examples/tabular.py:noisy``): it runs only on each worker's own rows.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # tf-keras: works under MultiWorkerMirrored

import numpy as np

FEATURES = [f"f{i}" for i in range(8)]


def write(out: str, rows: int, files: int, row_group: int, seed: int = 0) -> list[str]:
    """``<out>/train/part-*.parquet`` and ``<out>/val/part-0.parquet`` (a tenth of ``rows``)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(len(FEATURES), 3))
    written = []
    for split, n, parts in (("train", rows, files), ("val", max(rows // 10, 1), 1)):
        Path(out, split).mkdir(parents=True, exist_ok=True)
        for i, chunk in enumerate(np.array_split(np.arange(n), parts)):
            x = rng.normal(size=(len(chunk), len(FEATURES))).astype("float32")
            y = np.argmax(x @ weights + 0.3 * rng.normal(size=(len(chunk), 3)), axis=1)
            table = pa.table({**{f: x[:, j] for j, f in enumerate(FEATURES)}, "y": y})
            path = str(Path(out, split, f"part-{i:03d}.parquet"))
            pq.write_table(table, path, row_group_size=row_group)
            written.append(path)
    return written


def build_model(config: dict[str, Any]) -> Any:
    import tensorflow as tf

    model = tf.keras.Sequential(
        [
            tf.keras.layers.Input(shape=(len(FEATURES),)),
            tf.keras.layers.Dense(int(config.get("hidden", 32)), activation="relu"),
            tf.keras.layers.Dense(3),
        ]
    )
    model.compile(
        optimizer=tf.keras.optimizers.Adam(float(config.get("learning_rate", 1e-3))),
        loss=tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    return model


def noisy(columns: dict[str, Any]) -> tuple[Any, Any]:
    """A per-example map: stack the features and add noise seeded by the example's values
    (deterministic: the same example always gets the same noise)."""
    import tensorflow as tf

    x = tf.stack([columns[f] for f in FEATURES])
    seed = tf.bitcast(x[:2], tf.int32)
    return x + 0.01 * tf.random.stateless_normal([len(FEATURES)], seed=seed), columns["y"]


def main() -> None:
    ap = argparse.ArgumentParser(description="write the example's Parquet files")
    ap.add_argument("command", choices=["write"])
    ap.add_argument("out", help="a local folder (copy it to s3:// afterwards)")
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--files", type=int, default=8)
    ap.add_argument("--row-group", type=int, default=16_384)
    args = ap.parse_args()
    for path in write(args.out, args.rows, args.files, args.row_group):
        print(path)


if __name__ == "__main__":
    main()
