"""The deploy files agree with the code: topics, partitions, ports and settings names.

Fast, no tools needed; scripts/deploy_check.sh (make deploy-check) runs the real
tools (kustomize, docker compose, tofu, checkov) on the same files.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic_settings import BaseSettings
from spamops_inference.settings import InferenceSettings
from spamops_monitor.settings import MonitorSettings
from spamops_registry_bridge.settings import RegistryBridgeSettings
from spamops_runtime.settings import DEFAULT_SERVICE_PORTS, PlatformSettings
from spamops_schemas.topics import catalogue, topic_configs
from spamops_trainer.settings import TrainerSettings

from deploy import generate
from deploy.docker.healthcheck import is_ready, ready_line

ROOT = Path(__file__).resolve().parents[2]
SETTINGS: dict[str, type[BaseSettings]] = {
    "trainer": TrainerSettings,
    "registry-bridge": RegistryBridgeSettings,
    "inference": InferenceSettings,
    "monitor": MonitorSettings,
}


def env_names(cls: type[BaseSettings]) -> set[str]:
    """Every environment variable a settings class reads (prefix + field, and aliases)."""
    prefix = str(cls.model_config.get("env_prefix", ""))
    names = set()
    for name, info in cls.model_fields.items():
        names.add((prefix + name).upper())
        alias = info.validation_alias
        choices = getattr(alias, "choices", None)
        if isinstance(alias, str):
            names.add(alias.upper())
        elif choices:
            names.update(str(c).upper() for c in choices)
    return names


PLATFORM_ENV = env_names(PlatformSettings)
# Read by the images themselves, not the settings classes.
IMAGE_ENV = {"SPAMOPS_SERVICE_NAME", "SPAMOPS_HEALTHCHECK_PORT"}


def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def k8s_docs(path: str) -> list[dict[str, Any]]:
    text = (ROOT / path).read_text()
    return [d for d in yaml.safe_load_all(text) if d]


def test_generated_files_are_current() -> None:
    assert generate.stale_files() == [], "run: python -m deploy.generate"


def test_compose_topic_init_creates_the_catalogue() -> None:
    script = (ROOT / "deploy/compose/create-topics.sh").read_text()
    lines = re.finditer(r"^create (\S+) (\d+)((?: --config \S+=\S+)*)$", script, re.M)
    created = {m.group(1): (int(m.group(2)), m.group(3)) for m in lines}
    configs = topic_configs()

    def flags(name: str) -> str:
        return "".join(f" --config {k}={v}" for k, v in configs.get(name, {}).items())

    expected = {t.name: (t.partitions, flags(t.name)) for t in catalogue()}
    expected |= {t.dlq: (t.partitions, flags(t.dlq)) for t in catalogue()}
    assert created == expected
    assert "max.message.bytes" in created["emails.inbox"][1]  # bombs up to the inference limit
    init = compose()["services"]["topic-init"]
    assert "./deploy/compose/create-topics.sh:/scripts/create-topics.sh:ro" in init["volumes"]


def test_kafka_topics_match_the_catalogue() -> None:
    topics = {
        d["spec"]["topicName"]: d["spec"]["partitions"]
        for d in k8s_docs("deploy/base/kafka/topics.yaml")
        if d["kind"] == "KafkaTopic"
    }
    expected = {t.name: t.partitions for t in catalogue()}
    expected |= {t.dlq: t.partitions for t in catalogue()}
    assert topics == expected
    kustomization = yaml.safe_load((ROOT / "deploy/base/kustomization.yaml").read_text())
    assert "kafka/topics.yaml" in kustomization["resources"]


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_compose_service_ports_and_env(service: str) -> None:
    entry = compose()["services"][service]
    port = DEFAULT_SERVICE_PORTS[service]
    assert entry["ports"] == [f"127.0.0.1:{port}:{port}"]
    env = entry["environment"]
    assert json.loads(env["SPAMOPS_SERVICE_PORTS"]) == DEFAULT_SERVICE_PORTS
    allowed = PLATFORM_ENV | env_names(SETTINGS[service]) | IMAGE_ENV
    assert set(env) <= allowed, set(env) - allowed
    assert entry["build"]["dockerfile"] == f"services/{service}/Dockerfile"


def test_platform_configmap_uses_platform_settings_names() -> None:
    (configmap,) = k8s_docs("deploy/base/platform/configmap.yaml")
    data = configmap["data"]
    assert set(data) <= PLATFORM_ENV, set(data) - PLATFORM_ENV
    assert json.loads(data["SPAMOPS_SERVICE_PORTS"]) == DEFAULT_SERVICE_PORTS
    # Same endpoints settings in compose and on Kubernetes.
    compose_env = compose()["services"]["inference"]["environment"]
    assert set(data) | {"SPAMOPS_REDIS_URL"} == set(compose_env)


@pytest.mark.parametrize("service", sorted(SETTINGS))
def test_kubernetes_service_ports_and_env(service: str) -> None:
    docs = {d["kind"]: d for d in k8s_docs(f"deploy/base/services/{service}.yaml")}
    port = DEFAULT_SERVICE_PORTS[service]
    container = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]
    assert container["ports"][0]["containerPort"] == port
    assert docs["Service"]["spec"]["ports"][0]["port"] == port
    assert docs["NetworkPolicy"]["spec"]["ingress"][0]["ports"][0]["port"] == port
    allowed = PLATFORM_ENV | env_names(SETTINGS[service]) | IMAGE_ENV
    names = {e["name"] for e in container["env"]}
    assert names <= allowed, names - allowed
    assert container["readinessProbe"]["exec"]["command"][-1] == service
    for kind in ("ServiceMonitor", "PodDisruptionBudget"):
        assert kind in docs
    if service == "inference":
        hpa = docs["HorizontalPodAutoscaler"]["spec"]
        assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 10)
        assert hpa["metrics"][0]["resource"]["target"]["averageUtilization"] == 70


def test_trainer_gets_the_ray_cluster() -> None:
    docs = {d["kind"]: d for d in k8s_docs("deploy/base/services/trainer.yaml")}
    env = docs["Deployment"]["spec"]["template"]["spec"]["containers"][0]["env"]
    (ray,) = [e for e in env if e["name"] == "RAY_ADDRESS"]
    (cluster,) = k8s_docs("deploy/base/ray/raycluster.yaml")
    assert ray["value"] == f"ray://{cluster['metadata']['name']}-head-svc:10001"


def test_inference_services_scaling() -> None:
    isvcs = {
        d["metadata"]["name"]: d["spec"]["predictor"]
        for d in k8s_docs("deploy/base/triton/inferenceservices.yaml")
        if d["kind"] == "InferenceService"
    }
    settings = RegistryBridgeSettings()
    assert set(isvcs) == {settings.triton_name("staging"), settings.triton_name("production")}
    staging, production = isvcs["spam-detector-staging"], isvcs["spam-detector-production"]
    assert (staging["minReplicas"], staging["maxReplicas"]) == (1, 3)
    assert (production["minReplicas"], production["maxReplicas"]) == (2, 10)
    for predictor in isvcs.values():
        assert "--model-control-mode=explicit" in predictor["model"]["args"]


def test_secrets_are_referenced_not_inlined() -> None:
    for path in (ROOT / "deploy").rglob("*.yaml"):
        for doc in yaml.safe_load_all(path.read_text()):
            assert not (doc and doc.get("kind") == "Secret"), f"{path} inlines a Secret"
    bridge = compose()["services"]["registry-bridge"]["environment"]
    # Required, from the environment (issue 17): ${VAR:?...} makes compose refuse to start.
    assert bridge["SPAMOPS_APPROVAL_SECRET"].startswith("${SPAMOPS_APPROVAL_SECRET:?")
    assert bridge["SPAMOPS_REGISTRY_BRIDGE_APPROVERS"].startswith("${SPAMOPS_APPROVERS:?")


def test_healthcheck_reads_the_readiness_gauge() -> None:
    text = "# HELP x\n" + ready_line("inference") + "\n"
    assert ready_line("inference") == 'spamops_service_ready{service="inference"} 1.0'
    assert is_ready(text, "inference")
    assert not is_ready(text.replace("1.0", "0.0"), "inference")
    assert not is_ready(text, "monitor")
