"""Write arrays as the file sources spotrain reads (Parquet, TFRecord) for the input tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def columns(x: np.ndarray, y: np.ndarray) -> dict[str, np.ndarray]:
    out = {f"f{i}": x[:, i] for i in range(x.shape[1])}
    out["y"] = y
    return out


def write_parquet(
    folder: Path, x: np.ndarray, y: np.ndarray, files: int = 3, row_group: int = 10
) -> list[str]:
    """``x``'s columns as f0..fN and ``y``, split over ``files`` files of ``row_group`` rows."""
    folder.mkdir(parents=True, exist_ok=True)
    cols = columns(x, y)
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(y)), files)):
        path = folder / f"part-{i:03d}.parquet"
        pq.write_table(
            pa.table({k: v[part] for k, v in cols.items()}), path, row_group_size=row_group
        )
        paths.append(str(path))
    return paths


def write_tfrecord(folder: Path, x: np.ndarray, y: np.ndarray, files: int = 3) -> list[str]:
    """``tf.train.Example`` records with float features f0..fN and an int64 ``y``."""
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, part in enumerate(np.array_split(np.arange(len(y)), files)):
        path = folder / f"part-{i:03d}.tfrecord"
        with tf.io.TFRecordWriter(str(path)) as w:
            for r in part:
                feats: dict[str, Any] = {
                    f"f{j}": tf.train.Feature(float_list=tf.train.FloatList(value=[x[r, j]]))
                    for j in range(x.shape[1])
                }
                feats["y"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[int(y[r])]))
                w.write(
                    tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()
                )
        paths.append(str(path))
    return paths


def source_spec(kind: str, folder: Path, features: int, **extra: Any) -> dict[str, Any]:
    return {
        kind: str(folder),
        "features": [f"f{i}" for i in range(features)],
        "label": "y",
        **extra,
    }
