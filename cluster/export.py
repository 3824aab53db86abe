"""``spotrain export``: a committed checkpoint as a model ``tf.keras.models.load_model`` loads.

The model is rebuilt with the run's own ``build_model(config)`` (entry point from ``run.json``,
resolved against the current directory), then the checkpoint's ``tf.train.Checkpoint`` (prefix
``trainer.callback.CKPT_PREFIX``, object ``model``) is read into it. Needs TensorFlow, imported
here only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from typing import Any

from cluster.errors import NoRunError, SpecError


def export_model(
    run_url: str,
    out: str,
    step: int | None = None,
    storage_options: dict[str, Any] | None = None,
    working_dir: str | None = None,
) -> tuple[str, int]:
    """Write the model of ``step`` (default: latest committed) to ``out``; return (path, step).

    ``out`` ending in ``.keras`` or ``.h5`` gives that single-file format; anything else a
    SavedModel directory.
    """
    from storage.checkpoints import CheckpointStore
    from storage.run_record import RunRecord
    from trainer import env  # first: tf-keras, not Keras 3
    from trainer.callback import CKPT_PREFIX
    from trainer.job import load_entry_point

    opts = storage_options or None
    doc = RunRecord(run_url, storage_options=opts).read_spec()
    if doc is None:
        raise NoRunError(run_url)
    spec = doc["spec"]
    if not spec.get("model"):
        raise SpecError("model", None, "run.json has no model entry point", source=run_url)
    store = CheckpointStore(run_url, storage_options=opts)
    tmp = tempfile.mkdtemp(prefix="spotrain-export-")
    try:
        manifest = store.restore(tmp, step=step)
        env.configure(int(spec.get("seed", 0)), bool(spec.get("deterministic", True)))
        import tensorflow as tf

        build_model = load_entry_point(spec["model"], working_dir or os.getcwd(), "build_model")
        model = build_model(dict(spec.get("config") or {}))
        ckpt = tf.train.Checkpoint(model=model)
        ckpt.read(os.path.join(tmp, CKPT_PREFIX)).expect_partial()
        target = os.path.abspath(out)
        os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
        if target.endswith((".keras", ".h5")):
            model.save(target)
        else:
            model.save(target, save_format="tf")
        return target, manifest.step
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
