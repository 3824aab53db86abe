"""The job spec: one YAML file describing a training run, validated with errors that name the field.

Example (every field, with its default, is documented in README.md, "The job spec")::

    name: digits-mlp
    model: examples/digits.py:build_model
    data: examples/digits.py:make_dataset
    val_data: examples/digits.py:make_val_dataset
    config: {hidden: 64}
    epochs: 20
    global_batch_size: 128
    seed: 1234
    deterministic: true
    storage: file://./runs
    storage_options: {}
    checkpoint: {every_steps: 50, every_epoch: true, keep_last: 3, keep_every: 0, async: true}
    scaling: {workers: 2, use_gpu: false, cpus_per_worker: 1, gpus_per_worker: 0}
    failures: {max_preemptions: -1, max_failures: 3, backoff_s: 5}
    callbacks:
      - early_stopping: {monitor: val_loss, patience: 5}

The schema is declared once: :class:`JobSpec` extends ``trainer.job.JobFields`` (the fields the
worker's ``TrainJob`` shares) with the cluster-only ones (``storage``, ``scaling``,
``failures``). Field lists, defaults, ``to_dict``, ``train_job_dict`` and the JSON Schema
(``spotrain schema``) are derived from it. Entry points (``model``, ``data``, ``val_data``) must
name their function (``file.py:fn`` / ``pkg.mod:fn``) and are checked without running the
user's code (``cluster.entry_points``). Neither this module nor ``trainer.job`` imports
TensorFlow or Ray.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

import yaml
from pydantic import (
    Field,
    StrictBool,
    StrictFloat,
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
from pydantic.json_schema import SkipJsonSchema

from cluster import constants
from cluster.entry_points import entry_point_problem
from cluster.errors import SpecError, one_of
from storage.location import join_run_url
from storage.redaction import redact, redact_url
from trainer.entry_points import parse_entry_point
from trainer.job import CALLBACK_HINT, CheckpointPolicy, FileSource, JobFields, TrainJob
from trainer.job_schema import (
    POSITIVE_INT,
    SCHEMA_CONFIG,
    Rule,
    drop_nulls,
    first_error,
    invalid,
    schema_fields,
    section_type,
    yaml_key,
)

__all__ = [
    "CheckpointSpec",
    "FailureSpec",
    "JobSpec",
    "ScalingSpec",
    "SpecError",
    "json_schema",
    "load_spec",
    "parse_spec",
]

#: The ``checkpoint`` section is the trainer's policy, as is.
CheckpointSpec = CheckpointPolicy

_WORKERS_RULE = "an integer >= 1 or [min, max] with 1 <= min <= max"
_GPUS_RULE = "0, or a number > 0 together with scaling.use_gpu: true"
_BUDGET = Rule("-1 (unlimited), 0 (no retries) or a positive integer")
_STORAGE_RULE = "an fsspec URL such as file://./runs or s3://bucket/prefix"


_Workers = Annotated[StrictInt, Field(ge=1)]


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def _is_storage_url(value: str) -> bool:
    return bool(value) and value == value.strip()


@dataclass(frozen=True, kw_only=True, config=SCHEMA_CONFIG)
class ScalingSpec:
    """How many workers and what each gets."""

    workers: _Workers | tuple[_Workers, _Workers] = 2
    """Ray Train workers; ``[min, max]`` makes the run elastic."""
    use_gpu: StrictBool = False
    """One GPU per worker, NCCL collectives."""
    cpus_per_worker: Annotated[StrictFloat, Field(gt=0), Rule("a number > 0")] = 1.0
    """CPUs reserved per worker."""
    gpus_per_worker: Annotated[StrictFloat, Field(ge=0), Rule(_GPUS_RULE)] = 0.0
    """GPUs per worker when ``use_gpu`` (0 = Ray's default of 1)."""
    resize_check_s: Annotated[StrictFloat, Field(gt=0), Rule("a number of seconds > 0")] = 60.0
    """Elastic runs: how often Ray Train checks whether more workers fit and, if so, restarts
    the group larger from the latest checkpoint."""

    @field_validator("workers", mode="before")
    @classmethod
    def _workers(cls, value: Any) -> Any:
        if isinstance(value, list | tuple):
            if len(value) != 2 or not all(map(_positive_int, value)) or value[0] > value[1]:
                raise invalid("allowed: " + _WORKERS_RULE, value)
            return (value[0], value[1])
        if not _positive_int(value):
            raise invalid("allowed: " + POSITIVE_INT.text, value)
        return value

    @model_validator(mode="after")
    def _gpus_need_use_gpu(self) -> ScalingSpec:
        if self.gpus_per_worker > 0 and not self.use_gpu:
            raise invalid("allowed: " + _GPUS_RULE, self.gpus_per_worker, "gpus_per_worker")
        return self

    @field_serializer("workers")
    def _dump_workers(self, value: int | tuple[int, int]) -> int | list[int]:
        return list(value) if isinstance(value, tuple) else value

    @property
    def elastic(self) -> bool:
        return isinstance(self.workers, tuple)

    @property
    def max_workers(self) -> int:
        return self.workers[1] if isinstance(self.workers, tuple) else self.workers


@dataclass(frozen=True, kw_only=True, config=SCHEMA_CONFIG)
class FailureSpec:
    """Retry budgets (-1 = unlimited) and the backoff between attempts."""

    max_preemptions: Annotated[StrictInt, Field(ge=-1), _BUDGET] = constants.DEFAULT_MAX_PREEMPTIONS
    """Preemptions (node drained/reclaimed, SIGTERM'd worker or driver) to survive."""
    max_failures: Annotated[StrictInt, Field(ge=-1), _BUDGET] = constants.DEFAULT_MAX_FAILURES
    """Other infrastructure failures (worker or node lost without notice, storage faults) to
    survive. Errors in the user's code are never retried."""
    backoff_s: Annotated[StrictFloat, Field(ge=0), Rule("a number of seconds >= 0")] = (
        constants.DEFAULT_BACKOFF_S
    )
    """Base delay before a restart by the driver, doubled per consecutive failure, jittered."""


def _spec_schema_extra(schema: dict[str, Any]) -> None:
    schema["properties"]["preemption_poll_steps"]["minimum"] = 1


@dataclass(
    frozen=True, kw_only=True, config={**SCHEMA_CONFIG, "json_schema_extra": _spec_schema_extra}
)
class JobSpec(JobFields):
    """A validated job spec. Build it with :func:`load_spec` or :func:`parse_spec`."""

    _default_entry_fns: ClassVar[Mapping[str, str]] = {}
    #: Attributes that are not part of the YAML (set by :func:`parse_spec`).
    _internal_fields: ClassVar[tuple[str, ...]] = ("working_dir", "source")

    storage: StrictStr = constants.DEFAULT_STORAGE
    """fsspec base URL of runs; run URL = ``<storage>/<name>``."""
    scaling: ScalingSpec = Field(default_factory=ScalingSpec)
    failures: FailureSpec = Field(default_factory=FailureSpec)
    working_dir: SkipJsonSchema[str] = Field("", exclude=True)
    """Where relative entry points are resolved (absolute; default: the current directory)."""
    source: SkipJsonSchema[str | None] = Field(None, exclude=True)
    """The file the spec came from, for messages."""

    @field_validator("model", "data", "val_data")
    @classmethod
    def _entry_point_exists(cls, value: Any, info: ValidationInfo) -> Any:
        ctx = info.context or {}
        entry, field = (value.map, "map") if isinstance(value, FileSource) else (value, "")
        if entry is not None and ctx.get("check_entry_points"):
            problem = entry_point_problem(parse_entry_point(entry), ctx["working_dir"])
            if problem:
                raise invalid(problem, entry, field)
        return value

    @field_validator("preemption_poll_steps", mode="before")
    @classmethod
    def _poll_on(cls, value: Any) -> Any:
        if isinstance(value, int) and not isinstance(value, bool) and value < 1:
            raise invalid("allowed: " + POSITIVE_INT.text, value)  # the worker's 0 = off
        return value

    @field_validator("callbacks", mode="before")
    @classmethod
    def _callbacks_are_mappings(cls, value: Any) -> Any:
        for i, item in enumerate(value if isinstance(value, list | tuple) else ()):
            if isinstance(item, str):  # the worker's shorthand ``kind`` is not for specs
                raise invalid(CALLBACK_HINT, item, i)
        return value

    @field_validator("storage")
    @classmethod
    def _storage_url(cls, value: str) -> str:
        if not _is_storage_url(value):
            raise invalid("allowed: " + _STORAGE_RULE, value)
        return value

    @model_validator(mode="after")
    def _batch_divides_workers(self) -> JobSpec:
        # every world size the run may have (elastic: each of [min, max]) divides the batch
        workers = self.scaling.workers
        low, high = workers if isinstance(workers, tuple) else (workers, workers)
        gbs = self.global_batch_size
        bad = next((n for n in range(low, min(high, gbs + 1) + 1) if gbs % n), None)
        if bad is not None:
            rule = f"a multiple of scaling.workers ({workers})"
            if isinstance(workers, tuple):
                rule = f"a multiple of every world size in {list(workers)} ({bad} is not)"
            raise invalid(f"allowed: {rule}", gbs, "global_batch_size")
        return self

    @property
    def run_url(self) -> str:
        """``<storage>/<name>``, validated by storage."""
        return join_run_url(self.storage, self.name)

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able data, in the YAML's shape (for the run record)."""
        out = _SPEC.dump_python(self, by_alias=True)
        out["storage"] = redact_url(self.storage)
        out["storage_options"] = redact(self.storage_options)
        for key in ("data", "val_data"):
            if isinstance(out.get(key), Mapping):
                out[key] = redact(out[key])
        return out

    def with_overrides(
        self,
        *,
        workers: int | None = None,
        storage: str | None = None,
        epochs: int | None = None,
    ) -> JobSpec:
        """Apply command-line overrides (``--workers``, ``--storage``, ``--epochs``), validated."""
        changes: dict[str, Any] = {}
        if workers is not None:
            _check_positive_int("--workers", workers, self.source)
            changes["scaling"] = dataclasses.replace(self.scaling, workers=workers)
        if storage is not None:
            if not _is_storage_url(storage):
                raise SpecError("--storage", storage, "allowed: " + _STORAGE_RULE, self.source)
            changes["storage"] = storage
        if epochs is not None:
            _check_positive_int("--epochs", epochs, self.source)
            changes["epochs"] = epochs
        try:
            return dataclasses.replace(self, **changes) if changes else self
        except ValidationError as exc:
            field, value, allowed = first_error(exc, JobSpec, by_alias=True)
            flag = {"epochs": "--epochs", "storage": "--storage"}.get(field, field)
            if workers is not None and field == "global_batch_size":
                allowed += f" (with --workers {workers})"
            raise SpecError(flag, value, allowed, self.source) from None

    def to_train_job(self) -> TrainJob:
        """Convert to the worker's ``trainer.job.TrainJob``."""
        return TrainJob.from_dict(self.train_job_dict())

    def train_job_dict(self, run_url: str | None = None) -> dict[str, Any]:
        """The ``TrainJob.from_dict`` input (also Ray's ``train_loop_config``): the shared
        fields by name, plus the run URL (absolute), working dir and ``use_gpu``."""
        shared = schema_fields(JobFields)
        values = {k: v for k, v in _SPEC.dump_python(self).items() if k in shared}
        values["run_url"] = run_url or absolute_run_url(self.run_url)
        values["working_dir"] = self.working_dir or None
        values["use_gpu"] = self.scaling.use_gpu
        return values


_SPEC: TypeAdapter[JobSpec] = TypeAdapter(JobSpec)


def yaml_fields() -> list[str]:
    """The top-level keys a job spec may have."""
    return [
        yaml_key(name, info)
        for name, info in schema_fields(JobSpec).items()
        if name not in JobSpec._internal_fields
    ]


def json_schema() -> dict[str, Any]:
    """The JSON Schema of a job spec file (YAML keys, e.g. ``async``), for editors."""
    schema = _SPEC.json_schema(by_alias=True, mode="validation")
    _factory_defaults(schema["properties"], JobSpec)
    for info in schema_fields(JobSpec).values():
        section = section_type(info)
        if section is not None:
            _factory_defaults(schema["$defs"][section.__name__]["properties"], section)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "spotrain job spec",
        **{k: v for k, v in schema.items() if k != "title"},
    }


