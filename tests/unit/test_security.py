"""Least privilege without a broker: the ACL table, credentials in settings, the stack's wiring."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from pydantic import SecretStr
from spamops_cli.asyncapi import SERVICES as ASYNCAPI_SERVICES
from spamops_cli.stack.kafka_broker import Kafka
from spamops_cli.stack.paths import StackPaths
from spamops_cli.stack.secrets import ensure_passwords, password_file, read_password
from spamops_cli.stack.services import SERVICES
from spamops_runtime.acl import (
    ACCESS,
    ADMIN,
    APPROVER,
    Operation,
    PatternType,
    ResourceType,
    acl_rules,
    principals,
    service_principal,
    writers_of,
)
from spamops_runtime.acl import (
    SERVICES as ACL_SERVICES,
)
from spamops_runtime.kafka import make_broker
from spamops_runtime.settings import KafkaCredentialsError, PlatformSettings
from spamops_schemas.topics import PROMOTION_APPROVED, all_topic_names

REPO = Path(__file__).resolve().parents[2]


def _secure(tmp_path: Path, **kwargs: object) -> PlatformSettings:
    return PlatformSettings(home=tmp_path, kafka_security_protocol="SASL_PLAINTEXT", **kwargs)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the table
def test_only_the_approver_may_write_promotion_approvals() -> None:
    assert writers_of(PROMOTION_APPROVED) == [APPROVER]


def test_every_rule_names_a_catalogue_topic_or_the_principals_group() -> None:
    topics = set(all_topic_names())
    for rule in acl_rules():
        assert rule.principal in principals() and rule.principal != ADMIN
        if rule.resource_type is ResourceType.TOPIC:
            assert rule.resource in topics and rule.pattern is PatternType.LITERAL
        else:  # consumer groups: the principal's own prefix, Read only
            assert rule.resource_type is ResourceType.GROUP
            assert (rule.resource, rule.pattern) == (rule.principal, PatternType.PREFIXED)
            assert rule.operation is Operation.READ


def test_no_principal_gets_cluster_or_wildcard_rights() -> None:
    assert all(r.resource_type is not ResourceType.CLUSTER for r in acl_rules())
    assert all("*" not in r.resource for r in acl_rules())


@pytest.mark.parametrize("service", ASYNCAPI_SERVICES)
def test_the_table_matches_what_each_service_really_reads_and_writes(service: str) -> None:
    """Compared with the service's AsyncAPI document (generated from its FastStream app)."""
    doc = json.loads((REPO / "docs" / "asyncapi" / f"{service}.json").read_text())
    channels = {name: ch["address"] for name, ch in doc["channels"].items()}
    received = {
        channels[op["channel"]["$ref"].rsplit("/", 1)[-1]]
        for op in doc["operations"].values()
        if op["action"] == "receive"
    }
    sent = {
        channels[op["channel"]["$ref"].rsplit("/", 1)[-1]]
        for op in doc["operations"].values()
        if op["action"] == "send"
    }
    row = ACCESS[service_principal(service)]
    assert set(row.consumes) | set(row.follows) == received
    assert set(row.produces) == sent


def test_each_service_may_dead_letter_what_it_consumes() -> None:
    for service in ACL_SERVICES:
        principal = service_principal(service)
        writes = {
            r.resource
            for r in acl_rules()
            if r.principal == principal and r.operation is Operation.WRITE
        }
        for topic in ACCESS[principal].consumes:
            assert topic + ".dlq" in writes


def test_group_prefixes_are_the_services_default_group_ids() -> None:
    from spamops_gateway.settings import GatewaySettings
    from spamops_inference.settings import InferenceSettings
    from spamops_monitor.settings import MonitorSettings
    from spamops_registry_bridge.settings import RegistryBridgeSettings
    from spamops_trainer.settings import TrainerSettings

    for cls, service in (
        (TrainerSettings, "trainer"),
        (RegistryBridgeSettings, "registry-bridge"),
        (InferenceSettings, "inference"),
        (MonitorSettings, "monitor"),
        (GatewaySettings, "gateway"),
    ):
        assert cls.model_fields["group_id"].default == service_principal(service)


