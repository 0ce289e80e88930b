"""Least privilege on a real secure stack: SASL/SCRAM principals and Kafka's own ACLs.

A Kafka started with ``kafka_security_protocol=SASL_PLAINTEXT`` (``spamops up
--secure``) in a temporary home, on free ports. Kafka itself, not a service,
refuses what the ACL table (``spamops_runtime.acl``) does not grant. Also: every
endpoint of the session stack listens on 127.0.0.1 only.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import (
    GroupAuthorizationFailedError,
    KafkaConnectionError,
    TopicAuthorizationFailedError,
)
from spamops_cli import stack as local_stack
from spamops_cli.kafka_io import send_events
from spamops_cli.stack.paths import StackPaths
from spamops_cli.stack.process import group_members, read_pid
from spamops_cli.stack.secrets import as_local_user, password_file, secrets_dir
from spamops_cli.stack.topics import ensure_acls_async
from spamops_runtime.acl import (
    APPROVER,
    OPERATOR,
    AclRule,
    Operation,
    PatternType,
    ResourceType,
    acl_rules,
    principals,
    service_principal,
)
from spamops_runtime.kafka import H_ERROR_REASON
from spamops_runtime.replay import read_topic
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import PromotionApproved
from spamops_schemas.signing import signed
from spamops_schemas.topics import MODELS_TRAINED, PROMOTION_APPROVED

from tests.integration.conftest import free_port_settings

pytestmark = pytest.mark.integration

APPROVAL_SECRET = "it-approval-secret"  # a test HMAC key
START_SECONDS: dict[str, float] = {}


@pytest.fixture(scope="module")
def secure(
    tmp_path_factory: pytest.TempPathFactory, _shared_tools: None
) -> Iterator[PlatformSettings]:
    """A secure Kafka (SASL/SCRAM, ACLs) in its own home; the stack's view (no user)."""
    settings = free_port_settings(tmp_path_factory.mktemp("secure")).model_copy(
        update={"kafka_security_protocol": "SASL_PLAINTEXT"}
    )
    began = time.monotonic()
    try:
        local_stack.up(settings, components=["kafka"])
        START_SECONDS["kafka"] = time.monotonic() - began
        print(f"\nsecure Kafka (format with SCRAM users, start, topics, ACLs): "
              f"{START_SECONDS['kafka']:.1f} s")  # fmt: skip
        yield settings
    finally:
        local_stack.down(settings)


def _as(settings: PlatformSettings, principal: str) -> PlatformSettings:
    return as_local_user(settings, principal)


def _approval(by: str = "alice", version: int = 7, secret: str | None = None) -> PromotionApproved:
    event = PromotionApproved(
        producer="it-security",
        model_name=PlatformSettings().model_name,
        version=version,
        approved_by=by,
        reason="test",
        expires_at=datetime.now(UTC) + timedelta(minutes=10),
    )
    return signed(secret, event) if secret else event


async def _produce(settings: PlatformSettings, topic: str, value: bytes) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        enable_idempotence=True,
        **settings.kafka_client_options(),
    )
    await producer.start()
    try:
        await asyncio.wait_for(producer.send_and_wait(topic, value, key=b"spam-detector"), 30)
    finally:
        await producer.stop()


async def _approvals(settings: PlatformSettings) -> list[bytes]:
    return [r.value async for r in read_topic(settings, PROMOTION_APPROVED, idle_timeout_s=0.5)]


# ----------------------------------------------------------- (a) and (b)
@pytest.mark.parametrize("who", [service_principal("inference"), OPERATOR])
async def test_only_the_approver_may_write_approvals(secure: PlatformSettings, who: str) -> None:
    """(a) Kafka refuses a PromotionApproved from any other principal, services included."""
    event = _approval()
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(_as(secure, who), PROMOTION_APPROVED, event.to_bytes())
    # Also through the platform's own wiring (FastStream broker, as the CLI sends).
    with pytest.raises(TopicAuthorizationFailedError):
        await asyncio.wait_for(send_events(_as(secure, who), [event]), 60)
    admin = _as(secure, "admin")
    assert str(event.event_id).encode() not in b"".join(await _approvals(admin))


async def test_the_approvers_approval_is_accepted_and_read_by_the_bridge(
    secure: PlatformSettings,
) -> None:
    """(b) The approver's PromotionApproved is acknowledged; the bridge's principal reads it."""
    event = _approval(by="approver-it")
    assert await asyncio.wait_for(send_events(_as(secure, APPROVER), [event]), 60) == 1
    seen = await _approvals(_as(secure, service_principal("registry-bridge")))
    assert any(str(event.event_id).encode() in value for value in seen)


# ----------------------------------------------------------------- (c)
async def _consume_one(settings: PlatformSettings, topic: str, group: str) -> None:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=settings.kafka_bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        **settings.kafka_client_options(),
    )
    await consumer.start()
    try:
        await asyncio.wait_for(consumer.getmany(timeout_ms=5000), 30)
        await asyncio.wait_for(consumer.getone(), 5)
    finally:
        await consumer.stop()


