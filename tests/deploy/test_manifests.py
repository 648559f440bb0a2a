"""deploy/: every Kubernetes manifest validates offline against the API schemas
(`kubernetes-validate`, strict: unknown fields are errors), and what the manifests tell the pod
agrees with the app: flags and HOTSERVE_* variables are real settings, ports, probe paths and
the metrics path are the app's, the termination grace covers the shutdown budget."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from app import config
from app.cli import parse_args
from app.main import create_app
from app.settings import Settings

kubernetes_validate = pytest.importorskip("kubernetes_validate")
yaml = pytest.importorskip("yaml")

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
K8S_VERSION = "1.30.0"
KUSTOMIZATIONS = sorted(p.parent for p in DEPLOY.rglob("kustomization.yaml"))
# Variables the SDKs of object stores read themselves (app/storage/remote.py).
SDK_ENV = re.compile(r"AWS_[A-Z_]+|GOOGLE_[A-Z_]+|AZURE_STORAGE_[A-Z_]+")


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def _patches() -> set[Path]:
    out: set[Path] = set()
    for folder in KUSTOMIZATIONS:
        for patch in _docs(folder / "kustomization.yaml")[0].get("patches", []):
            out.add((folder / patch["path"]).resolve())
    return out


def _resources() -> list[Path]:
    """Every complete manifest (not kustomization files, not partial patches)."""
    patches = _patches()
    return sorted(
        p
        for p in DEPLOY.rglob("*.yaml")
        if p.name != "kustomization.yaml" and p.resolve() not in patches
    )


def _validate(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.mark.parametrize("path", _resources(), ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_manifest_validates(path: Path) -> None:
    for doc in _docs(path):
        _validate(doc)


def _built(folder: Path) -> list[dict[str, Any]]:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl (its built-in kustomize) is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(folder)], capture_output=True, text=True, check=True, timeout=60
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.mark.parametrize("folder", KUSTOMIZATIONS, ids=lambda p: str(p.relative_to(DEPLOY)))
def test_every_kustomization_builds_and_validates(folder: Path) -> None:
    docs = _built(folder)
    assert {d["kind"] for d in docs} >= {
        "Deployment",
        "Service",
        "ConfigMap",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    for doc in docs:
        _validate(doc)
    _check_consistent(docs)


def _check_consistent(docs: list[dict[str, Any]]) -> None:
    by_kind = {d["kind"]: d for d in docs}
    deployment, service = by_kind["Deployment"], by_kind["Service"]
    pod = deployment["spec"]["template"]
    container = pod["spec"]["containers"][0]
    settings = _container_settings(container)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.rest_api_port, "grpc": settings.port}
    for port in service["spec"]["ports"]:
        assert port["targetPort"] in ports and port["port"] == ports[port["targetPort"]]
    labels = pod["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= labels.items()
    assert (
        by_kind["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"].items() <= labels.items()
    )
    target = by_kind["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    _check_probes(container, settings)
    _check_shutdown(pod["spec"], container, settings)
    _check_config_files(by_kind["ConfigMap"], container, settings, pod)
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert (
        container["resources"]["requests"]["cpu"] and container["resources"]["requests"]["memory"]
    )


def _container_settings(container: dict[str, Any]) -> Settings:
    """The Settings the container's entrypoint + args + env produce (each must be a real one)."""
    env: dict[str, str] = {}
    for var in container.get("env", []):
        name = var["name"]
        if name.startswith("HOTSERVE_"):
            field = name.removeprefix("HOTSERVE_").lower()
            assert field in Settings.model_fields, f"{name} is not a setting"
            env[field] = var["value"]
        else:
            assert name in ("MODEL_NAME", "MODEL_BASE_PATH") or SDK_ENV.fullmatch(name), name
    # docker/entrypoint.sh passes the ports, then the container's args (which win).
    argv = ["--port=8500", "--rest_api_port=8501", *container.get("args", [])]
    from_args = parse_args(argv)  # unknown flags and bad values raise here
    return Settings(**{**env, **from_args.model_dump(exclude_unset=True)})


def _check_probes(container: dict[str, Any], settings: Settings) -> None:
    # The config files live in the ConfigMap (checked in _check_config_files), not here.
    local = settings.model_copy(update={"monitoring_config_file": "", "model_config_file": ""})
    paths = {route.path for route in create_app(local).routes}  # type: ignore[attr-defined]
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz" in paths
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz" in paths
    for probe in ("readinessProbe", "livenessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] == "http"


def _check_shutdown(pod: dict[str, Any], container: dict[str, Any], settings: Settings) -> None:
    """The kubelet's grace must cover the preStop pause plus the app's whole shutdown budget
    (`--shutdown_timeout_seconds` bounds grace, drains and unloads: app.shutdown), or in-flight
    requests are killed mid-drain."""
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    budget = settings.shutdown_timeout_seconds
    assert settings.shutdown_grace_seconds < budget
    assert pod["terminationGracePeriodSeconds"] >= float(command[1]) + budget


def _check_config_files(
    configmap: dict[str, Any], container: dict[str, Any], settings: Settings, pod: dict[str, Any]
) -> None:
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    volume = next(v for v in pod["spec"]["volumes"] if v.get("configMap"))
    assert volume["configMap"]["name"] == configmap["metadata"]["name"]
    for flag in ("model_config_file", "monitoring_config_file"):
        path = Path(getattr(settings, flag))
        assert str(path.parent) == mounts[volume["name"]] and path.name in configmap["data"]
    models = config.parse_model_server_config(configmap["data"]["models.config"])
    assert models
    monitoring = config.parse_monitoring_config(configmap["data"]["monitoring.config"])
    annotations = pod["metadata"].get("annotations", {})
    assert monitoring.enable and annotations["prometheus.io/path"] == monitoring.path
    assert int(annotations["prometheus.io/port"]) == settings.rest_api_port


def test_dockerfile_runs_like_tensorflow_serving() -> None:
    """The image cannot be built here (no Docker engine); its declarations are checked."""
    text = (REPO / "Dockerfile").read_text()
    assert re.search(r"^FROM python:[\d.]+-slim", text, re.M)
    assert re.search(r"^EXPOSE .*\b8500\b.*\b8501\b", text, re.M)
    assert re.search(r"^USER (?!root\b|0\b)\S+", text, re.M)
    assert re.search(r"^HEALTHCHECK .*/healthz", text, re.M)
    assert "MODEL_BASE_PATH=/models" in text and "MODEL_NAME=model" in text
