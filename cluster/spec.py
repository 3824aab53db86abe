"""The job spec: one YAML file describing a training run, validated with errors that name the field.

Example (every field, with its default, is documented in README.md, "Job spec reference")::

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

Entry points (``model``, ``data``, ``val_data``) are ``path/to/file.py:function`` (relative to
the working directory, i.e. where ``spotrain run`` runs) or ``package.module:function``. They are
checked without running the user's code: a ``.py`` file is parsed and must define the function
at top level; a module must be importable by name (its source is parsed the same way).

This module imports neither TensorFlow nor Ray; :meth:`JobSpec.to_train_job` imports
``trainer.job`` lazily.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from cluster import constants
from cluster.errors import SpecError, one_of

__all__ = [
    "CheckpointSpec",
    "FailureSpec",
    "JobSpec",
    "ScalingSpec",
    "SpecError",
    "load_spec",
    "parse_spec",
]

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
ENTRY_RE = re.compile(r"^(?P<target>[^:]+):(?P<fn>[A-Za-z_][A-Za-z0-9_]*)$")
MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class CheckpointSpec:
    """When to save and what to keep.

    Attributes:
        every_steps: save every N global steps (0 = only at epoch ends / preemptions).
        every_epoch: also save at the end of every epoch.
        keep_last: keep the last K committed checkpoints (0 = all).
        keep_every: also keep every M-th step forever (0 = none).
        async_upload: the chief writes locally and a background upload commits (spec key
            ``async``).
    """

    every_steps: int = 0
    every_epoch: bool = True
    keep_last: int = 3
    keep_every: int = 0
    async_upload: bool = True


@dataclass(frozen=True)
class ScalingSpec:
    """How many workers and what each gets.

    Attributes:
        workers: number of Ray Train workers; ``(min, max)`` makes the run elastic.
        use_gpu: give each worker a GPU (NCCL collectives).
        cpus_per_worker: CPUs reserved per worker.
        gpus_per_worker: GPUs per worker when ``use_gpu`` (0 = Ray's default of 1).
        resize_check_s: elastic runs only: how often Ray Train checks whether more workers fit
            and, if so, restarts the group larger from the latest checkpoint.
    """

    workers: int | tuple[int, int] = 2
    use_gpu: bool = False
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    resize_check_s: float = 60.0

    @property
    def elastic(self) -> bool:
        return isinstance(self.workers, tuple)

    @property
    def max_workers(self) -> int:
        return self.workers[1] if isinstance(self.workers, tuple) else self.workers


@dataclass(frozen=True)
class FailureSpec:
    """Retry budgets (-1 = unlimited) and the backoff between attempts.

    Attributes:
        max_preemptions: preemptions (node drained/reclaimed, SIGTERM'd worker or driver) to
            survive; -1 = unlimited.
        max_failures: other infrastructure failures (worker or node lost without notice, storage
            faults) to survive; -1 = unlimited. Errors in the user's code are never retried.
        backoff_s: base delay before restarting, doubled per consecutive failure, jittered.
    """

    max_preemptions: int = constants.DEFAULT_MAX_PREEMPTIONS
    max_failures: int = constants.DEFAULT_MAX_FAILURES
    backoff_s: float = constants.DEFAULT_BACKOFF_S


@dataclass(frozen=True)
class JobSpec:
    """A validated job spec. Build it with :func:`load_spec` or :func:`parse_spec`."""

    name: str
    model: str
    data: str
    val_data: str | None = None
    config: dict[str, Any] = field(default_factory=dict)
    epochs: int = 1
    global_batch_size: int = 32
    seed: int = 0
    deterministic: bool = True
    storage: str = constants.DEFAULT_STORAGE
    storage_options: dict[str, Any] = field(default_factory=dict)
    checkpoint: CheckpointSpec = field(default_factory=CheckpointSpec)
    scaling: ScalingSpec = field(default_factory=ScalingSpec)
    failures: FailureSpec = field(default_factory=FailureSpec)
    callbacks: tuple[dict[str, dict[str, Any]], ...] = ()
    preemption_poll_steps: int = 10
    #: Where relative entry points are resolved (absolute; default: the current directory).
    working_dir: str = ""
    #: The file the spec came from, for messages (not part of the spec).
    source: str | None = None

    @property
    def run_url(self) -> str:
        """``<storage>/<name>``, validated by storage."""
        from storage.location import join_run_url

        return join_run_url(self.storage, self.name)

    def _training_fields(self) -> dict[str, Any]:
        """Fields the YAML spec and the trainer's TrainJob share, under the same names."""
        return {
            "model": self.model,
            "data": self.data,
            "val_data": self.val_data,
            "config": dict(self.config),
            "epochs": self.epochs,
            "global_batch_size": self.global_batch_size,
            "seed": self.seed,
            "deterministic": self.deterministic,
        }

    def to_dict(self) -> dict[str, Any]:
        """The spec as plain JSON-able data, in the YAML's shape (for the run record)."""
        out: dict[str, Any] = {
            "name": self.name,
            **self._training_fields(),
            "storage": self.storage,
            "storage_options": _redact_options(self.storage_options),
            "checkpoint": {
                "every_steps": self.checkpoint.every_steps,
                "every_epoch": self.checkpoint.every_epoch,
                "keep_last": self.checkpoint.keep_last,
                "keep_every": self.checkpoint.keep_every,
                "async": self.checkpoint.async_upload,
            },
            "scaling": {
                "workers": list(self.scaling.workers)
                if isinstance(self.scaling.workers, tuple)
                else self.scaling.workers,
                "use_gpu": self.scaling.use_gpu,
                "cpus_per_worker": self.scaling.cpus_per_worker,
                "gpus_per_worker": self.scaling.gpus_per_worker,
                "resize_check_s": self.scaling.resize_check_s,
            },
            "failures": {
                "max_preemptions": self.failures.max_preemptions,
                "max_failures": self.failures.max_failures,
                "backoff_s": self.failures.backoff_s,
            },
            "callbacks": [dict(c) for c in self.callbacks],
            "preemption_poll_steps": self.preemption_poll_steps,
        }
        return out

    def with_overrides(
        self,
        *,
        workers: int | None = None,
        storage: str | None = None,
        epochs: int | None = None,
    ) -> JobSpec:
        """Apply command-line overrides (``--workers``, ``--storage``, ``--epochs``), validated."""
        spec = self
        if workers is not None:
            _check_positive_int("--workers", workers, self.source)
            spec = dataclasses.replace(
                spec, scaling=dataclasses.replace(spec.scaling, workers=workers)
            )
        if storage is not None:
            _check_storage("--storage", storage, self.source)
            spec = dataclasses.replace(spec, storage=storage)
        if epochs is not None:
            _check_positive_int("--epochs", epochs, self.source)
            spec = dataclasses.replace(spec, epochs=epochs)
        return spec

    def to_train_job(self) -> Any:
        """Convert to ``trainer.job.TrainJob`` (imported lazily: it may pull in TensorFlow)."""
        from trainer.job import TrainJob

        return TrainJob.from_dict(self.train_job_dict())

    def train_job_dict(self, run_url: str | None = None) -> dict[str, Any]:
        """The ``TrainJob.from_dict`` input (also Ray's ``train_loop_config``)."""
        checkpoint = {
            "every_steps": self.checkpoint.every_steps,
            "every_epoch": self.checkpoint.every_epoch,
            "keep_last": self.checkpoint.keep_last,
            "keep_every": self.checkpoint.keep_every,
            "async_upload": self.checkpoint.async_upload,
        }
        values: dict[str, Any] = {
            "name": self.name,
            "run_url": run_url or absolute_run_url(self.run_url),
            "storage_options": dict(self.storage_options),
            **self._training_fields(),
            "checkpoint": checkpoint,
            "callbacks": [dict(c) for c in self.callbacks],
            "working_dir": self.working_dir or None,
            "preemption_poll_steps": self.preemption_poll_steps,
            "use_gpu": self.scaling.use_gpu,
        }
        return values


# --- parsing -------------------------------------------------------------------------------------

_TOP_FIELDS = {
    "name",
    "model",
    "data",
    "val_data",
    "config",
    "epochs",
    "global_batch_size",
    "seed",
    "deterministic",
    "storage",
    "storage_options",
    "checkpoint",
    "scaling",
    "failures",
    "callbacks",
    "preemption_poll_steps",
}
_REQUIRED = ("name", "model", "data")
_CHECKPOINT_FIELDS = ("every_steps", "every_epoch", "keep_last", "keep_every", "async")
_SCALING_FIELDS = ("workers", "use_gpu", "cpus_per_worker", "gpus_per_worker", "resize_check_s")
_FAILURE_FIELDS = ("max_preemptions", "max_failures", "backoff_s")
_SECRET_HINTS = ("key", "secret", "token", "password")


def load_spec(path: str | os.PathLike[str], working_dir: str | None = None) -> JobSpec:
    """Read and validate a job spec YAML file. Raises :class:`SpecError`."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except OSError as exc:
        raise SpecError("(file)", source, f"cannot read the job spec: {exc.strerror}") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError("(file)", source, f"not valid YAML: {exc}") from exc
    return parse_spec(raw, working_dir=working_dir, source=source)


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
    unknown = sorted(set(raw) - _TOP_FIELDS, key=str)
    if unknown:
        raise SpecError(
            unknown[0], raw[unknown[0]], "unknown field; " + one_of(sorted(_TOP_FIELDS)), source
        )
    for key in _REQUIRED:
        if raw.get(key) is None:
            raise SpecError(key, None, "this field is required", source)
    wd = os.path.abspath(working_dir or os.getcwd())

    name = _get(raw, "name", str, source)
    if not NAME_RE.match(name) or len(name) > 63:
        raise SpecError(
            "name",
            name,
            "allowed: lowercase letters, digits and '-' ([a-z0-9-]+, at most 63 "
            "characters, not starting or ending with '-')",
            source,
        )
    model = _entry(raw, "model", wd, source, check_entry_points)
    data = _entry(raw, "data", wd, source, check_entry_points)
    val_data = (
        _entry(raw, "val_data", wd, source, check_entry_points)
        if raw.get("val_data") is not None
        else None
    )
    config = _get(raw, "config", dict, source, default={})
    epochs = _get(raw, "epochs", int, source, default=1)
    _check_positive_int("epochs", epochs, source)
    gbs = _get(raw, "global_batch_size", int, source, default=32)
    _check_positive_int("global_batch_size", gbs, source)
    seed = _get(raw, "seed", int, source, default=0)
    if seed < 0:
        raise SpecError("seed", seed, "allowed: an integer >= 0", source)
    deterministic = _get(raw, "deterministic", bool, source, default=True)
    storage = _get(raw, "storage", str, source, default=constants.DEFAULT_STORAGE)
    _check_storage("storage", storage, source)
    storage_options = _get(raw, "storage_options", dict, source, default={})
    poll = _get(raw, "preemption_poll_steps", int, source, default=10)
    _check_positive_int("preemption_poll_steps", poll, source)

    return JobSpec(
        name=name,
        model=model,
        data=data,
        val_data=val_data,
        config=dict(config),
        epochs=epochs,
        global_batch_size=gbs,
        seed=seed,
        deterministic=deterministic,
        storage=storage,
        storage_options=dict(storage_options),
        checkpoint=_checkpoint(raw.get("checkpoint"), source),
        scaling=_scaling(raw.get("scaling"), source),
        failures=_failures(raw.get("failures"), source),
        callbacks=_callbacks(raw.get("callbacks"), source),
        preemption_poll_steps=poll,
        working_dir=wd,
        source=source,
    )


_TYPE_NAMES = {
    str: "a string",
    int: "an integer",
    bool: "true or false",
    dict: "a mapping",
    float: "a number",
    list: "a list",
}


def _get(
    raw: Mapping[str, Any],
    key: str,
    typ: type,
    source: str | None,
    *,
    prefix: str = "",
    default: Any = None,
) -> Any:
    value = raw.get(key, default)
    if value is None:
        value = default
    name = prefix + key
    if typ is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return _ok(ok, name, value, typ, source, float(value) if ok else None)
    if typ is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, typ)
    return _ok(ok, name, value, typ, source, value)


def _ok(ok: bool, name: str, value: Any, typ: type, source: str | None, result: Any) -> Any:
    if not ok:
        raise SpecError(
            name, value, f"expected {_TYPE_NAMES[typ]}, got {type(value).__name__}", source
        )
    return result


def _check_positive_int(name: str, value: Any, source: str | None) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise SpecError(name, value, "allowed: an integer >= 1", source)


def _check_budget(name: str, value: int, source: str | None) -> None:
    if value < -1:
        raise SpecError(
            name, value, "allowed: -1 (unlimited), 0 (no retries) or a positive integer", source
        )


def _check_storage(name: str, value: str, source: str | None) -> None:
    if not value or value != value.strip():
        raise SpecError(
            name,
            value,
            "allowed: an fsspec URL such as file://./runs or s3://bucket/prefix",
            source,
        )


def _unknown_sub(
    section: str, raw: Mapping[str, Any], allowed: tuple[str, ...], source: str | None
) -> None:
    for key in raw:
        if key not in allowed:
            raise SpecError(
                f"{section}.{key}", raw[key], "unknown field; " + one_of(allowed), source
            )


def _section(raw: Any, section: str, source: str | None) -> Mapping[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise SpecError(section, raw, "expected a mapping", source)
    return raw


def _checkpoint(raw: Any, source: str | None) -> CheckpointSpec:
    sec = _section(raw, "checkpoint", source)
    _unknown_sub("checkpoint", sec, _CHECKPOINT_FIELDS, source)
    d = CheckpointSpec()
    p = "checkpoint."
    every_steps = _get(sec, "every_steps", int, source, prefix=p, default=d.every_steps)
    if every_steps < 0:
        raise SpecError(
            "checkpoint.every_steps",
            every_steps,
            "allowed: 0 (epoch ends only) or an integer >= 1",
            source,
        )
    every_epoch = _get(sec, "every_epoch", bool, source, prefix=p, default=d.every_epoch)
    keep_last = _get(sec, "keep_last", int, source, prefix=p, default=d.keep_last)
    if keep_last < 0:
        raise SpecError(
            "checkpoint.keep_last", keep_last, "allowed: 0 (keep all) or an integer >= 1", source
        )
    keep_every = _get(sec, "keep_every", int, source, prefix=p, default=d.keep_every)
    if keep_every < 0:
        raise SpecError(
            "checkpoint.keep_every", keep_every, "allowed: 0 (none) or an integer >= 1", source
        )
    async_upload = _get(sec, "async", bool, source, prefix=p, default=d.async_upload)
    if every_steps == 0 and not every_epoch:
        raise SpecError(
            "checkpoint.every_steps",
            0,
            "with checkpoint.every_epoch false nothing would be saved before the end; set every_steps >= 1",
            source,
        )
    return CheckpointSpec(every_steps, every_epoch, keep_last, keep_every, async_upload)


def _scaling(raw: Any, source: str | None) -> ScalingSpec:
    sec = _section(raw, "scaling", source)
    _unknown_sub("scaling", sec, _SCALING_FIELDS, source)
    d = ScalingSpec()
    workers_raw = sec.get("workers", d.workers)
    workers: int | tuple[int, int]
    if isinstance(workers_raw, list):
        if (
            len(workers_raw) != 2
            or not all(
                isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in workers_raw
            )
            or workers_raw[0] > workers_raw[1]
        ):
            raise SpecError(
                "scaling.workers",
                workers_raw,
                "allowed: an integer >= 1 or [min, max] with 1 <= min <= max",
                source,
            )
        workers = (workers_raw[0], workers_raw[1])
    else:
        _check_positive_int("scaling.workers", workers_raw, source)
        workers = workers_raw
    p = "scaling."
    use_gpu = _get(sec, "use_gpu", bool, source, prefix=p, default=d.use_gpu)
    cpus = _get(sec, "cpus_per_worker", float, source, prefix=p, default=d.cpus_per_worker)
    if cpus <= 0:
        raise SpecError("scaling.cpus_per_worker", cpus, "allowed: a number > 0", source)
    gpus = _get(sec, "gpus_per_worker", float, source, prefix=p, default=d.gpus_per_worker)
    if gpus < 0 or (gpus > 0 and not use_gpu):
        raise SpecError(
            "scaling.gpus_per_worker",
            gpus,
            "allowed: 0, or a number > 0 together with scaling.use_gpu: true",
            source,
        )
    resize = _get(sec, "resize_check_s", float, source, prefix=p, default=d.resize_check_s)
    if resize <= 0:
        raise SpecError(
            "scaling.resize_check_s", resize, "allowed: a number of seconds > 0", source
        )
    return ScalingSpec(workers, use_gpu, cpus, gpus, resize)


def _failures(raw: Any, source: str | None) -> FailureSpec:
    sec = _section(raw, "failures", source)
    _unknown_sub("failures", sec, _FAILURE_FIELDS, source)
    d = FailureSpec()
    p = "failures."
    max_pre = _get(sec, "max_preemptions", int, source, prefix=p, default=d.max_preemptions)
    _check_budget("failures.max_preemptions", max_pre, source)
    max_fail = _get(sec, "max_failures", int, source, prefix=p, default=d.max_failures)
    _check_budget("failures.max_failures", max_fail, source)
    backoff = _get(sec, "backoff_s", float, source, prefix=p, default=d.backoff_s)
    if backoff < 0:
        raise SpecError("failures.backoff_s", backoff, "allowed: a number of seconds >= 0", source)
    return FailureSpec(max_pre, max_fail, backoff)


def _callbacks(raw: Any, source: str | None) -> tuple[dict[str, dict[str, Any]], ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise SpecError(
            "callbacks", raw, "expected a list such as [{early_stopping: {patience: 5}}]", source
        )
    out = []
    for i, item in enumerate(raw):
        where = f"callbacks[{i}]"
        if not isinstance(item, Mapping) or len(item) != 1:
            raise SpecError(
                where,
                item,
                "expected one mapping {kind: {arguments}}, e.g. {early_stopping: {patience: 5}}",
                source,
            )
        ((kind, kwargs),) = item.items()
        if kind not in constants.CALLBACK_KINDS:
            raise SpecError(
                where, kind, "unknown callback kind; " + one_of(constants.CALLBACK_KINDS), source
            )
        if kwargs is None:
            kwargs = {}
        if not isinstance(kwargs, Mapping):
            raise SpecError(
                f"{where}.{kind}", kwargs, "expected a mapping of keyword arguments", source
            )
        if kind == "custom" and not (
            isinstance(kwargs.get("entry"), str) and ENTRY_RE.match(kwargs["entry"])
        ):
            raise SpecError(
                f"{where}.custom.entry",
                kwargs.get("entry"),
                "expected 'path/to/file.py:fn' (fn(**kwargs) returns a Keras callback)",
                source,
            )
        out.append({kind: dict(kwargs)})
    return tuple(out)


def _entry(
    raw: Mapping[str, Any], key: str, working_dir: str, source: str | None, check: bool
) -> str:
    value = raw.get(key)
    if not isinstance(value, str):
        raise SpecError(
            key,
            value,
            "expected a string 'path/to/file.py:function' or 'package.module:function'",
            source,
        )
    m = ENTRY_RE.match(value.strip())
    if not m:
        raise SpecError(
            key, value, "expected 'path/to/file.py:function' or 'package.module:function'", source
        )
    target, fn = m.group("target"), m.group("fn")
    if not check:
        return value.strip()
    if target.endswith(".py"):
        path = target if os.path.isabs(target) else os.path.join(working_dir, target)
        if not os.path.isfile(path):
            raise SpecError(
                key,
                value,
                f"file {target!r} not found (relative paths are resolved against {working_dir})",
                source,
            )
        _check_defines(key, value, path, fn, source)
    else:
        if not MODULE_RE.match(target):
            raise SpecError(
                key,
                value,
                "expected 'path/to/file.py:function' or 'package.module:function'",
                source,
            )
        try:
            found = importlib.util.find_spec(target)
        except (ImportError, ValueError) as exc:
            found = None
            why = f"{type(exc).__name__}: {exc}"
        else:
            why = "no such module on sys.path"
        if found is None:
            raise SpecError(key, value, f"module {target!r} cannot be imported ({why})", source)
        if found.origin and found.origin.endswith(".py") and os.path.isfile(found.origin):
            _check_defines(key, value, found.origin, fn, source)
    return value.strip()


def _check_defines(key: str, value: str, path: str, fn: str, source: str | None) -> None:
    try:
        tree = ast.parse(Path(path).read_text(), filename=path)
    except SyntaxError as exc:
        raise SpecError(
            key, value, f"{path} has a syntax error at line {exc.lineno}: {exc.msg}", source
        ) from exc
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, (ast.AnnAssign, ast.AugAssign)) and isinstance(node.target, ast.Name):
            names.add(node.target.id)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    if fn not in names:
        defined = sorted(n for n in names if not n.startswith("_"))
        raise SpecError(
            key,
            value,
            f"{path} defines no top-level {fn!r}; it defines: {', '.join(defined) or 'nothing'}",
            source,
        )


def absolute_run_url(url: str) -> str:
    """Make a local run URL absolute (Ray workers run in another directory than the driver)."""
    if url.startswith("file://"):
        path = url[len("file://") :]
        return "file://" + os.path.abspath(path)
    if "://" not in url:
        return os.path.abspath(url)
    return url


def _redact_options(options: Mapping[str, Any]) -> dict[str, Any]:
    return {
        k: ("***" if any(h in str(k).lower() for h in _SECRET_HINTS) else v)
        for k, v in options.items()
    }