# ------------------------------------------------------------ credentials
def test_plaintext_is_the_default_and_needs_nothing() -> None:
    settings = PlatformSettings(kafka_security_protocol="PLAINTEXT")
    assert settings.kafka_client_options() == {}
    assert settings.to_env()["SPAMOPS_KAFKA_SECURITY_PROTOCOL"] == "PLAINTEXT"


def test_secure_settings_read_the_password_file(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("s3cret-from-file\n")
    settings = _secure(
        tmp_path,
        kafka_sasl_username="approver",
        kafka_sasl_password=SecretStr("in-the-env"),
        kafka_sasl_password_file=secret,
    )
    assert settings.kafka_client_options() == {
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": "SCRAM-SHA-512",
        "sasl_plain_username": "approver",
        "sasl_plain_password": "s3cret-from-file",
    }
    env = settings.to_env()
    assert env["SPAMOPS_KAFKA_SASL_PASSWORD_FILE"] == str(secret)
    assert "SPAMOPS_KAFKA_SASL_PASSWORD" not in env
    text = repr(settings) + str(settings) + json.dumps(env)
    assert "s3cret" not in text and "in-the-env" not in text


def test_secure_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPAMOPS_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("SPAMOPS_KAFKA_SASL_USERNAME", "operator")
    monkeypatch.setenv("SPAMOPS_KAFKA_SASL_PASSWORD", "pw-in-env")
    settings = PlatformSettings()
    assert settings.kafka_secure
    assert settings.kafka_client_options()["sasl_plain_password"] == "pw-in-env"
    assert "pw-in-env" not in repr(settings)
    # No file: the child gets the variable itself, the only way it can authenticate.
    assert settings.to_env()["SPAMOPS_KAFKA_SASL_PASSWORD"] == "pw-in-env"


def test_missing_credentials_are_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(KafkaCredentialsError, match="SPAMOPS_KAFKA_SASL_USERNAME"):
        _secure(tmp_path).kafka_client_options()
    missing = _secure(tmp_path, kafka_sasl_username="x", kafka_sasl_password_file=tmp_path / "nope")
    with pytest.raises(KafkaCredentialsError, match="cannot read"):
        missing.kafka_client_options()


def test_the_broker_authenticates_with_scram_512(tmp_path: Path) -> None:
    from faststream.security import SASLScram512

    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    settings = _secure(tmp_path, kafka_sasl_username="spamops-trainer")
    settings = settings.as_kafka_user("spamops-trainer", secret)
    broker = make_broker(settings, client_id="t")
    security = broker.specification.security
    assert isinstance(security, SASLScram512)
    assert security.username == "spamops-trainer"


# ------------------------------------------------------------ the local stack
def test_passwords_are_random_private_files(tmp_path: Path) -> None:
    settings = _secure(tmp_path)
    files = ensure_passwords(settings)
    assert set(principals()) <= set(files)
    assert stat.S_IMODE(files[ADMIN].parent.stat().st_mode) == 0o700
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in files.values())
    values = {read_password(settings, name) for name in files}
    assert len(values) == len(files)
    assert ensure_passwords(settings) == files  # kept, not regenerated
    assert {read_password(settings, name) for name in files} == values


