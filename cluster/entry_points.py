"""Check a job spec's entry points without running the user's code.

A ``.py`` file is parsed and must define the function at top level; a module ``pkg.mod`` is
looked up as files (``pkg/mod.py`` or ``pkg/mod/__init__.py`` below the working directory or an
entry of ``sys.path``, or below the locations the import system reports for the top-level
package ``pkg`` without importing it) and its source is parsed the same way. Nothing of the
user's is imported: a package's ``__init__`` does not run. The grammar itself is
``trainer.entry_points.parse_entry_point``.
"""

from __future__ import annotations

import ast
import importlib.machinery
import importlib.util
import os
import sys
from pathlib import Path

from trainer.entry_points import EntryPoint


def entry_point_problem(entry: EntryPoint, working_dir: str) -> str | None:
    """What is wrong with ``entry`` (relative files resolved against ``working_dir``), or None."""
    if entry.is_file:
        target = entry.target
        path = target if os.path.isabs(target) else os.path.join(working_dir, target)
        if not os.path.isfile(path):
            return f"file {target!r} not found (relative paths are resolved against {working_dir})"
        return _definition_problem(path, entry.fn)
    found = find_module_file(entry.target, working_dir)
    if found is None:
        return (
            f"module {entry.target!r} cannot be found (no {entry.target.replace('.', '/')}.py or "
            f"package below {working_dir} or sys.path)"
        )
    if found.endswith(".py"):
        return _definition_problem(found, entry.fn)
    return None  # an extension module or a built-in: nothing to parse


def find_module_file(name: str, working_dir: str) -> str | None:
    """The file module ``name`` would be imported from (``.py``, a package's ``__init__.py``,
    an extension module), or the name itself for a built-in; None when there is none. Imports
    nothing: parent packages' ``__init__`` do not run."""
    if name in sys.builtin_module_names:
        return name
    parts = name.split(".")
    bases = [working_dir, *(p or os.getcwd() for p in sys.path)]
    for base in [*bases, *_import_system_locations(parts[0])]:
        found = _module_below(base, parts)
        if found is not None:
            return found
    return None


def _module_below(base: str, parts: list[str]) -> str | None:
    folder = os.path.join(base, *parts[:-1])
    if not os.path.isdir(folder):
        return None
    last = parts[-1]
    for candidate in (
        os.path.join(folder, last + ".py"),
        os.path.join(folder, last, "__init__.py"),
    ):
        if os.path.isfile(candidate):
            return candidate
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.isfile(os.path.join(folder, last + suffix)):
            return os.path.join(folder, last + suffix)
    return None


def _import_system_locations(top: str) -> list[str]:
    """Folders holding top-level package ``top`` per the import system's finders (editable
    installs register such finders). A top-level lookup imports nothing."""
    try:
        loaded = sys.modules.get(top)
        found = loaded.__spec__ if loaded is not None else importlib.util.find_spec(top)
    except (ImportError, ValueError, AttributeError):
        return []
    if found is None:
        return []
    out = []
    if found.origin and os.path.isfile(found.origin):
        out.append(os.path.dirname(found.origin))
        if os.path.basename(found.origin) == "__init__.py":
            out.append(os.path.dirname(os.path.dirname(found.origin)))
    for loc in found.submodule_search_locations or ():
        out.append(os.path.dirname(loc))
    return out


def _definition_problem(path: str, fn: str) -> str | None:
    try:
        tree = ast.parse(Path(path).read_text(), filename=path)
    except SyntaxError as exc:
        return f"{path} has a syntax error at line {exc.lineno}: {exc.msg}"
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
        return f"{path} defines no top-level {fn!r}; it defines: {', '.join(defined) or 'nothing'}"
    return None
