"""k8s/Dockerfile: the properties the manifests rely on, checked without a container engine.

No Docker daemon (and no hadolint) is available offline, so this parses the Dockerfile's
instructions and checks what matters: the base image, a non-root user whose UID/GID and HOME
are the ones the manifests use, dependencies from the project's own pins, every package of
the project copied in, and `spotrain` as the exec-form ENTRYPOINT.
"""

from __future__ import annotations

import fnmatch
import json
import re
from pathlib import Path

import pytest
import tomllib
from k8s_render import K8S_DIR, REPO, build, pod_templates

DOCKERFILE = K8S_DIR / "Dockerfile"
DOCKERIGNORE = K8S_DIR / "Dockerfile.dockerignore"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, with comments dropped and continuations joined."""
    result: list[tuple[str, str]] = []
    pending = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        result.append((keyword.upper(), " ".join(rest.split())))
    assert not pending, "Dockerfile ends in a line continuation"
    return result


def _args(keyword: str) -> list[str]:
    return [rest for kw, rest in instructions() if kw == keyword]


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def _manifest_pods() -> list[dict]:
    pods = []
    for directory in (K8S_DIR / "base", K8S_DIR / "base" / "rayjob"):
        for obj in build(directory):
            pods.extend(template["spec"] for _, template in pod_templates(obj))
    assert pods
    return pods


def test_single_slim_python_stage():
    assert _args("FROM") == ["python:3.11-slim"]
    assert instructions()[0][0] in ("FROM", "ARG")


def test_entrypoint_is_the_spotrain_console_script():
    (entrypoint,) = _args("ENTRYPOINT")
    assert json.loads(entrypoint) == ["spotrain"], "exec form, so SIGTERM reaches spotrain"
    assert "spotrain" in _pyproject()["project"]["scripts"]


def test_runs_as_the_non_root_user_of_the_manifests():
    users = _args("USER")
    assert users, "no USER: the image would run as root"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, "numeric, so runAsNonRoot can verify it"
    assert gid.isdigit() and int(gid) != 0
    useradd = " ".join(r for r in _args("RUN") if "useradd" in r)
    assert f"--uid {uid}" in useradd and f"--gid {gid}" in useradd
    env = " ".join(_args("ENV"))
    for pod in _manifest_pods():
        context = pod["securityContext"]
        assert (context["runAsUser"], context["runAsGroup"]) == (int(uid), int(gid))
        for container in pod["containers"]:
            home = {e["name"]: e.get("value") for e in container["env"]}["HOME"]
            assert f"--home-dir {home}" in useradd
            assert f"HOME={home}" in env
    # Nothing is installed after dropping root.
    last_user = max(i for i, (kw, _) in enumerate(instructions()) if kw == "USER")
    assert not [kw for kw, _ in instructions()[last_user:] if kw == "RUN"]


def test_installs_the_project_from_its_own_pins():
    copied = [rest.split()[0] for rest in _args("COPY")]
    assert "pyproject.toml" in copied
    packages = {
        p.rstrip("*") for p in _pyproject()["tool"]["setuptools"]["packages"]["find"]["include"]
    }
    assert packages <= {c.rstrip("/") for c in copied}, "a package of the project is not copied"
    for source in copied:
        assert (REPO / source).exists(), f"COPY {source}: not in the repository"
    runs = " && ".join(_args("RUN"))
    assert "pip install ." in runs
    assert "TF_USE_LEGACY_KERAS=1" in " ".join(_args("ENV"))


@pytest.mark.parametrize("forbidden", ["ADD", "MAINTAINER"])
def test_no_discouraged_instructions(forbidden):
    assert not _args(forbidden)


def test_no_downloads_outside_package_managers_or_privilege_tools():
    text = " ".join(rest for _, rest in instructions())
    assert not re.search(r"(curl|wget)\s+\S*https?://", text), "download with pip or apt"
    for word in ("sudo ", ":latest", "chmod 777"):
        assert word not in text, word
    # apt lists are not left in the image.
    for run in _args("RUN"):
        if "apt-get install" in run:
            assert "--no-install-recommends" in run and "rm -rf /var/lib/apt/lists/*" in run


def test_build_context_sends_only_what_the_image_copies():
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert patterns[0] == "*", "ignore everything (.venv, runs/) by default"
    allowed = {p[1:].rstrip("/") for p in patterns if p.startswith("!")}
    copied = {rest.split()[0].rstrip("/") for rest in _args("COPY")}
    assert copied <= allowed
    assert not any(fnmatch.fnmatch(".venv", p.lstrip("!")) for p in patterns if p.startswith("!"))