async def test_a_service_cannot_read_a_topic_it_does_not_own(secure: PlatformSettings) -> None:
    """(c) inference may not read models.trained (the trainer's output), even in its group."""
    inference = _as(secure, service_principal("inference"))
    with pytest.raises(TopicAuthorizationFailedError):
        await _consume_one(inference, MODELS_TRAINED, "spamops-inference")


async def test_a_service_cannot_use_another_services_group(secure: PlatformSettings) -> None:
    """(c) nor join the trainer's consumer group on a topic it may read."""
    inference = _as(secure, service_principal("inference"))
    with pytest.raises(GroupAuthorizationFailedError):
        await _consume_one(inference, "models.promoted", "spamops-trainer")


async def test_a_service_cannot_write_another_services_topic(secure: PlatformSettings) -> None:
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(_as(secure, service_principal("monitor")), MODELS_TRAINED, b"{}")


async def test_acls_follow_the_table_both_ways(secure: PlatformSettings) -> None:
    """A binding the table no longer grants is removed at the next start's ACL sync."""
    monitor = _as(secure, service_principal("monitor"))
    extra = AclRule(
        service_principal("monitor"),
        ResourceType.TOPIC,
        MODELS_TRAINED,
        PatternType.LITERAL,
        Operation.WRITE,
    )
    options = _as(secure, "admin").kafka_client_options()
    wider = [*acl_rules(), extra]
    assert await ensure_acls_async(secure.kafka_bootstrap, options, wider) == (1, 0)
    await _produce(monitor, MODELS_TRAINED, b"{}")  # granted now
    assert await ensure_acls_async(secure.kafka_bootstrap, options) == (0, 1)
    with pytest.raises(TopicAuthorizationFailedError):
        await _produce(monitor, MODELS_TRAINED, b"{}")
    assert await ensure_acls_async(secure.kafka_bootstrap, options) == (0, 0)


# ----------------------------------------------------------------- (d)
async def test_a_wrong_password_is_refused(secure: PlatformSettings, tmp_path: Path) -> None:
    """(d) SCRAM refuses a wrong password; a client without SASL gets nowhere either."""
    wrong = tmp_path / "wrong.password"
    wrong.write_text("not-the-password\n")
    for settings in (
        secure.as_kafka_user(APPROVER, wrong),
        secure.model_copy(update={"kafka_security_protocol": "PLAINTEXT"}),
    ):
        producer = AIOKafkaProducer(
            bootstrap_servers=settings.kafka_bootstrap,
            request_timeout_ms=5000,
            **settings.kafka_client_options(),
        )
        with pytest.raises((KafkaConnectionError, asyncio.TimeoutError)):
            try:
                await asyncio.wait_for(producer.start(), 20)
            finally:
                await producer.stop()


# ------------------------------------------------------------- secrets
def test_passwords_are_private_files_and_never_logged(secure: PlatformSettings) -> None:
    directory = secrets_dir(secure)
    assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    passwords = {}
    for name in principals():
        path = password_file(secure, name)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        passwords[name] = path.read_text().strip()
        assert len(passwords[name]) >= 24
    assert len(set(passwords.values())) == len(passwords)  # one password per principal
    paths = StackPaths.from_settings(secure)
    kafka_data = paths.data_dir("kafka")
    assert stat.S_IMODE((kafka_data / "server.properties").stat().st_mode) == 0o600
    assert not (kafka_data / "format.args").exists()
    texts = [p.read_text(errors="replace") for p in paths.logs.glob("*.log")]
    assert texts, "no logs to check"
    for name, password in passwords.items():
        assert not any(password in text for text in texts), f"{name}'s password in a log"
    # A child process gets the file's path, never the password.
    env = _as(secure, APPROVER).to_env()
    assert env["SPAMOPS_KAFKA_SASL_PASSWORD_FILE"] == str(password_file(secure, APPROVER))
    assert "SPAMOPS_KAFKA_SASL_PASSWORD" not in env
    assert passwords[APPROVER] not in repr(_as(secure, APPROVER))


# ----------------------------------------- the registry-bridge process itself
async def _dlq_reasons(
    settings: PlatformSettings, events: list[PromotionApproved]
) -> dict[str, str]:
    """x-error-reason of each event once it is on models.promotion-approved.dlq."""
    reasons: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while len(reasons) < len(events) and time.monotonic() < deadline:
        async for record in read_topic(settings, PROMOTION_APPROVED + ".dlq", idle_timeout_s=0.5):
            for event in events:
                if str(event.event_id).encode() in record.value:
                    reasons[str(event.event_id)] = record.headers.get(H_ERROR_REASON, "")
        await asyncio.sleep(1)
    return reasons


