"""The deploy files grant exactly the ACL table: compose scripts, Strimzi KafkaUsers, secrets."""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml
from spamops_runtime.acl import (
    ADMIN,
    SERVICES,
    AclRule,
    Operation,
    PatternType,
    ResourceType,
    acl_rules,
    principals,
    service_principal,
)

from deploy import generate

ROOT = Path(__file__).resolve().parents[2]
Binding = tuple[str, str, str, str, str]  # principal, type, name, pattern, operation


def _expected() -> set[Binding]:
    return {_binding(rule) for rule in acl_rules()}


def _binding(rule: AclRule) -> Binding:
    return (
        rule.principal,
        rule.resource_type.name.lower(),
        rule.resource,
        rule.pattern.name.lower(),
        rule.operation.name.lower(),
    )


def _docs(path: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((ROOT / path).read_text()) if d]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_compose_acl_script_grants_exactly_the_table() -> None:
    found: set[Binding] = set()
    for line in (ROOT / "deploy/compose/create-acls.sh").read_text().splitlines():
        if not line.startswith("acl --"):
            continue
        args = shlex.split(line)[1:]
        principal = pattern = None
        operations, resources = [], []
        for flag, value in zip(args[::2], args[1::2], strict=True):
            if flag == "--allow-principal":
                principal = value.removeprefix("User:")
            elif flag == "--operation":
                operations.append(value.lower())
            elif flag in ("--topic", "--group"):
                resources.append((flag[2:], value))
            elif flag == "--resource-pattern-type":
                pattern = value
            else:
                pytest.fail(f"unexpected {flag}")
        assert principal and pattern and operations and resources
        found |= {(principal, t, n, pattern, op) for t, n in resources for op in operations}
    assert found == _expected()


def test_strimzi_kafka_users_grant_exactly_the_table() -> None:
    users = {d["metadata"]["name"]: d for d in _docs("deploy/base/kafka/users.yaml")}
    assert set(users) == set(principals())
    found: set[Binding] = set()
    for name, user in users.items():
        assert user["spec"]["authentication"] == {"type": "scram-sha-512"}
        if name == ADMIN:
            assert "authorization" not in user["spec"]
            continue
        for acl in user["spec"]["authorization"]["acls"]:
            resource = acl["resource"]
            pattern = {"prefix": "prefixed", "literal": "literal"}[resource["patternType"]]
            found |= {
                (name, resource["type"], resource["name"], pattern, op.lower())
                for op in acl["operations"]
            }
    assert found == _expected()
    kafka = next(d for d in _docs("deploy/base/kafka/kafka.yaml") if d["kind"] == "Kafka")
    assert kafka["spec"]["kafka"]["authorization"] == {"type": "simple", "superUsers": [ADMIN]}
    for listener in kafka["spec"]["kafka"]["listeners"]:
        assert listener["authentication"] == {"type": "scram-sha-512"}
    kustomization = yaml.safe_load((ROOT / "deploy/base/kustomization.yaml").read_text())
    assert "kafka/users.yaml" in kustomization["resources"]


@pytest.mark.parametrize("service", SERVICES)
def test_each_kubernetes_service_uses_its_own_kafka_user_from_a_file(service: str) -> None:
    docs = {d["kind"]: d for d in _docs(f"deploy/base/services/{service}.yaml")}
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["SPAMOPS_KAFKA_SASL_USERNAME"]["value"] == service_principal(service)
    assert "SPAMOPS_KAFKA_SASL_PASSWORD" not in env
    path = env["SPAMOPS_KAFKA_SASL_PASSWORD_FILE"]["value"]
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert path == mounts["kafka-credentials"]["mountPath"] + "/password"
    assert mounts["kafka-credentials"]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["kafka-credentials"]["secret"]["secretName"] == service_principal(service)
    (configmap,) = _docs("deploy/base/platform/configmap.yaml")
    assert configmap["data"]["SPAMOPS_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"


def test_compose_gives_each_container_only_its_own_kafka_password() -> None:
    compose = _compose()
    services = compose["services"]
    declared = compose["secrets"]
    everyone = {generate.compose_secret(p) for p in principals()}
    everyone.add(generate.compose_secret(generate.CONTROLLER_SECRET))
    assert everyone <= set(declared)
    for name in everyone:
        principal = name.removeprefix("kafka_")
        assert declared[name]["file"] == f"./{generate.COMPOSE_SECRETS}/{principal}.password"
    assert set(services["kafka"]["secrets"]) == everyone
    assert services["topic-init"]["secrets"] == [generate.compose_secret(ADMIN)]
    assert services["acl-init"]["secrets"] == [generate.compose_secret(ADMIN)]
    for service in SERVICES:
        entry = services[service]
        principal = service_principal(service)
        assert entry["secrets"] == [generate.compose_secret(principal)]
        assert entry["env_file"] == [f"deploy/compose/env/{service}.env"]
        env_file = (ROOT / entry["env_file"][0]).read_text()
        assert f"SPAMOPS_KAFKA_SASL_USERNAME={principal}\n" in env_file
        assert f"/run/secrets/{generate.compose_secret(principal)}\n" in env_file
        assert entry["environment"]["SPAMOPS_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
        assert "SPAMOPS_KAFKA_SASL_PASSWORD" not in entry["environment"]
        assert entry["depends_on"]["acl-init"]["condition"] == "service_completed_successfully"


def test_compose_broker_formats_every_scram_user() -> None:
    script = (ROOT / "deploy/compose/kafka-secure.sh").read_text()
    assert f"for name in {' '.join(principals())}; do" in script
    assert "super.users=User:admin\n" in script
    assert "allow.everyone.if.no.acl.found=false\n" in script
    assert "ANONYMOUS" not in script


def test_rule_codes_are_kafkas() -> None:
    """The wire codes of org.apache.kafka.common.acl / resource enums."""
    assert (ResourceType.TOPIC, ResourceType.GROUP) == (2, 3)
    assert (PatternType.LITERAL, PatternType.PREFIXED) == (3, 4)
    assert (Operation.READ, Operation.WRITE, Operation.DESCRIBE) == (3, 4, 8)
