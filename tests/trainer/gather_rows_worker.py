"""One of two TF workers (TF_CONFIG from argv) that call ``trainer.state.gather_rows`` and
``any_rank`` under MultiWorkerMirroredStrategy and print what they got, as hex bit patterns
(run by tests/trainer/test_trainer_gather_rows.py)."""

from __future__ import annotations

import json
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"

import numpy as np


def row_of(rank: int) -> np.ndarray:
    """Values whose bits a float sum would change: -0.0, NaN payloads, denormals, infinities."""
    nan_payload = np.array([0x7FF8_0000_DEAD_BEEF], np.int64).view(np.float64)[0]
    return np.array(
        [-0.0, nan_payload, 5e-324, -np.inf, np.inf, 2.0**60 + rank, -(rank + 1) / 3, 0.0]
    )


def main(tf_config: str) -> None:
    os.environ["TF_CONFIG"] = tf_config
    rank = json.loads(tf_config)["task"]["index"]
    import tensorflow as tf

    from trainer import state as st

    strategy = tf.distribute.MultiWorkerMirroredStrategy()
    out: dict[str, object] = {}
    for name, row in (("special", row_of(rank)), ("empty", np.zeros(0))):
        got = st.gather_rows(strategy, row)
        out[name] = [[format(int(b), "016x") for b in r.view(np.int64)] for r in got]
        out[name + "_shape"] = list(got.shape)
    out["any_none"] = st.any_rank(strategy, False)
    out["any_rank1"] = st.any_rank(strategy, rank == 1)
    print("RESULT " + json.dumps(out), flush=True)


if __name__ == "__main__":
    main(sys.argv[1])
