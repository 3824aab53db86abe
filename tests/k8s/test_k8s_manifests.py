"""k8s/ renders, validates against the Kubernetes and KubeRay schemas, and says what it must.

Rendering: tests/k8s/k8s_render.py (the kustomize subset k8s/ uses), checked against
`kubectl kustomize` where kubectl is installed. Validation: Kubernetes 1.37 OpenAPI schemas
(kubernetes-validate, strict) and schemas/kuberay-rayjob-v1.json for the RayJob.
"""

from __future__ import annotations

import copy
import inspect
import os
import re
import shutil
import subprocess
from importlib.metadata import version
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from k8s_render import (
    K8S_DIR,
    UnsupportedKustomizeError,
    all_kustomization_dirs,
    apply_json6902,
    build,
    build_with_components,
    object_id,
    pod_templates,
    validate,
)

from cluster import constants as cluster_constants
from cluster.exit_codes import ExitCode

CLOUDS = ("gke", "eks", "aks")
CRONJOB_OVERLAYS = {c: K8S_DIR / "overlays" / c for c in CLOUDS}
RAYJOB_OVERLAYS = {c: K8S_DIR / "overlays" / c / "rayjob" for c in CLOUDS}
GPU_COMPONENT = K8S_DIR / "components" / "gpu"
KUSTOMIZATIONS = [d for d in all_kustomization_dirs() if d != GPU_COMPONENT]

# Seconds each cloud's spot capacity gives a pod between SIGTERM and SIGKILL (see the
# comments in overlays/*/spot.yaml): the grace period must use, and not exceed, that window.
SPOT_GRACE_S = {"gke": 15, "eks": 110, "aks": 25}

# The CLI's exit codes the Job's podFailurePolicy acts on (cluster/exit_codes.py).
EXIT_BAD_COMMAND_LINE = int(ExitCode.USAGE)
EXIT_USER_ERROR = int(ExitCode.USER_ERROR)
EXIT_PREEMPTED = int(ExitCode.PREEMPTED)

JOB_MOUNT = "/etc/spotrain"
HOME = "/home/spotrain"
API_PERMISSION_KINDS = {"Role", "ClusterRole", "RoleBinding", "ClusterRoleBinding"}


def _rel(path: Path) -> str:
    return str(path.relative_to(K8S_DIR))


def _one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, got {[object_id(o) for o in objects]}"
    return found[0]


def _all_rendered() -> list[tuple[str, list[dict[str, Any]]]]:
    rendered = [(_rel(d), build(d)) for d in KUSTOMIZATIONS]
    rendered += [
        (f"{_rel(d)}+gpu", build_with_components(d, [GPU_COMPONENT]))
        for d in CRONJOB_OVERLAYS.values()
    ]
    return rendered


RENDERED = _all_rendered()
RENDERED_IDS = [name for name, _ in RENDERED]


# ------------------------------------------------------------------------ rendering itself


