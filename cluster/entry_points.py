"""Check a job spec's entry points without running the user's code.

A ``.py`` file is parsed and must define the function at top level; a module must be findable by
name (``importlib.util.find_spec``, which may import its parent packages) and its source is
parsed the same way. The grammar itself is ``trainer.entry_points.parse_entry_point``.
"""

from __future__ import annotations

import ast
import importlib.util
import os
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
    try:
        found = importlib.util.find_spec(entry.target)
    except (ImportError, ValueError) as exc:
        found = None
        why = f"{type(exc).__name__}: {exc}"
    else:
        why = "no such module on sys.path"
    if found is None:
        return f"module {entry.target!r} cannot be imported ({why})"
    if found.origin and found.origin.endswith(".py") and os.path.isfile(found.origin):
        return _definition_problem(found.origin, entry.fn)
    return None


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