def test_secure_kafka_properties(tmp_path: Path) -> None:
    settings = _secure(tmp_path)
    ensure_passwords(settings)
    kafka = Kafka(settings, StackPaths.from_settings(settings))
    props = dict(line.split("=", 1) for line in kafka._properties().splitlines() if "=" in line)
    assert props["authorizer.class.name"].endswith("StandardAuthorizer")
    assert props["super.users"] == "User:admin"
    assert props["allow.everyone.if.no.acl.found"] == "false"
    assert props["listener.security.protocol.map"] == (
        "CONTROLLER:SASL_PLAINTEXT,CLIENT:SASL_PLAINTEXT"
    )
    assert props["listeners"].startswith("CLIENT://127.0.0.1:")
    assert "ANONYMOUS" not in kafka._properties()
    plain = Kafka(PlatformSettings(home=tmp_path), StackPaths.from_settings(settings))
    assert "authorizer" not in plain._properties()


def test_each_service_gets_its_own_principal_and_only_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SPAMOPS_KAFKA_SASL_USERNAME", "admin")
    monkeypatch.setenv("SPAMOPS_KAFKA_SASL_PASSWORD", "the-admins-password")
    settings = _secure(tmp_path)
    for cls in SERVICES:
        env = cls(settings, StackPaths.from_settings(settings)).env()
        assert env["SPAMOPS_KAFKA_SECURITY_PROTOCOL"] == "SASL_PLAINTEXT"
        assert env["SPAMOPS_KAFKA_SASL_USERNAME"] == service_principal(cls.name)
        assert env["SPAMOPS_KAFKA_SASL_PASSWORD_FILE"] == str(
            password_file(settings, service_principal(cls.name))
        )
        assert "SPAMOPS_KAFKA_SASL_PASSWORD" not in env
    plain = PlatformSettings(home=tmp_path, kafka_sasl_username=None, kafka_sasl_password=None)
    env = SERVICES[0](plain, StackPaths.from_settings(plain)).env()
    assert "SPAMOPS_KAFKA_SASL_USERNAME" not in env


