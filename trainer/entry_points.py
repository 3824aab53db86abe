"""The one grammar of user entry points, ``target:fn``, and loading them (which runs user code).

``target`` is ``path/to/file.py`` (relative to the job's working directory) or a dotted module
name ``pkg.mod``; ``fn`` is a Python identifier. A caller that has a default function name
(``TrainJob``'s ``model``/``data``/``val_data``, see :data:`DEFAULT_ENTRY_FNS`) may let ``:fn``
be left out; the job spec always requires it. :func:`parse_entry_point` runs no user code.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass

from trainer.errors import JobSpecError
from trainer.user_code import user_code

#: The entry-point forms, as error messages quote them.
ENTRY_POINT_FORMS = "'path/to/file.py:function' or 'package.module:function'"
#: The function a ``TrainJob`` entry point names when it leaves out ``:fn``.
DEFAULT_ENTRY_FNS = {"model": "build_model", "data": "make_dataset", "val_data": "make_val_dataset"}

_FN_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_MODULE_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


@dataclass(frozen=True)
class EntryPoint:
    """A parsed ``target:fn``; ``target`` is a ``.py`` path or a dotted module name."""

    target: str
    fn: str

    @property
    def is_file(self) -> bool:
        return self.target.endswith(".py")

    def __str__(self) -> str:
        return f"{self.target}:{self.fn}"


def parse_entry_point(text: str, default_fn: str = "") -> EntryPoint:
    """Parse ``text`` (surrounding whitespace ignored). Without ``:fn``, ``default_fn`` is used;
    with neither, or with a malformed target or name, raise ``ValueError`` (message: the forms)."""
    if not isinstance(text, str):
        raise ValueError(f"expected a string {ENTRY_POINT_FORMS}")
    target, sep, fn = text.strip().partition(":")
    if not sep:
        fn = default_fn
    if not target or ":" in fn or not _FN_RE.match(fn) or not is_import_target(target):
        raise ValueError(f"expected {ENTRY_POINT_FORMS}")
    return EntryPoint(target, fn)


def load_entry_point(spec: str, working_dir: str | None = None, default_fn: str = "") -> Callable:
    """Import the target of ``spec`` (:func:`parse_entry_point`) and return its function.

    A ``.py`` target is relative to ``working_dir`` (default: the current directory). Errors in
    the user's module (at import) become :class:`UserCodeError` with the user's traceback.
    """
    try:
        entry = parse_entry_point(spec, default_fn)
    except ValueError as exc:
        raise JobSpecError("entry point", spec, str(exc)) from None
    with user_code(f"import {entry.target}"):
        module = import_target(entry.target, working_dir, spec)
    fn = getattr(module, entry.fn, None)
    if not callable(fn):
        raise JobSpecError("entry point", spec, f"{entry.target} has no callable {entry.fn!r}")
    return fn


def is_import_target(text: str) -> bool:
    """``text`` is an entry point's target alone: a ``.py`` path or a dotted module name."""
    return text.endswith(".py") or bool(_MODULE_RE.match(text))


def import_target(target: str, working_dir: str | None = None, spec: str = "") -> object:
    """Import a ``.py`` file (relative to ``working_dir``, default: the current directory) or a
    module, once per process: a later call, and :func:`load_entry_point`, get the same module."""
    if target.endswith(".py"):
        return _import_file(target, spec or target, working_dir or os.getcwd())
    return _import_module(target, working_dir)


def _import_file(target: str, spec: str, base: str) -> object:
    path = os.path.abspath(os.path.join(base, target))
    if not os.path.isfile(path):
        raise JobSpecError(
            "entry point", spec, f"file {path} does not exist (working_dir={base!r})"
        )
    mod_name = "spotrain_user_" + "".join(c if c.isalnum() else "_" for c in path)
    module = sys.modules.get(mod_name)
    if module is not None:
        return module
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
    return module


def _import_module(target: str, working_dir: str | None) -> object:
    if working_dir and working_dir not in sys.path:
        sys.path.insert(0, working_dir)
    return importlib.import_module(target)
