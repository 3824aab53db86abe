"""The job schema's training half, declared once: :class:`JobFields` (what the YAML job spec and
the worker share), :class:`CheckpointPolicy`, :class:`CallbackSpec`, and :class:`TrainJob`, the
JSON-able job a worker runs. ``cluster.spec.JobSpec`` extends :class:`JobFields` with the
cluster-only fields. All are frozen pydantic dataclasses: validated on construction, equal by
value, ``dataclasses.replace`` works (and validates again).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Annotated, Any, ClassVar

from pydantic import (
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    field_serializer,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass
from pydantic_core import ArgsKwargs

from storage.errors import InvalidNameError
from storage.location import RUN_NAME_RULE, validate_run_name
from trainer.constants import DEFAULT_KEEP_LAST, PREEMPTION_POLL_STEPS
from trainer.data_spec import FileSource
from trainer.entry_points import (
    DEFAULT_ENTRY_FNS,
    ENTRY_POINT_FORMS,
    EntryPoint,
    is_import_target,
    load_entry_point,
    parse_entry_point,
)
from trainer.errors import JobSpecError
from trainer.job_schema import (
    BATCH_RULE,
    EPOCHS_RULE,
    MAX_BATCH_SIZE,
    MAX_EPOCHS,
    MAX_INT64,
    MAX_SEED,
    MAX_STEPS,
    SCHEMA_CONFIG,
    SEED_RULE,
    Rule,
    drop_nulls,
    first_error,
    invalid,
)

__all__ = [
    "CALLBACK_HINT",
    "CALLBACK_KINDS",
    "CallbackSpec",
    "CheckpointPolicy",
    "EntryPoint",
    "FileSource",
    "JobFields",
    "TrainJob",
    "field_default",
    "load_entry_point",
    "load_job_entry",
    "parse_entry_point",
]

#: Callback kinds a job may name; ``trainer.training.build_callbacks`` maps each to a tf.keras
#: callback. ``custom``: ``{entry: file.py:fn, ...kwargs}``, ``fn(**kwargs)`` returns one.
CALLBACK_KINDS = (
    "early_stopping",
    "reduce_lr_on_plateau",
    "model_checkpoint",
    "tensorboard",
    "custom",
)
_CUSTOM_ENTRY_HINT = "expected 'path/to/file.py:fn' (fn(**kwargs) returns a Keras callback)"
CALLBACK_HINT = "expected one mapping {kind: {arguments}}, e.g. {early_stopping: {patience: 5}}"
_CALLBACKS_HINT = "expected a list such as [{early_stopping: {patience: 5}}]"
_WARM_IMPORTS_HINT = "expected a list of modules or files, such as [sklearn.datasets, features.py]"


@dataclass(frozen=True, kw_only=True, config=SCHEMA_CONFIG)
class CheckpointPolicy:
    """When to save and what to keep (job spec section ``checkpoint``)."""

    every_steps: Annotated[
        StrictInt,
        Field(ge=0, le=MAX_STEPS),
        Rule(f"0 (epoch ends only) or an integer from 1 to {MAX_STEPS}"),
    ] = 0
    """Also save every N global steps (0: epoch ends only)."""
    every_epoch: StrictBool = True
    """Save at every epoch end."""
    keep_last: Annotated[
        StrictInt, Field(ge=0, le=MAX_INT64), Rule("0 (keep all) or an integer >= 1 (int64)")
    ] = DEFAULT_KEEP_LAST
    """Committed checkpoints to keep (0 = all)."""
    keep_every: Annotated[
        StrictInt, Field(ge=0, le=MAX_STEPS), Rule(f"0 (none) or an integer from 1 to {MAX_STEPS}")
    ] = 0
    """Also keep every checkpoint whose step is a multiple of this (0 = none)."""
    async_upload: Annotated[StrictBool, Field(alias="async")] = True
    """Upload in the background; a step is blocked only for the local write (YAML: ``async``)."""

    @model_validator(mode="after")
    def _saves_something(self) -> CheckpointPolicy:
        if self.every_steps == 0 and not self.every_epoch:
            raise invalid(
                "with checkpoint.every_epoch false nothing would be saved before the end; "
                "set every_steps >= 1",
                0,
                "every_steps",
            )
        return self


def _callback_item_schema() -> dict[str, Any]:
    kinds: dict[str, Any] = {k: {"type": ["object", "null"]} for k in CALLBACK_KINDS}
    kinds["custom"] = {
        "type": "object",
        "properties": {"entry": {"type": "string", "pattern": r"^[^:]+:[A-Za-z_][A-Za-z0-9_]*$"}},
        "required": ["entry"],
    }
    return {
        "type": "object",
        "description": "{kind: {keyword arguments}}; kinds: " + ", ".join(CALLBACK_KINDS),
        "properties": kinds,
        "additionalProperties": False,
        "minProperties": 1,
        "maxProperties": 1,
    }


@dataclass(frozen=True, kw_only=True, config=SCHEMA_CONFIG)
class CallbackSpec:
    """One Keras callback of the job: written ``{kind: {kwargs}}`` (or just ``kind``)."""

    kind: StrictStr
    kwargs: dict[Any, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _from_obj(cls, obj: Any) -> Any:
        if isinstance(obj, CallbackSpec | ArgsKwargs):
            return obj
        if isinstance(obj, str):
            obj = {obj: {}}
        if not isinstance(obj, Mapping) or len(obj) != 1:
            raise invalid(CALLBACK_HINT, obj)
        ((kind, kwargs),) = obj.items()
        if kind not in CALLBACK_KINDS:
            raise invalid(
                "unknown callback kind; allowed: " + ", ".join(map(repr, CALLBACK_KINDS)), kind
            )
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping):
            raise invalid("expected a mapping of keyword arguments", kwargs, str(kind))
        if kind == "custom":
            try:
                parse_entry_point(kwargs.get("entry"))  # type: ignore[arg-type]
            except ValueError:
                raise invalid(_CUSTOM_ENTRY_HINT, kwargs.get("entry"), "custom.entry") from None
        return {"kind": kind, "kwargs": dict(kwargs)}

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        return _callback_item_schema()

    def to_obj(self) -> dict[str, Any]:
        return {self.kind: dict(self.kwargs)}


@dataclass(frozen=True, kw_only=True, config=SCHEMA_CONFIG)
class JobFields:
    """The fields the YAML job spec and the worker's :class:`TrainJob` share, declared once."""

    #: Entry-point fields that may leave out ``:fn`` (the spec: none).
    _default_entry_fns: ClassVar[Mapping[str, str]] = DEFAULT_ENTRY_FNS

    name: StrictStr
    """Run name; the run lives at ``<storage>/<name>``."""
    model: StrictStr
    """``path/to/file.py:fn`` or ``pkg.mod:fn``; ``fn(config)`` returns a compiled tf.keras model."""
    data: StrictStr | FileSource
    """Entry point (``fn(ctx)`` returns a tf.data.Dataset of unbatched (x, y) in a fixed order,
    or NumPy arrays ``(x, y[, w])``), or files spotrain reads itself:
    ``{parquet: URL, features: [...], label: y}`` (or ``tfrecord: URL``)."""
    val_data: StrictStr | FileSource | None = None
    """Like ``data``, for validation at each epoch end."""
    config: dict[Any, Any] = Field(default_factory=dict)
    """Free mapping passed to your functions."""
    epochs: Annotated[StrictInt, Field(ge=1, le=MAX_EPOCHS), EPOCHS_RULE] = 1
    """Epochs to train."""
    global_batch_size: Annotated[StrictInt, Field(ge=1, le=MAX_BATCH_SIZE), BATCH_RULE] = 32
    """Batch size over all workers."""
    seed: Annotated[StrictInt, Field(ge=0, le=MAX_SEED), SEED_RULE] = 0
    """Seed of weights init, shuffling, dropout."""
    deterministic: StrictBool = True
    """Op determinism + seeded random state: resumes are bitwise exact."""
    storage_options: dict[Any, Any] = Field(default_factory=dict)
    """fsspec options (endpoint, region...); put secrets in the environment."""
    checkpoint: CheckpointPolicy = Field(default_factory=CheckpointPolicy)
    """When to save and what to keep."""
    callbacks: tuple[CallbackSpec, ...] = ()
    """List of ``{kind: {kwargs}}``."""
    preemption_poll_steps: Annotated[
        StrictInt, Field(ge=0, le=MAX_STEPS), Rule(f"an integer from 0 (off) to {MAX_STEPS}")
    ] = PREEMPTION_POLL_STEPS
    """How often (in steps) every worker checks for a preemption notice."""
    warm_imports: tuple[StrictStr, ...] = ()
    """Modules (``pkg.mod``) or files (``path/to/file.py``) a warm spare imports ahead of a
    fault, after TensorFlow: your code's slow imports. They must not run TensorFlow ops when
    imported (the collectives are configured after them)."""

    @field_validator("name")
    @classmethod
    def _run_name(cls, value: str) -> str:
        try:
            return validate_run_name(value)
        except InvalidNameError:
            raise invalid("allowed: " + RUN_NAME_RULE, value) from None

    @field_validator("model", "data", "val_data", mode="before")
    @classmethod
    def _entry_point(cls, value: Any, info: ValidationInfo) -> Any:
        if value is None:
            return value
        if info.field_name in ("data", "val_data"):
            if isinstance(value, FileSource):  # re-validated (dataclasses.replace)
                return value
            if isinstance(value, Mapping):
                return _file_source(value)
        if not isinstance(value, str):
            raise invalid(f"expected a string {ENTRY_POINT_FORMS}", value)
        try:
            parse_entry_point(value, cls._default_entry_fns.get(info.field_name or "", ""))
        except ValueError as exc:
            raise invalid(str(exc), value) from None
        return value.strip()

    @field_validator("warm_imports", mode="before")
    @classmethod
    def _import_targets(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise invalid(_WARM_IMPORTS_HINT, value)
        for i, target in enumerate(value):
            if not isinstance(target, str) or not is_import_target(target.strip()):
                raise invalid(_WARM_IMPORTS_HINT, target, i)
        return tuple(t.strip() for t in value)

    @field_validator("callbacks", mode="before")
    @classmethod
    def _callback_list(cls, value: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise invalid(_CALLBACKS_HINT, value)
        return value

    @field_serializer("callbacks")
    def _dump_callbacks(self, value: tuple[CallbackSpec, ...]) -> list[dict[str, Any]]:
        return [c.to_obj() for c in value]


@dataclass(frozen=True, kw_only=True, config=SCHEMA_CONFIG)
class TrainJob(JobFields):
    """Everything a worker needs to train one run. ``to_dict()`` is the Ray worker config.

    Entry points without ``:fn`` name ``build_model``, ``make_dataset``, ``make_val_dataset``.
    """

    run_url: Annotated[StrictStr, Field(min_length=1), Rule("a non-empty string")]
    """Where the run lives (absolute: workers run in another directory than the driver)."""
    working_dir: StrictStr | None = None
    """Where relative entry points are resolved (default: the current directory)."""
    use_gpu: StrictBool = False
    managed_input: StrictBool = True
    """spotrain shuffles (seeded by seed and epoch), batches and shards; false hands the user's
    dataset to Keras as is (exact resume is then the user's responsibility)."""
    shuffle_buffer: Annotated[
        StrictInt | None, Field(ge=1, le=MAX_INT64), Rule("an integer >= 1 (int64) or null")
    ] = None
    """Examples in the shuffle buffer (None = the whole dataset, capped by
    trainer.constants.DEFAULT_SHUFFLE_BUFFER)."""
    lease_generation: Annotated[StrictInt | None, Field(ge=0), Rule("an integer >= 0 or null")] = (
        None
    )
    """The coordinator's lease generation: the worker commits and deletes under it (fenced);
    None = unfenced (a job run without a coordinator)."""

    def to_dict(self) -> dict[str, Any]:
        return _TRAIN_JOB.dump_python(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainJob:
        """Validate ``data`` (field names, not YAML aliases); :class:`JobSpecError` naming the
        first bad field."""
        if not isinstance(data, Mapping):
            raise JobSpecError("<job>", type(data).__name__, "give a mapping of job fields")
        try:
            return _TRAIN_JOB.validate_python(drop_nulls(data, cls), by_alias=False, by_name=True)
        except ValidationError as exc:
            raise JobSpecError(*first_error(exc, cls, by_alias=False)) from None

    def replace(self, **changes: Any) -> TrainJob:
        try:
            return dataclasses.replace(self, **changes)
        except ValidationError as exc:
            raise JobSpecError(*first_error(exc, type(self), by_alias=False)) from None


_TRAIN_JOB: TypeAdapter[TrainJob] = TypeAdapter(TrainJob)
_FILE_SOURCE: TypeAdapter[FileSource] = TypeAdapter(FileSource)


def _file_source(value: Mapping[str, Any]) -> FileSource:
    """``data: {parquet: ...}`` validated, its errors named below the field (``data.label``)."""
    try:
        return _FILE_SOURCE.validate_python(drop_nulls(value, FileSource))
    except ValidationError as exc:
        field, bad, allowed = first_error(exc, FileSource, by_alias=True)
        raise invalid(allowed, bad, field) from None


def field_default(cls: type, name: str) -> Any:
    """The default declared for field ``name`` of a schema class (for readers of stored specs)."""
    (declared,) = (f for f in dataclasses.fields(cls) if f.name == name)
    if declared.default is dataclasses.MISSING:
        raise KeyError(f"{cls.__name__}.{name} has no default")
    return declared.default


def load_job_entry(job: TrainJob, field_name: str) -> Callable | None:
    """Load the entry point in ``job.<field_name>`` (None when unset or a file source)."""
    spec = getattr(job, field_name)
    if spec is None or isinstance(spec, FileSource):
        return None
    return load_entry_point(spec, job.working_dir, DEFAULT_ENTRY_FNS.get(field_name, ""))