def test_the_local_secure_bridge_gets_an_approval_key_file_and_approvers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Secure mode refuses an unprotected bridge, so the local stack provides both."""
    from spamops_cli.stack.services import RegistryBridge
    from spamops_registry_bridge.app import check_approval_policy
    from spamops_registry_bridge.settings import RegistryBridgeSettings

    monkeypatch.delenv("SPAMOPS_APPROVAL_SECRET", raising=False)
    monkeypatch.delenv("SPAMOPS_REGISTRY_BRIDGE_APPROVERS", raising=False)
    monkeypatch.setenv("USER", "carol")
    settings = _secure(tmp_path)
    env = RegistryBridge(settings, StackPaths.from_settings(settings)).env()
    key = Path(env["SPAMOPS_APPROVAL_SECRET_FILE"])
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text().strip()) == 64
    assert json.loads(env["SPAMOPS_REGISTRY_BRIDGE_APPROVERS"]) == ["carol", "on-call"]
    assert "SPAMOPS_APPROVAL_SECRET" not in env  # a path, never the key
    plain = PlatformSettings(home=tmp_path / "plain")
    assert (
        "SPAMOPS_APPROVAL_SECRET_FILE"
        not in RegistryBridge(plain, StackPaths.from_settings(plain)).env()
    )
    for name, value in env.items():
        if name.startswith("SPAMOPS_"):
            monkeypatch.setenv(name, value)
    bridge = RegistryBridgeSettings()
    assert bridge.approval_secrets() == [key.read_text().strip()]
    check_approval_policy(bridge)  # starts
    # What the caller sets wins.
    monkeypatch.setenv("SPAMOPS_REGISTRY_BRIDGE_APPROVERS", '["dave"]')
    env = RegistryBridge(settings, StackPaths.from_settings(settings)).env()
    assert env["SPAMOPS_REGISTRY_BRIDGE_APPROVERS"] == '["dave"]'


def test_an_admin_password_in_the_settings_seeds_the_stack(tmp_path: Path) -> None:
    settings = _secure(
        tmp_path, kafka_sasl_username="admin", kafka_sasl_password=SecretStr("chosen-pw")
    )
    kafka = Kafka(settings, StackPaths.from_settings(settings))
    kafka._seed_admin_password()
    ensure_passwords(settings)
    assert read_password(settings, ADMIN) == "chosen-pw"
    assert stat.S_IMODE(password_file(settings, ADMIN).stat().st_mode) == 0o600
    assert kafka.admin_options()["sasl_plain_password"] == "chosen-pw"
    # Another user's password never becomes the admin's.
    other = _secure(
        tmp_path / "b", kafka_sasl_username="operator", kafka_sasl_password=SecretStr("x")
    )
    Kafka(other, StackPaths.from_settings(other))._seed_admin_password()
    assert not password_file(other, ADMIN).exists()


def test_a_secured_broker_does_not_try_to_create_topics(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    settings = _secure(tmp_path).as_kafka_user("spamops-inference", secret)
    assert (
        make_broker(settings, client_id="t").config.broker_config.allow_auto_create_topics is False
    )
    plain = PlatformSettings(kafka_security_protocol="PLAINTEXT")
    assert make_broker(plain, client_id="t").config.broker_config.allow_auto_create_topics is True


def test_tritons_repository_api_is_behind_a_private_key(tmp_path: Path) -> None:
    """Only key holders may load/unload (issue 17); the key lives in a 0600 file."""
    from spamops_cli.stack.triton_server import Triton
    from spamops_runtime.triton_repo import REPOSITORY_KEY_HEADER

    settings = PlatformSettings(home=tmp_path)
    assert settings.triton_repository_key() is None  # no stack yet: an unrestricted client
    command = Triton(settings, StackPaths.from_settings(settings)).command()
    key = settings.triton_repository_key()
    assert key and len(key) >= 24
    assert stat.S_IMODE(settings.triton_repository_key_path.stat().st_mode) == 0o600
    assert f"--http-restricted-api=model-repository:{REPOSITORY_KEY_HEADER}={key}" in command
    assert f"--grpc-restricted-protocol=model-repository:{REPOSITORY_KEY_HEADER}={key}" in command
    # The same key on the next start; services find the file through the environment.
    assert Triton(settings, StackPaths.from_settings(settings)).repository_key() == key
    env = settings.to_env()
    assert env["SPAMOPS_TRITON_REPOSITORY_KEY_FILE"] == str(settings.triton_repository_key_path)
    assert key not in env.values()


def test_the_evidently_ui_binds_the_stack_host_and_serves_the_monitors_workspace(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like every local endpoint, the Evidently UI (issue 20) binds SPAMOPS_HOST; the monitor
    (a child process: to_env) and the UI agree on the workspace and the link base; test
    stacks give it a free port, never the default one another stack may hold."""
    from spamops_cli import stack as local_stack
    from spamops_cli.stack.evidently_ui import EvidentlyUI

    from tests.integration.conftest import free_port_settings

    settings = PlatformSettings(home=tmp_path)
    ui = EvidentlyUI(settings, StackPaths.from_settings(settings))
    command = ui.command()
    assert command[command.index("--host") + 1] == "127.0.0.1"
    assert command[command.index("--port") + 1] == "8050" and ui.ports() == [8050]
    workspace = tmp_path.resolve() / "data" / "evidently"
    assert command[command.index("--workspace") + 1] == str(workspace) == str(ui.data_dir)
    assert ui.env()["DO_NOT_TRACK"] == "1"
    for key, value in settings.to_env().items():
        monkeypatch.setenv(key, value)
    child = PlatformSettings()  # what the monitor, started by the stack, reads
    assert child.evidently_workspace_dir == workspace
    assert child.evidently_ui == settings.evidently_ui == "http://127.0.0.1:8050"
    assert "evidently" in local_stack.VIEWER_NAMES
    assert "evidently" not in local_stack.INFRASTRUCTURE_NAMES  # test stacks skip it
    free = free_port_settings(tmp_path / "free")
    assert free.evidently_ui_port != 8050 and free.evidently_ui.endswith(
        f":{free.evidently_ui_port}"
    )