def _factory_defaults(properties: dict[str, Any], cls: type) -> None:
    """Show the defaults pydantic leaves out of a schema: those made by a ``default_factory``."""
    for name, info in schema_fields(cls).items():
        key = yaml_key(name, info)
        if key in properties and info.default_factory is not None:
            value = info.default_factory()
            properties[key]["default"] = TypeAdapter(type(value)).dump_python(
                value, mode="json", by_alias=True
            )


def load_spec(
    path: str | os.PathLike[str], working_dir: str | None = None, check_entry_points: bool = True
) -> JobSpec:
    """Read and validate a job spec YAML file. Raises :class:`SpecError` (one line)."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except (OSError, UnicodeDecodeError) as exc:
        why = exc.strerror if isinstance(exc, OSError) else f"not text ({exc.reason})"
        raise SpecError("(file)", source, f"cannot read the job spec: {why}") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        at = f" at line {where.line + 1}, column {where.column + 1}" if where else ""
        problem = getattr(exc, "problem", None) or " ".join(str(exc).split())
        raise SpecError("(file)", source, f"not valid YAML{at}: {problem}") from None
    return parse_spec(
        raw, working_dir=working_dir, source=source, check_entry_points=check_entry_points
    )


def parse_spec(
    raw: Any,
    working_dir: str | None = None,
    source: str | None = None,
    check_entry_points: bool = True,
) -> JobSpec:
    """Validate a parsed YAML document. Raises :class:`SpecError` naming the first bad field."""
    if not isinstance(raw, Mapping):
        raise SpecError(
            "(top level)", raw, "expected a mapping of fields, e.g. 'name: my-job'", source
        )
    allowed = yaml_fields()
    unknown = sorted((k for k in raw if k not in allowed), key=str)
    if unknown:
        key = unknown[0]
        raise SpecError(key, raw[key], "unknown field; " + one_of(sorted(allowed)), source)
    wd = os.path.abspath(working_dir or os.getcwd())
    data = {**drop_nulls(raw, JobSpec), "working_dir": wd, "source": source}
    context = {"working_dir": wd, "check_entry_points": check_entry_points}
    try:
        return _SPEC.validate_python(data, by_alias=True, by_name=False, context=context)
    except ValidationError as exc:
        raise SpecError(*first_error(exc, JobSpec, by_alias=True), source) from None


def _check_positive_int(name: str, value: Any, source: str | None) -> None:
    if not _positive_int(value):
        raise SpecError(name, value, "allowed: " + POSITIVE_INT.text, source)


def absolute_run_url(url: str) -> str:
    """Make a local run URL absolute (Ray workers run in another directory than the driver)."""
    if url.startswith("file://"):
        path = url[len("file://") :]
        return "file://" + os.path.abspath(path)
    if "://" not in url:
        return os.path.abspath(url)
    return url
