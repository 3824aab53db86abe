"""Render k8s/ without kustomize, and validate what comes out.

`kubectl kustomize` is not on every developer's machine or CI, so the tests render the
kustomizations with this module: a small implementation of exactly the subset of kustomize
that the files under k8s/ use, and nothing more:

- ``resources``: YAML files (several documents each) and directories holding a kustomization;
- ``components``: directories holding a ``kind: Component`` (its resources and patches);
- ``patches`` with a ``target`` and a JSON 6902 patch (ops ``add``, ``replace``, ``remove``,
  ``test``);
- ``images``: ``name`` with ``newName`` / ``newTag`` / ``digest``.

Anything else (strategic merge patches, generators, name prefixes, labels, replacements ...)
raises `UnsupportedKustomizeError`, so a change to k8s/ that leaves the subset fails loudly
instead of rendering something kustomize would not. Where kubectl is installed, a test
compares this renderer's output with `kubectl kustomize` for every kustomization.

Validation: built-in kinds against the Kubernetes OpenAPI schemas that the
`kubernetes-validate` package bundles (strict: unknown fields are errors); the KubeRay RayJob
against schemas/kuberay-rayjob-v1.json, whose pod templates refer to the same Kubernetes
PodTemplateSpec schema.
"""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import yaml
from referencing import Registry, Resource

REPO = Path(__file__).resolve().parents[2]
K8S_DIR = REPO / "k8s"
SCHEMA_DIR = Path(__file__).resolve().parent / "schemas"

# The Kubernetes version whose schemas the manifests are validated against (the newest one
# bundled with kubernetes-validate 1.37). Raise it when the package brings a newer one.
K8S_VERSION = "1.37"

KUSTOMIZATION_FILES = ("kustomization.yaml", "kustomization.yml", "Kustomization")
_SUPPORTED_KEYS = {
    "Kustomization": {"apiVersion", "kind", "resources", "components", "patches", "images"},
    "Component": {"apiVersion", "kind", "resources", "patches", "images"},
}
_SUPPORTED_PATCH_KEYS = {"path", "patch", "target"}
_SUPPORTED_TARGET_KEYS = {"group", "version", "kind", "name"}
_BUILTIN_GROUPS = {"", "batch", "apps", "rbac.authorization.k8s.io", "policy"}


class UnsupportedKustomizeError(ValueError):
    """The kustomization uses a kustomize feature this renderer does not implement."""


Obj = dict[str, Any]


def find_kustomization(directory: Path) -> Path:
    for name in KUSTOMIZATION_FILES:
        candidate = directory / name
        if candidate.is_file():
            return candidate
    raise FileNotFoundError(f"no kustomization file in {directory}")


def all_kustomization_dirs(root: Path = K8S_DIR) -> list[Path]:
    """Every directory under `root` that holds a kustomization (Kustomization or Component)."""
    found = {p.parent for name in KUSTOMIZATION_FILES for p in root.rglob(name)}
    return sorted(found)


def build(directory: Path) -> list[Obj]:
    """Render the kustomization in `directory` like `kubectl kustomize DIRECTORY` would."""
    return _build(Path(directory), expected_kind="Kustomization", objects=[])


def build_with_components(directory: Path, components: list[Path]) -> list[Obj]:
    """Render `directory`, then apply extra components, as an overlay listing them would."""
    objects = build(directory)
    for component in components:
        objects = _build(Path(component), expected_kind="Component", objects=objects)
    return objects


def _build(directory: Path, expected_kind: str, objects: list[Obj]) -> list[Obj]:
    path = find_kustomization(directory)
    spec = yaml.safe_load(path.read_text()) or {}
    kind = spec.get("kind", "Kustomization")
    if kind != expected_kind:
        raise UnsupportedKustomizeError(f"{path}: kind {kind!r}, expected {expected_kind!r}")
    unknown = set(spec) - _SUPPORTED_KEYS[kind]
    if unknown:
        raise UnsupportedKustomizeError(f"{path}: unsupported fields {sorted(unknown)}")

    objects = list(objects)
    for entry in spec.get("resources", []):
        target = (directory / entry).resolve()
        if target.is_dir():
            objects.extend(_build(target, expected_kind="Kustomization", objects=[]))
        else:
            objects.extend(load_documents(target))
    for entry in spec.get("components", []):
        objects = _build((directory / entry).resolve(), expected_kind="Component", objects=objects)
    for patch in spec.get("patches", []):
        objects = _apply_patch(directory, path, patch, objects)
    for image in spec.get("images", []):
        for obj in objects:
            _set_images(obj, image)
    _check_unique(objects, path)
    return objects


def load_documents(path: Path) -> list[Obj]:
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            raise UnsupportedKustomizeError(f"{path}: not a Kubernetes object: {doc!r:.80}")
    return docs


def object_id(obj: Obj) -> tuple[str, str, str]:
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def _check_unique(objects: list[Obj], path: Path) -> None:
    ids = [object_id(o) for o in objects]
    duplicates = {i for i in ids if ids.count(i) > 1}
    if duplicates:
        raise UnsupportedKustomizeError(f"{path}: objects defined twice: {sorted(duplicates)}")


def _group_version(api_version: str) -> tuple[str, str]:
    group, _, version = api_version.rpartition("/")
    return group, version


def _matches(obj: Obj, target: dict[str, str]) -> bool:
    group, version = _group_version(obj["apiVersion"])
    actual = {"group": group, "version": version, "kind": obj["kind"]}
    actual["name"] = obj["metadata"]["name"]
    return all(re.fullmatch(str(v), actual[k]) for k, v in target.items())


