"""``spotrain export``: a committed checkpoint as a model ``tf.keras.models.load_model`` loads.

The model is rebuilt with the run's own ``build_model(config)`` — the entry point named in
``run.json`` (or ``model_entry``), resolved against the current directory: **this runs that
code here**, so export only runs you trust, or pass your own ``--model``. Then the model part of
the checkpoint is read into it (:func:`trainer.model_io.load_committed_model`; the optimizer
starts fresh), after checking the checkpoint's model fingerprint against the model built.
``--step N`` exports exactly N or fails. Nothing is written to the run (no events). Needs
TensorFlow, imported here only.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from cluster.errors import NoRunError, SpecError, reading_run

if TYPE_CHECKING:
    from storage.location import RunLocation


def export_model(
    location: RunLocation,
    out: str,
    step: int | None = None,
    working_dir: str | None = None,
    model_entry: str | None = None,
) -> tuple[str, int]:
    """Write the model of ``step`` (exactly; default: the latest that verifies) to ``out``;
    return (path, step). ``model_entry`` replaces the run's ``model`` entry point.

    ``out`` ending in ``.keras`` or ``.h5`` gives that single-file format; anything else a
    SavedModel directory.
    """
    from storage.checkpoints import CheckpointStore, StoreOptions
    from storage.run_record import RunRecord
    from trainer import env  # noqa: F401  (first: tf-keras, not Keras 3)
    from trainer.entry_points import DEFAULT_ENTRY_FNS
    from trainer.job import JobFields, field_default, load_entry_point
    from trainer.model_io import load_committed_model

    with reading_run(location.url):
        doc = RunRecord(location).read_spec()
    if doc is None:
        raise NoRunError(location.url)
    spec = doc["spec"]
    entry = model_entry or spec.get("model")
    if not entry:
        raise SpecError("model", None, "run.json has no model entry point", source=location.url)

    def build_model(config: dict[str, Any]) -> Any:
        # loaded once the checkpoint is downloaded and the process configured, as before
        fn = load_entry_point(entry, working_dir or os.getcwd(), DEFAULT_ENTRY_FNS["model"])
        return fn(config)

    # a reader: no checkpoint_corrupt (or any other) event is written to the run
    store = CheckpointStore(location, options=StoreOptions(record_events=False))
    model, manifest = load_committed_model(
        store,
        build_model,
        spec.get("config") or {},
        seed=int(spec.get("seed", field_default(JobFields, "seed"))),
        deterministic=bool(spec.get("deterministic", field_default(JobFields, "deterministic"))),
        step=step,
        exact_step=step is not None,
        include_optimizer=False,
    )
    target = os.path.abspath(out)
    os.makedirs(os.path.dirname(target) or ".", exist_ok=True)
    if target.endswith((".keras", ".h5")):
        model.save(target)
    else:
        model.save(target, save_format="tf")
    return target, manifest.step
