"""Every `spotrain` command line in k8s/ is accepted by the real CLI parser.

A renamed subcommand or flag in cluster/cli.py must break this test, not a user's cluster.
Only argument parsing runs here: no Ray, no training.
"""

from __future__ import annotations

import shlex
from typing import Any

import pytest
from k8s_render import K8S_DIR, all_kustomization_dirs, build, object_id, pod_templates

from cluster.cli import build_parser

COMPONENTS = {K8S_DIR / "components" / "gpu"}
JOB_PATH = "/etc/spotrain/job.yaml"


def spotrain_command_lines(obj: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """(where, argv after `spotrain`) for every spotrain invocation an object makes."""
    found: list[tuple[str, list[str]]] = []
    if obj["kind"] == "RayJob":
        # KubeRay runs the entrypoint through `ray job submit -- ENTRYPOINT` on the head.
        argv = shlex.split(obj["spec"]["entrypoint"])
        assert argv[0] == "spotrain", obj["spec"]["entrypoint"]
        found.append(("entrypoint", argv[1:]))
        return found  # its containers run KubeRay's own commands (see test_k8s_manifests)
    for where, template in pod_templates(obj):
        for container in template["spec"]["containers"]:
            command = container.get("command")
            args = container.get("args", [])
            if command is None:  # the image's ENTRYPOINT is `spotrain`
                found.append((f"{where}/{container['name']}", list(args)))
            elif command[0] == "spotrain":
                found.append((f"{where}/{container['name']}", command[1:] + list(args)))
    return found


def _cases() -> list[tuple[str, list[str]]]:
    cases = []
    for directory in all_kustomization_dirs():
        if directory in COMPONENTS:
            continue
        for obj in build(directory):
            for where, argv in spotrain_command_lines(obj):
                name = f"{directory.relative_to(K8S_DIR)}:{obj['kind']}:{where}"
                cases.append((name, argv))
    return cases


CASES = _cases()


def test_every_pod_manifest_has_a_command_line():
    kinds = {name.split(":")[1] for name, _ in CASES}
    assert kinds == {"CronJob", "RayJob"}


@pytest.mark.parametrize(("name", "argv"), CASES, ids=[name for name, _ in CASES])
def test_manifest_command_line_parses_with_the_real_cli(name, argv):
    parser = build_parser()
    try:
        namespace = parser.parse_args(argv)
    except SystemExit as exc:  # argparse reports a bad command line by exiting with 2
        pytest.fail(
            f"{name}: `spotrain {shlex.join(argv)}` is rejected by the CLI (exit {exc.code})"
        )
    assert argv[0] == "run"
    assert JOB_PATH in vars(namespace).values(), vars(namespace)


def readme_command_lines() -> list[list[str]]:
    """argv after `spotrain` of every command line in k8s/README.md's code blocks."""
    lines, in_code = [], False
    for line in (K8S_DIR / "README.md").read_text().splitlines():
        if line.strip().startswith("```"):
            in_code = not in_code
        elif in_code and line.strip().startswith("spotrain "):
            lines.append(shlex.split(line, comments=True)[1:])
    return lines


README_CASES = readme_command_lines()


def test_readme_shows_how_to_watch_a_run():
    assert {argv[0] for argv in README_CASES} >= {"status", "checkpoints"}


@pytest.mark.parametrize("argv", README_CASES, ids=shlex.join)
def test_readme_command_line_parses_with_the_real_cli(argv):
    try:
        build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"k8s/README.md: `spotrain {shlex.join(argv)}` is rejected (exit {exc.code})")


def test_the_parser_rejects_unknown_flags():
    """The check above means something only if the parser is strict."""
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", JOB_PATH, "--no-such-flag"])


def test_command_lines_are_collected_from_rendered_objects():
    obj = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": "x"},
        "spec": {
            "template": {
                "spec": {
                    "containers": [
                        {"name": "a", "image": "spotrain", "args": ["status", "s3://b/r"]},
                        {"name": "b", "image": "spotrain", "command": ["spotrain", "gc"]},
                        {"name": "c", "image": "busybox", "command": ["sh"]},
                    ]
                }
            }
        },
    }
    assert object_id(obj) == ("batch/v1", "Job", "x")
    assert spotrain_command_lines(obj) == [
        ("template/a", ["status", "s3://b/r"]),
        ("template/b", ["gc"]),
    ]
