"""The job a trainer runs: :class:`TrainJob` (JSON-able) and loading of user entry points."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import os
import sys
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from trainer.errors import JobSpecError, UserCodeError

#: Callback kinds a job spec may name, with what they build.
CALLBACK_KINDS = (
    "early_stopping",
    "reduce_lr_on_plateau",
    "model_checkpoint",
    "tensorboard",
    "custom",  # {"entry": "file.py:fn", ...kwargs}: fn(**kwargs) -> tf.keras.callbacks.Callback
)


@dataclass(frozen=True)
class CheckpointPolicy:
    """When to save and what to keep.

    every_steps: save every N global steps (0 = never mid-epoch).
    every_epoch: save at the end of every epoch.
    keep_last: committed checkpoints to keep (0 = all).
    keep_every: additionally keep every checkpoint whose step is a multiple of this (0 = none).
    async_upload: upload in the background (a step is blocked only for the local write).
    """

    every_steps: int = 0
    every_epoch: bool = True
    keep_last: int = 3
    keep_every: int = 0
    async_upload: bool = True

    def validate(self) -> None:
        for name in ("every_steps", "keep_last", "keep_every"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise JobSpecError(f"checkpoint.{name}", value, "use an integer >= 0")
        if self.every_steps == 0 and not self.every_epoch:
            raise JobSpecError(
                "checkpoint.every_steps",
                self.every_steps,
                "set every_steps > 0 or every_epoch: true, otherwise nothing is ever saved",
            )


@dataclass(frozen=True)
class CallbackSpec:
    """One Keras callback from the job spec: ``{kind: kwargs}``."""

    kind: str
    kwargs: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_obj(cls, obj: Any, index: int) -> CallbackSpec:
        if isinstance(obj, CallbackSpec):
            return obj
        if isinstance(obj, str):
            obj = {obj: {}}
        if not isinstance(obj, Mapping) or len(obj) != 1:
            raise JobSpecError(
                f"callbacks[{index}]", obj, "write each callback as a mapping {kind: {kwargs}}"
            )
        ((kind, kwargs),) = obj.items()
        if kind not in CALLBACK_KINDS:
            raise JobSpecError(f"callbacks[{index}]", kind, f"use one of {list(CALLBACK_KINDS)}")
        kwargs = dict(kwargs or {})
        if kind == "custom" and not isinstance(kwargs.get("entry"), str):
            raise JobSpecError(
                f"callbacks[{index}].custom.entry",
                kwargs.get("entry"),
                "give 'entry: path/to/file.py:fn' (fn(**kwargs) returns a Keras callback)",
            )
        return cls(kind=kind, kwargs=kwargs)

    def to_obj(self) -> dict[str, Any]:
        return {self.kind: dict(self.kwargs)}


@dataclass(frozen=True)
class TrainJob:
    """Everything a worker needs to train one run. ``to_dict()`` is the Ray worker config.

    model / data / val_data are entry points: ``"path/to/file.py:fn"`` (relative to
    working_dir) or ``"pkg.mod:fn"``; without ``:fn`` the defaults are ``build_model``,
    ``make_dataset`` and ``make_val_dataset``.
    managed_input: spotrain shuffles (seeded by seed and epoch), batches and shards; False
    hands the user's dataset to Keras as is (exact resume is then the user's responsibility).
    shuffle_buffer: examples in the shuffle buffer (None = the whole dataset, capped by
    trainer.constants.DEFAULT_SHUFFLE_BUFFER).
    """

    name: str
    run_url: str
    model: str
    data: str
    epochs: int
    global_batch_size: int
    val_data: str | None = None
    storage_options: Mapping[str, Any] | None = None
    config: Mapping[str, Any] = field(default_factory=dict)
    seed: int = 0
    deterministic: bool = True
    checkpoint: CheckpointPolicy = field(default_factory=CheckpointPolicy)
    callbacks: tuple[CallbackSpec, ...] = ()
    working_dir: str | None = None
    preemption_poll_steps: int = 10
    use_gpu: bool = False
    managed_input: bool = True
    shuffle_buffer: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        for name in ("name", "run_url", "model", "data"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise JobSpecError(name, value, "give a non-empty string")
        for name, minimum in (("epochs", 1), ("global_batch_size", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
                raise JobSpecError(name, value, f"use an integer >= {minimum}")
        if not isinstance(self.seed, int) or isinstance(self.seed, bool) or self.seed < 0:
            raise JobSpecError("seed", self.seed, "use an integer >= 0")
        if (
            not isinstance(self.preemption_poll_steps, int)
            or isinstance(self.preemption_poll_steps, bool)
            or self.preemption_poll_steps < 0
        ):
            raise JobSpecError(
                "preemption_poll_steps", self.preemption_poll_steps, "use an integer >= 0 (0 = off)"
            )
        if self.shuffle_buffer is not None and (
            not isinstance(self.shuffle_buffer, int) or self.shuffle_buffer < 1
        ):
            raise JobSpecError("shuffle_buffer", self.shuffle_buffer, "use an integer >= 1 or null")
        for name in ("model", "data", "val_data"):
            value = getattr(self, name)
            if value is not None and value.count(":") > 1:
                raise JobSpecError(name, value, "write 'path/to/file.py:fn' or 'pkg.mod:fn'")
        if not isinstance(self.config, Mapping):
            raise JobSpecError("config", self.config, "give a mapping")
        self.checkpoint.validate()

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "checkpoint":
                value = dataclasses.asdict(value)
            elif f.name == "callbacks":
                value = [spec.to_obj() for spec in value]
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f.name] = value
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainJob:
        if not isinstance(data, Mapping):
            raise JobSpecError("<job>", type(data).__name__, "give a mapping of job fields")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise JobSpecError(
                unknown[0], data[unknown[0]], f"unknown field; known: {sorted(known)}"
            )
        missing = [
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
            and f.name not in data
        ]
        if missing:
            raise JobSpecError(missing[0], None, "this field is required")
        kwargs = dict(data)
        ckpt = kwargs.get("checkpoint")
        if ckpt is not None and not isinstance(ckpt, CheckpointPolicy):
            if not isinstance(ckpt, Mapping):
                raise JobSpecError("checkpoint", ckpt, "give a mapping of checkpoint options")
            ck_known = {f.name for f in dataclasses.fields(CheckpointPolicy)}
            bad = sorted(set(ckpt) - ck_known)
            if bad:
                raise JobSpecError(
                    f"checkpoint.{bad[0]}", ckpt[bad[0]], f"unknown; known: {sorted(ck_known)}"
                )
            kwargs["checkpoint"] = CheckpointPolicy(**ckpt)
        cbs = kwargs.get("callbacks")
        if cbs is not None:
            if not isinstance(cbs, list | tuple):
                raise JobSpecError("callbacks", cbs, "give a list of {kind: kwargs}")
            kwargs["callbacks"] = tuple(CallbackSpec.from_obj(c, i) for i, c in enumerate(cbs))
        for name in ("config", "storage_options"):
            if kwargs.get(name) is not None and not isinstance(kwargs[name], Mapping):
                raise JobSpecError(name, kwargs[name], "give a mapping")
        return cls(**kwargs)

    def replace(self, **changes: Any) -> TrainJob:
        return dataclasses.replace(self, **changes)


_DEFAULT_FN = {"model": "build_model", "data": "make_dataset", "val_data": "make_val_dataset"}


def load_entry_point(spec: str, working_dir: str | None = None, default_fn: str = "") -> Callable:
    """Load ``"path/to/file.py:fn"`` (relative to working_dir) or ``"pkg.mod:fn"``.

    Import errors in the user's module become :class:`UserCodeError` with the user traceback.
    """
    target, _, fn_name = spec.partition(":")
    fn_name = fn_name or default_fn
    if not fn_name:
        raise JobSpecError("entry point", spec, "write 'path/to/file.py:fn' or 'pkg.mod:fn'")
    base = working_dir or os.getcwd()
    try:
        if target.endswith(".py"):
            path = os.path.abspath(os.path.join(base, target))
            if not os.path.isfile(path):
                raise JobSpecError(
                    "entry point", spec, f"file {path} does not exist (working_dir={base!r})"
                )
            mod_name = "spotrain_user_" + "".join(c if c.isalnum() else "_" for c in path)
            module = sys.modules.get(mod_name)
            if module is None:
                mspec = importlib.util.spec_from_file_location(mod_name, path)
                if mspec is None or mspec.loader is None:
                    raise JobSpecError("entry point", spec, f"cannot import {path}")
                module = importlib.util.module_from_spec(mspec)
                sys.modules[mod_name] = module
                if os.path.dirname(path) not in sys.path:
                    sys.path.insert(0, os.path.dirname(path))
                try:
                    mspec.loader.exec_module(module)
                except BaseException:
                    del sys.modules[mod_name]
                    raise
        else:
            if working_dir and working_dir not in sys.path:
                sys.path.insert(0, working_dir)
            module = importlib.import_module(target)
    except JobSpecError:
        raise
    except Exception as exc:  # user module import: any error is the user's
        raise UserCodeError(f"import {target}", repr(exc), traceback.format_exc()) from exc
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise JobSpecError("entry point", spec, f"{target} has no callable {fn_name!r}")
    return fn


def load_job_entry(job: TrainJob, field_name: str) -> Callable | None:
    spec = getattr(job, field_name)
    if spec is None:
        return None
    return load_entry_point(spec, job.working_dir, _DEFAULT_FN.get(field_name, ""))
