"""The run record's protocol is declared once (storage/events.py): no other module writes an
event by its kind string, asks for kinds by string, or compares an event's kind to a string."""

from __future__ import annotations

import ast
from pathlib import Path

from storage.events import Kind

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cluster", "trainer", "storage")
#: The modules that own the protocol: kinds are spelt here and nowhere else.
OWNERS = {"storage/events.py", "storage/run_record.py"}
KIND_NAMES = {k.value for k in Kind}


def _strings(node: ast.AST) -> set[str]:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return set().union(*(_strings(e) for e in node.elts)) if node.elts else set()
    return set()


def _is_kind_attr(node: ast.AST) -> bool:
    return isinstance(node, ast.Attribute) and node.attr == "kind"


def violations(root: Path) -> list[str]:
    """Where a module outside OWNERS spells an event kind (``path:line what``)."""
    found = []
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel in OWNERS:
                continue
            for node in ast.walk(ast.parse(path.read_text())):
                where = f"{rel}:{getattr(node, 'lineno', 0)}"
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                    if node.func.attr == "append_event":
                        found.append(f"{where} append_event (use a storage.events writer)")
                    if node.func.attr == "events":
                        literal = set().union(*(_strings(a) for a in node.args), set())
                        for kw in node.keywords:
                            literal |= _strings(kw.value)
                        if literal & KIND_NAMES:
                            found.append(f"{where} events({sorted(literal)}) by string")
                if isinstance(node, ast.Compare):
                    sides = [node.left, *node.comparators]
                    if any(_is_kind_attr(s) for s in sides):
                        literal = set().union(*(_strings(s) for s in sides))
                        if literal & KIND_NAMES:
                            found.append(f"{where} .kind compared to {sorted(literal)}")
    return found


def test_no_module_outside_storage_events_spells_an_event_kind() -> None:
    assert violations(ROOT) == []


def test_the_check_sees_each_way_of_spelling_a_kind(tmp_path: Path) -> None:
    bad = tmp_path / "cluster" / "bad.py"
    bad.parent.mkdir()
    bad.write_text(
        "def f(rec, ev):\n"
        "    rec.append_event('state', state='RUNNING')\n"
        "    rec.events(kinds=['attempt_start'])\n"
        "    return ev.kind == 'preemption' or ev.kind in ('failure', 'metrics')\n"
    )
    assert [v.split(" ", 1)[0] for v in violations(tmp_path)] == [
        "cluster/bad.py:2",
        "cluster/bad.py:3",
        "cluster/bad.py:4",
        "cluster/bad.py:4",
    ]