def test_the_bridge_service_on_the_secure_stack_checks_signatures(
    secure: PlatformSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registry-bridge runs as its own principal; approvals reach it only via the approver.

    A correctly signed approval passes the HMAC check (and is refused later, for
    an unknown version); a wrongly signed one is refused as bad-signature. Both
    refusals land on the .dlq, which the bridge's principal may write.
    """
    monkeypatch.setenv("SPAMOPS_APPROVAL_SECRET", APPROVAL_SECRET)
    monkeypatch.setenv("SPAMOPS_REGISTRY_BRIDGE_APPROVERS", '["alice"]')
    began = time.monotonic()
    local_stack.up(secure, components=["mlflow", "registry-bridge"])
    START_SECONDS["mlflow+bridge"] = time.monotonic() - began
    print(f"\nMLflow + registry-bridge on the secure stack: {START_SECONDS['mlflow+bridge']:.1f} s")
    paths = StackPaths.from_settings(secure)
    good = _approval(by="alice", version=41, secret=APPROVAL_SECRET)
    forged = _approval(by="alice", version=42, secret="not-the-secret")
    asyncio.run(send_events(_as(secure, APPROVER), [good, forged]))
    reasons = asyncio.run(_dlq_reasons(_as(secure, "admin"), [good, forged]))
    assert reasons == {str(good.event_id): "unknown-version", str(forged.event_id): "bad-signature"}
    # The service authenticated as spamops-registry-bridge, with its password file.
    pid = read_pid(paths.pid_file("registry-bridge"))
    assert pid is not None
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"SPAMOPS_KAFKA_SASL_USERNAME=spamops-registry-bridge" in environ
    assert not any(e.startswith(b"SPAMOPS_KAFKA_SASL_PASSWORD=") for e in environ)
    metrics = httpx.get(f"http://127.0.0.1:{secure.service_ports['registry-bridge']}/metrics")
    assert 'spamops_service_ready{service="registry-bridge"} 1.0' in metrics.text
    local_stack.down(secure)
    texts = [p.read_text(errors="replace") for p in paths.logs.glob("*.log")]
    assert any("registry-bridge" in text for text in texts)
    for name in principals():
        password = password_file(secure, name).read_text().strip()
        assert not any(password in text for text in texts), f"{name}'s password in a log"


def test_the_bridge_refuses_to_start_in_secure_mode_without_approval_protection(
    secure: PlatformSettings,
) -> None:
    """No secret (or an empty one, as compose's ${VAR:-} gives) or no approvers: exit 2."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SPAMOPS_")} | _as(
        secure, service_principal("registry-bridge")
    ).to_env()
    for extra in (
        {"SPAMOPS_APPROVAL_SECRET": "", "SPAMOPS_REGISTRY_BRIDGE_APPROVERS": '["alice"]'},
        {"SPAMOPS_APPROVAL_SECRET": APPROVAL_SECRET},
    ):
        done = subprocess.run(
            [sys.executable, "-m", "spamops_registry_bridge"],
            env=env | extra, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert done.returncode == 2, done.stderr[-2000:]
        assert "secure mode refuses to start" in done.stdout + done.stderr


# ------------------------------------------------------- 127.0.0.1 only
def _listening_inodes() -> dict[int, tuple[str, int]]:
    """inode -> (local address, port) of every TCP socket in LISTEN state."""
    found: dict[int, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state != "0A":  # TCP_LISTEN
                continue
            address_hex, port_hex = local.split(":")
            found[inode] = (_address(address_hex), int(port_hex, 16))
    return found


def _address(hex_address: str) -> str:
    raw = bytes.fromhex(hex_address)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw[::-1])
    words = [raw[i : i + 4][::-1] for i in range(0, 16, 4)]
    flat = b"".join(words)
    if flat[:12] == b"\0" * 10 + b"\xff\xff":
        return ".".join(str(b) for b in flat[12:])
    return ":".join(flat[i : i + 2].hex() for i in range(0, 16, 2))


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def test_every_local_endpoint_binds_to_loopback(stack: PlatformSettings) -> None:
    """Every process of the session stack listens on 127.0.0.1 only (no 0.0.0.0, no ::)."""
    paths = StackPaths.from_settings(stack)
    listening = _listening_inodes()
    seen: dict[str, list[tuple[str, int]]] = {}
    for pid_file in sorted(paths.run.glob("*.pid")):
        pid = read_pid(pid_file)
        if pid is None:
            continue
        pids = {pid, *group_members(pid)}
        sockets = set().union(*(_socket_inodes(p) for p in pids))
        seen[pid_file.stem] = sorted(listening[i] for i in sockets if i in listening)
    for name in local_stack.INFRASTRUCTURE_NAMES:
        assert seen.get(name), f"{name}: no listening socket found ({seen})"
    wrong = {name: [a for a in addrs if a[0] != "127.0.0.1"] for name, addrs in seen.items()}
    assert not any(wrong.values()), f"listening beyond 127.0.0.1: {wrong}"
    expected = {stack.kafka_port, stack.redis_port, stack.mlflow_port, stack.triton_grpc_port}
    assert expected <= {port for addrs in seen.values() for _, port in addrs}