def test_every_kustomization_under_k8s_is_tested():
    expected = {
        "base",
        "base/identity",
        "base/cronjob",
        "base/rayjob",
        "components/gpu",
        *(f"overlays/{c}" for c in CLOUDS),
        *(f"overlays/{c}/rayjob" for c in CLOUDS),
    }
    assert {_rel(d) for d in all_kustomization_dirs()} == expected


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
@pytest.mark.parametrize("directory", KUSTOMIZATIONS, ids=_rel)
def test_renderer_agrees_with_kubectl_kustomize(directory):
    out = subprocess.run(
        ["kubectl", "kustomize", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    theirs = sorted(yaml.safe_load_all(out.stdout), key=object_id)
    assert sorted(build(directory), key=object_id) == theirs


@pytest.mark.skipif(shutil.which("kubectl") is None, reason="kubectl is not installed")
def test_gpu_component_renders_like_kubectl_kustomize(tmp_path):
    overlay = CRONJOB_OVERLAYS["aks"]
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "resources": [os.path.relpath(overlay, tmp_path)],
                "components": [os.path.relpath(GPU_COMPONENT, tmp_path)],
            }
        )
    )
    out = subprocess.run(
        ["kubectl", "kustomize", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    theirs = sorted(yaml.safe_load_all(out.stdout), key=object_id)
    assert sorted(build_with_components(overlay, [GPU_COMPONENT]), key=object_id) == theirs


def test_renderer_refuses_what_it_does_not_implement(tmp_path):
    (tmp_path / "cm.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    (tmp_path / "kustomization.yaml").write_text("resources: [cm.yaml]\nnamePrefix: dev-\n")
    with pytest.raises(UnsupportedKustomizeError, match="namePrefix"):
        build(tmp_path)
    (tmp_path / "patch.yaml").write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\n")
    (tmp_path / "kustomization.yaml").write_text(
        "resources: [cm.yaml]\npatches: [{path: patch.yaml}]\n"
    )
    with pytest.raises(UnsupportedKustomizeError, match="strategic merge"):
        build(tmp_path)


def test_json6902_ops():
    obj = {"a": {"list": [1, 2]}, "b": 1}
    apply_json6902(obj, {"op": "add", "path": "/a/list/-", "value": 3})
    apply_json6902(obj, {"op": "add", "path": "/a/list/0", "value": 0})
    apply_json6902(obj, {"op": "add", "path": "/a/x~1y", "value": "slash"})
    apply_json6902(obj, {"op": "replace", "path": "/b", "value": 2})
    apply_json6902(obj, {"op": "remove", "path": "/a/list/1"})
    assert obj == {"a": {"list": [0, 2, 3], "x/y": "slash"}, "b": 2}
    with pytest.raises(KeyError):
        apply_json6902(obj, {"op": "replace", "path": "/missing", "value": 1})
    apply_json6902(obj, {"op": "test", "path": "/b", "value": 2})
    with pytest.raises(ValueError, match="test failed"):
        apply_json6902(obj, {"op": "test", "path": "/b", "value": 3})


# ------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(("name", "objects"), RENDERED, ids=RENDERED_IDS)
def test_every_object_validates_against_its_schema(name, objects):
    assert objects, name
    for obj in objects:
        validate(obj)


def test_validation_is_strict_about_unknown_fields():
    cronjob = _one(build(CRONJOB_OVERLAYS["gke"]), "CronJob")
    bad = copy.deepcopy(cronjob)
    bad["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"][0]["imagePolicy"] = "x"
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = copy.deepcopy(cronjob)
    bad["spec"]["startingDeadlineSeconds"] = "120"  # a string where an integer belongs
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)

    rayjob = _one(build(RAYJOB_OVERLAYS["gke"]), "RayJob")
    bad = copy.deepcopy(rayjob)
    bad["spec"]["entryPoint"] = bad["spec"].pop("entrypoint")
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)
    bad = copy.deepcopy(rayjob)  # a typo deep in a pod template: the k8s schema catches it
    worker = bad["spec"]["rayClusterSpec"]["workerGroupSpecs"][0]["template"]["spec"]
    worker["containers"][0]["securityContext"]["readOnlyRootFileSystem"] = True
    with pytest.raises(jsonschema.ValidationError):
        validate(bad)


# ---------------------------------------------------------------------------- the CronJob


@pytest.mark.parametrize("cloud", CLOUDS)
def test_cronjob_schedules_one_run_at_a_time(cloud):
    cronjob = _one(build(CRONJOB_OVERLAYS[cloud]), "CronJob")
    spec = cronjob["spec"]
    assert spec["concurrencyPolicy"] == "Forbid"
    assert len(spec["schedule"].split()) == 5
    assert 0 < spec["startingDeadlineSeconds"] <= 300
    assert spec["successfulJobsHistoryLimit"] >= 1
    assert spec["failedJobsHistoryLimit"] >= 1
    assert spec.get("suspend", False) is False
    job = spec["jobTemplate"]["spec"]
    assert 0 < job["backoffLimit"] <= 10
    assert job["template"]["spec"]["restartPolicy"] == "Never"


def test_cronjob_pod_failure_policy_follows_the_exit_codes():
    job = _one(build(K8S_DIR / "base"), "CronJob")["spec"]["jobTemplate"]["spec"]
    rules = job["podFailurePolicy"]["rules"]

    def exit_codes(action):
        return {
            code
            for rule in rules
            if rule["action"] == action and "onExitCodes" in rule
            for code in rule["onExitCodes"]["values"]
            if rule["onExitCodes"]["operator"] == "In"
        }

    # Failing for good on a user error; a preemption neither fails nor uses up retries.
    assert exit_codes("FailJob") == {EXIT_BAD_COMMAND_LINE, EXIT_USER_ERROR}
    assert exit_codes("Ignore") == {EXIT_PREEMPTED}
    disruption = [
        r
        for r in rules
        if r["action"] == "Ignore"
        and {"type": "DisruptionTarget", "status": "True"} in r.get("onPodConditions", [])
    ]
    assert disruption, "an evicted / preempted pod must not count as a failure"
    assert job["podReplacementPolicy"] == "Failed", "no new pod before the old one has saved"
    container = job["template"]["spec"]["containers"][0]["name"]
    assert all(r["onExitCodes"]["containerName"] == container for r in rules if "onExitCodes" in r)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_grace_period_matches_the_spot_notice(cloud):
    for objects in (build(CRONJOB_OVERLAYS[cloud]), build(RAYJOB_OVERLAYS[cloud])):
        for obj in objects:
            for where, template in pod_templates(obj):
                if where in ("head", "submitter"):
                    continue  # on-demand nodes; the head's driver commits nothing itself
                grace = template["spec"]["terminationGracePeriodSeconds"]
                assert grace == SPOT_GRACE_S[cloud], (cloud, object_id(obj), where)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_spotrain_gives_up_on_the_emergency_save_before_the_kubelet_kills_it(cloud):
    # The setting the manifests use is the CLI's own (cluster/constants.py).
    assert '"SPOTRAIN_SIGTERM_GRACE_S"' in inspect.getsource(cluster_constants)
    cronjob = _one(build(CRONJOB_OVERLAYS[cloud]), "CronJob")
    rayjob = _one(build(RAYJOB_OVERLAYS[cloud]), "RayJob")
    drivers = [
        cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"],
        rayjob["spec"]["rayClusterSpec"]["headGroupSpec"]["template"]["spec"],
    ]
    for pod in drivers:
        grace = pod["terminationGracePeriodSeconds"]
        env = {e["name"]: e.get("value") for e in pod["containers"][0]["env"]}
        wait_s = float(env["SPOTRAIN_SIGTERM_GRACE_S"])
        # Inside the window, and using most of it: at most 10 s left to exit.
        assert 0 < wait_s < grace and grace - wait_s <= 10, (cloud, wait_s, grace)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_job_spec_comes_from_the_configmap_and_credentials_from_the_secret(cloud):
    cronjob = _one(build(CRONJOB_OVERLAYS[cloud]), "CronJob")
    pod = cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    job_mount = mounts[JOB_MOUNT]
    assert job_mount["readOnly"] is True
    config_map = volumes[job_mount["name"]]["configMap"]
    assert config_map["name"] == "spotrain-job"
    assert config_map["items"] == [{"key": "job.yaml", "path": "job.yaml"}]
    assert container["args"][:2] == ["run", f"{JOB_MOUNT}/job.yaml"]
    assert {"secretRef": {"name": "spotrain-storage", "optional": True}} in container["envFrom"]
    resources = container["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert resources["limits"]["memory"] == resources["requests"]["memory"]


@pytest.mark.parametrize("cloud", CLOUDS)
def test_gpu_component_adds_a_gpu_and_keeps_the_spot_placement(cloud):
    plain = _one(build(CRONJOB_OVERLAYS[cloud]), "CronJob")
    gpu = _one(build_with_components(CRONJOB_OVERLAYS[cloud], [GPU_COMPONENT]), "CronJob")
    plain_pod = plain["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    gpu_pod = gpu["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert "nvidia.com/gpu" not in plain_pod["containers"][0]["resources"]["limits"]
    assert gpu_pod["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 1
    for toleration in plain_pod["tolerations"]:
        assert toleration in gpu_pod["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in gpu_pod["tolerations"])
    assert gpu_pod.get("nodeSelector") == plain_pod.get("nodeSelector")
    assert gpu_pod.get("affinity") == plain_pod.get("affinity")


# ----------------------------------------------------------------------- spot placement


def _spot_placement_ok(cloud: str, pod: dict[str, Any]) -> bool:
    selector = pod.get("nodeSelector", {})
    tolerations = pod.get("tolerations", [])
    if cloud == "gke":
        return (
            selector.get("cloud.google.com/gke-spot") == "true"
            and {
                "key": "cloud.google.com/gke-spot",
                "operator": "Equal",
                "value": "true",
                "effect": "NoSchedule",
            }
            in tolerations
        )
    if cloud == "aks":
        return (
            selector.get("kubernetes.azure.com/scalesetpriority") == "spot"
            and {
                "key": "kubernetes.azure.com/scalesetpriority",
                "operator": "Equal",
                "value": "spot",
                "effect": "NoSchedule",
            }
            in tolerations
        )
    if cloud == "eks":
        affinity = pod.get("affinity", {}).get("nodeAffinity", {})
        terms = affinity.get("requiredDuringSchedulingIgnoredDuringExecution", {})
        expressions = [
            (e["key"], e["operator"], tuple(e["values"]))
            for term in terms.get("nodeSelectorTerms", [])
            for e in term["matchExpressions"]
        ]
        # One expression per term: the terms are ORed, either kind of spot node matches.
        return all(
            len(t["matchExpressions"]) == 1 for t in terms.get("nodeSelectorTerms", [])
        ) and (
            set(expressions)
            == {
                ("eks.amazonaws.com/capacityType", "In", ("SPOT",)),
                ("karpenter.sh/capacity-type", "In", ("spot",)),
            }
        )
    raise AssertionError(cloud)


def _no_spot_placement(pod: dict[str, Any]) -> bool:
    text = yaml.safe_dump({k: pod.get(k) for k in ("nodeSelector", "tolerations", "affinity")})
    return not re.search(r"spot|SPOT", text)


@pytest.mark.parametrize("cloud", CLOUDS)
def test_training_pods_land_on_spot_capacity(cloud):
    cronjob = _one(build(CRONJOB_OVERLAYS[cloud]), "CronJob")
    assert _spot_placement_ok(cloud, cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"])
    for other in CLOUDS:
        if other != cloud:
            assert not _spot_placement_ok(
                other, cronjob["spec"]["jobTemplate"]["spec"]["template"]["spec"]
            )
    rayjob = _one(build(RAYJOB_OVERLAYS[cloud]), "RayJob")
    for where, template in pod_templates(rayjob):
        if where.startswith("worker:"):
            assert _spot_placement_ok(cloud, template["spec"]), where
        else:  # the head and the submitter stay on on-demand nodes
            assert _no_spot_placement(template["spec"]), where


def test_base_has_no_cloud_specific_placement():
    for directory in (K8S_DIR / "base", K8S_DIR / "base" / "rayjob"):
        for obj in build(directory):
            for where, template in pod_templates(obj):
                assert _no_spot_placement(template["spec"]), (object_id(obj), where)


# ------------------------------------------------------------------------------ security


@pytest.mark.parametrize(("name", "objects"), RENDERED, ids=RENDERED_IDS)
def test_no_kubernetes_api_permissions(name, objects):
    kinds = {o["kind"] for o in objects}
    assert not kinds & API_PERMISSION_KINDS, name
    accounts = {o["metadata"]["name"]: o for o in objects if o["kind"] == "ServiceAccount"}
    for account in accounts.values():
        assert account["automountServiceAccountToken"] is False
    for obj in objects:
        for where, template in pod_templates(obj):
            spec = template["spec"]
            assert spec["automountServiceAccountToken"] is False, (name, where)
            if accounts:  # the kustomizations that deploy pods ship their account
                assert spec["serviceAccountName"] in accounts, (name, where)


@pytest.mark.parametrize(("name", "objects"), RENDERED, ids=RENDERED_IDS)
def test_pods_are_hardened(name, objects):
    for obj in objects:
        for where, template in pod_templates(obj):
            spec = template["spec"]
            context = spec["securityContext"]
            assert context["runAsNonRoot"] is True, (name, where)
            assert context["runAsUser"] != 0
            assert context["seccompProfile"] == {"type": "RuntimeDefault"}
            assert "hostNetwork" not in spec and "hostPID" not in spec and "hostIPC" not in spec
            volumes = {v["name"]: v for v in spec["volumes"]}
            assert not any("hostPath" in v for v in volumes.values())
            for container in spec["containers"] + spec.get("initContainers", []):
                sc = container["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, (name, where)
                assert sc["readOnlyRootFilesystem"] is True, (name, where)
                assert sc["capabilities"] == {"drop": ["ALL"]}, (name, where)
                assert sc.get("privileged", False) is False
                assert sc["runAsNonRoot"] is True
                assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
                # A read-only root needs writable scratch: /tmp and HOME on emptyDirs.
                mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
                env = {e["name"]: e.get("value") for e in container.get("env", [])}
                assert env["HOME"] == HOME, (name, where)
                for path in ("/tmp", HOME):
                    assert "emptyDir" in volumes[mounts[path]], (name, where, path)


# ------------------------------------------------------------------------------ the RayJob


def _env(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def _ray_source(relative: str) -> str:
    spec = find_spec("ray")
    assert spec is not None and spec.origin is not None
    return (Path(spec.origin).parent / relative).read_text()


def test_ray_reads_the_token_variables_the_manifests_set():
    """The variable names are Ray's own, read from the installed Ray 2.60 sources."""
    setup = _ray_source("_private/authentication/authentication_token_setup.py")
    assert 'AUTH_MODE_ENV_VAR = "RAY_AUTH_MODE"' in setup
    helpers = _ray_source("_private/authentication_test_utils.py")
    assert '_AUTH_ENV_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")' in helpers
    assert "`RAY_AUTH_TOKEN` environment variable" in _ray_source("exceptions.py")


@pytest.mark.parametrize("cloud", CLOUDS)
def test_rayjob_wires_token_authentication_through_a_secret(cloud):
    rayjob = _one(build(RAYJOB_OVERLAYS[cloud]), "RayJob")
    templates = dict(pod_templates(rayjob))
    assert {"submitter", "head"} <= set(templates)
    assert any(w.startswith("worker:") for w in templates)
    secrets = set()
    for where, template in templates.items():
        for container in template["spec"]["containers"]:
            env = _env(container)
            assert env["RAY_AUTH_MODE"]["value"] == "token", (where, container["name"])
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            secrets.add((ref["name"], ref["key"]))
            assert "RAY_AUTH_TOKEN_PATH" not in env
    assert secrets == {("spotrain-ray-auth", "auth_token")}, "one token for the whole cluster"


@pytest.mark.parametrize("cloud", CLOUDS)
def test_rayjob_runs_spotrain_on_its_own_cluster(cloud):
    rayjob = _one(build(RAYJOB_OVERLAYS[cloud]), "RayJob")
    spec = rayjob["spec"]
    argv = spec["entrypoint"].split()
    assert argv[:3] == ["spotrain", "run", f"{JOB_MOUNT}/job.yaml"]
    assert argv[argv.index("--address") + 1] == "auto"
    cluster = spec["rayClusterSpec"]
    groups = cluster["workerGroupSpecs"]
    for group in groups:
        assert group["replicas"] == group["minReplicas"] == group["maxReplicas"]
    assert int(argv[argv.index("--workers") + 1]) == sum(g["replicas"] for g in groups)
    assert cluster["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
    assert cluster["enableInTreeAutoscaling"] is False  # it would need API permissions
    assert spec["shutdownAfterJobFinishes"] is True
    assert spec["backoffLimit"] >= 1, "a lost head must get a new cluster that resumes"
    assert spec.get("submissionMode", "K8sJobMode") == "K8sJobMode"
    major_minor = ".".join(version("ray").split(".")[:2])
    assert cluster["rayVersion"].startswith(major_minor + ".")
    head = cluster["headGroupSpec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in head["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in head["volumes"]}
    assert volumes[mounts[JOB_MOUNT]]["configMap"]["name"] == "spotrain-job"
    for group in groups:
        worker = group["template"]["spec"]["containers"][0]
        assert worker["resources"]["limits"]["nvidia.com/gpu"] >= 1
    # KubeRay supplies the command of every Ray container (`ray start ...`) and of the
    # submitter (`ray job submit ... -- ENTRYPOINT`) only when none is set.
    for where, template in pod_templates(rayjob):
        for container in template["spec"]["containers"]:
            assert "command" not in container and "args" not in container, where


@pytest.mark.parametrize(("name", "objects"), RENDERED, ids=RENDERED_IDS)
def test_every_container_runs_the_project_image(name, objects):
    overlay = name.startswith("overlays/")
    for obj in objects:
        for where, template in pod_templates(obj):
            for container in template["spec"]["containers"]:
                image = container["image"]
                # Overlays pin the image to the project's own version.
                expected = f"spotrain:{version('spotrain')}" if overlay else "spotrain"
                assert image == expected, (name, where)
                assert not image.endswith(":latest")
