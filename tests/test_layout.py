"""The package layout rules, read from the source (imports include lazy ones in functions):
no import cycle; data flows cluster -> trainer -> storage; Ray's private APIs only in the
quarantine modules; the coordinator does not pick a runner; modules stay small; each package's
README lists its modules."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("cluster", "trainer", "storage")
#: The only modules that may touch Ray's private APIs.
RAY_QUARANTINE = {"cluster.ray.internals", "trainer.ray_internals"}
RAY_PRIVATE = re.compile(r"\b_internal\b|_raylet|_private|autoscaler_pb2")
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            mods[name.removesuffix(".__init__")] = path
    return mods


def _imports(path: Path, mods: dict[str, Path]) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        found.update(n for n in names if n in mods)
    return found


def _graph() -> dict[str, set[str]]:
    mods = _modules()
    return {m: _imports(p, mods) - {m} for m, p in mods.items()}


def test_no_import_cycle() -> None:
    graph = _graph()
    cycles: list[list[str]] = []
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(mod: str) -> None:
        state[mod] = 1
        stack.append(mod)
        for dep in sorted(graph[mod]):
            if state.get(dep) == 1:
                cycles.append([*stack[stack.index(dep) :], dep])
            elif dep not in state:
                visit(dep)
        stack.pop()
        state[mod] = 2

    for mod in sorted(graph):
        if mod not in state:
            visit(mod)
    assert cycles == []


def test_data_flows_cluster_to_trainer_to_storage() -> None:
    for mod, deps in _graph().items():
        top = {d.split(".")[0] for d in deps}
        if mod.startswith("trainer"):
            assert "cluster" not in top, mod
        if mod.startswith("storage"):
            assert not top & {"cluster", "trainer"}, mod


def test_ray_internals_only_in_the_quarantine_modules() -> None:
    for mod, path in _modules().items():
        if mod in RAY_QUARANTINE:
            continue
        hits = [line for line in path.read_text().splitlines() if RAY_PRIVATE.search(line)]
        assert hits == [], mod


def test_the_coordinator_is_given_its_runner() -> None:
    graph = _graph()
    assert not {d for d in graph["cluster.coordinator"] if d.startswith("cluster.ray")}
    assert "cluster.ray.runner" in graph["cluster.cli"]


def test_modules_stay_small() -> None:
    sizes = {mod: len(path.read_text().splitlines()) for mod, path in _modules().items()}
    assert {m: n for m, n in sizes.items() if n > MAX_LINES} == {}


def test_each_package_readme_lists_its_modules() -> None:
    for pkg in PACKAGES:
        readme = (ROOT / pkg / "README.md").read_text()
        missing = [
            rel
            for path in sorted((ROOT / pkg).rglob("*.py"))
            if path.name != "__init__.py"
            and f"`{(rel := path.relative_to(ROOT / pkg).as_posix())}`" not in readme
        ]
        assert missing == [], f"{pkg}/README.md does not list {missing}"