def _apply_patch(directory: Path, path: Path, entry: dict[str, Any], objects: list[Obj]):
    unknown = set(entry) - _SUPPORTED_PATCH_KEYS
    if unknown:
        raise UnsupportedKustomizeError(f"{path}: unsupported patch fields {sorted(unknown)}")
    if "path" in entry:
        ops = yaml.safe_load((directory / entry["path"]).read_text())
    else:
        ops = yaml.safe_load(entry["patch"])
    if not isinstance(ops, list):
        raise UnsupportedKustomizeError(
            f"{path}: strategic merge patches are not supported here; k8s/ uses JSON 6902 "
            "patches (a list of ops) with a target"
        )
    target = entry.get("target")
    if not target:
        raise UnsupportedKustomizeError(f"{path}: a JSON 6902 patch needs a target")
    unknown = set(target) - _SUPPORTED_TARGET_KEYS
    if unknown:
        raise UnsupportedKustomizeError(f"{path}: unsupported target fields {sorted(unknown)}")
    result = []
    for obj in objects:
        if _matches(obj, target):
            obj = copy.deepcopy(obj)
            for op in ops:
                apply_json6902(obj, op)
        result.append(obj)
    return result


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ValueError(f"JSON pointer must start with '/': {path!r}")
    return [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]


def _child(container: Any, token: str) -> Any:
    if isinstance(container, list):
        return container[int(token)]
    return container[token]


def apply_json6902(obj: Obj, op: dict[str, Any]) -> None:
    """Apply one JSON 6902 operation (add, replace, remove, test) to `obj` in place."""
    kind = op["op"]
    tokens = _pointer(op["path"])
    parent: Any = obj
    for token in tokens[:-1]:
        parent = _child(parent, token)
    last = tokens[-1]
    if kind == "add":
        if isinstance(parent, list):
            index = len(parent) if last == "-" else int(last)
            if index > len(parent):
                raise IndexError(f"{op['path']}: index {index} past the end")
            parent.insert(index, copy.deepcopy(op["value"]))
        else:
            parent[last] = copy.deepcopy(op["value"])
    elif kind == "replace":
        _child(parent, last)  # must exist
        if isinstance(parent, list):
            parent[int(last)] = copy.deepcopy(op["value"])
        else:
            parent[last] = copy.deepcopy(op["value"])
    elif kind == "test":
        if _child(parent, last) != op["value"]:
            raise ValueError(f"JSON 6902 test failed at {op['path']}: expected {op['value']!r}")
    elif kind == "remove":
        _child(parent, last)
        if isinstance(parent, list):
            del parent[int(last)]
        else:
            del parent[last]
    else:
        raise UnsupportedKustomizeError(f"JSON 6902 op {kind!r} is not supported")


def _split_image(image: str) -> tuple[str, str, str]:
    """'repo/name:tag@sha256:...' -> (name, ':tag' or '', '@digest' or '')."""
    name, at, digest = image.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    tag = ""
    if colon > slash:
        name, tag = name[:colon], name[colon:]
    return name, tag, (at + digest) if at else ""


def _set_images(node: Any, image: dict[str, str]) -> None:
    """kustomize's image transformer: every containers[]/initContainers[] image, any kind."""
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                for container in value:
                    if isinstance(container, dict) and "image" in container:
                        container["image"] = _new_image(container["image"], image)
            _set_images(value, image)
    elif isinstance(node, list):
        for item in node:
            _set_images(item, image)


def _new_image(current: str, image: dict[str, str]) -> str:
    name, tag, digest = _split_image(current)
    if name != image["name"]:
        return current
    name = image.get("newName", name)
    if "digest" in image:
        return f"{name}@{image['digest']}"
    if "newTag" in image:
        return f"{name}:{image['newTag']}"
    return f"{name}{tag}{digest}"


# ----------------------------------------------------------------------------- pod templates


def pod_templates(obj: Obj) -> Iterator[tuple[str, Obj]]:
    """(where, PodTemplateSpec) for every pod template of a CronJob, Job or RayJob."""
    kind = obj["kind"]
    if kind == "CronJob":
        yield "jobTemplate", obj["spec"]["jobTemplate"]["spec"]["template"]
    elif kind == "Job":
        yield "template", obj["spec"]["template"]
    elif kind == "RayJob":
        spec = obj["spec"]
        if "submitterPodTemplate" in spec:
            yield "submitter", spec["submitterPodTemplate"]
        cluster = spec["rayClusterSpec"]
        yield "head", cluster["headGroupSpec"]["template"]
        for group in cluster.get("workerGroupSpecs", []):
            yield f"worker:{group['groupName']}", group["template"]


# -------------------------------------------------------------------------------- validation


def validate_builtin(obj: Obj) -> None:
    """Validate a built-in kind against the Kubernetes OpenAPI schema (strict)."""
    kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


def _k8s_definitions() -> Resource:
    package = Path(kubernetes_validate.__file__).parent
    directory = package / "kubernetes-json-schema" / f"v{K8S_VERSION}.0-local-strict"
    return Resource.from_contents(json.loads((directory / "_definitions.json").read_text()))


def rayjob_validator() -> jsonschema.Draft202012Validator:
    """RayJob schema (schemas/kuberay-rayjob-v1.json) with the k8s definitions it refers to."""
    schema = json.loads((SCHEMA_DIR / "kuberay-rayjob-v1.json").read_text())
    registry: Registry = Registry().with_resource(
        "https://kubernetes.io/api/_definitions.json", _k8s_definitions()
    )
    return jsonschema.Draft202012Validator(schema, registry=registry)


def validate(obj: Obj) -> None:
    group, _ = _group_version(obj["apiVersion"])
    if obj["kind"] == "RayJob" and group == "ray.io":
        rayjob_validator().validate(obj)
    elif group in _BUILTIN_GROUPS:
        validate_builtin(obj)
    else:
        raise AssertionError(f"no schema to validate {object_id(obj)} against")
