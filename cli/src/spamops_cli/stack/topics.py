"""Create the topic catalogue (and every dead-letter twin) and the ACLs on a Kafka cluster."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.protocol.admin import CreateAclsRequest, DeleteAclsRequest, DescribeAclsRequest
from spamops_runtime.acl import ACCESS, ALLOW, AclRule, acl_rules
from spamops_runtime.settings import PlatformSettings
from spamops_schemas.topics import all_topic_names, catalogue, topic_configs

from spamops_cli.stack.aio import run_sync
from spamops_cli.stack.paths import StackError

logger = logging.getLogger(__name__)


def wanted_partitions() -> dict[str, int]:
    """Topic name → partitions, dead-letter topics included (same count as their source)."""
    wanted: dict[str, int] = {}
    for entry in catalogue():
        wanted[entry.name] = entry.partitions
        wanted[entry.dlq] = entry.partitions
    missing = set(all_topic_names()) - set(wanted)
    if missing:  # the catalogue module and this function disagree
        raise StackError(f"kafka: topics without a partition count: {sorted(missing)}")
    return wanted


def ensure_topics(
    settings: PlatformSettings, *, replication_factor: int = 1, timeout: float = 60.0
) -> list[str]:
    """Create every catalogue topic missing on ``settings.kafka_bootstrap``; idempotent.

    Existing topics are kept; one with fewer partitions than the catalogue is
    grown (Kafka cannot shrink a topic, so more partitions is only logged).
    Returns the names of the topics created.
    """
    bootstrap = settings.kafka_bootstrap
    options = settings.kafka_client_options()
    return run_sync(
        lambda: ensure_topics_async(bootstrap, replication_factor, timeout, client_options=options)
    )


def _errors(response: Any, key: str) -> list[tuple[str, int, str]]:
    """(topic, error code, message) of a CreateTopics / CreatePartitions response."""
    obj = response.to_object()
    return [
        (item["topic"], int(item["error_code"]), str(item.get("error_message") or ""))
        for item in obj.get(key, [])
    ]


def _raise_or_retry(errors: list[tuple[str, int, str]], action: str) -> bool:
    """True if some error is retriable; StackError on a fatal one."""
    retry = False
    for topic, code, message in errors:
        if code in (0, TopicAlreadyExistsError.errno):
            continue
        error = for_code(code)
        if getattr(error, "retriable", False):
            retry = True
            continue
        raise StackError(f"kafka: {action} {topic} failed: {error.__name__} {message}")
    return retry


async def ensure_topics_async(
    bootstrap: str,
    replication_factor: int = 1,
    within_s: float = 60.0,
    *,
    client_options: Mapping[str, Any] | None = None,
) -> list[str]:
    """Async body of :func:`ensure_topics` against ``bootstrap``.

    ``client_options``: aiokafka SASL options (``PlatformSettings.kafka_client_options``).
    """
    wanted = wanted_partitions()
    configs = topic_configs()  # e.g. emails.inbox max.message.bytes (only at creation)
    created: list[str] = []
    deadline = time.monotonic() + within_s
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=15000, **dict(client_options or {})
    )
    await admin.start()
    try:
        while True:
            existing = set(await admin.list_topics())
            missing = [name for name in wanted if name not in existing]
            retry = False
            if missing:
                response = await admin.create_topics(
                    [
                        NewTopic(
                            name, wanted[name], replication_factor, topic_configs=configs.get(name)
                        )
                        for name in missing
                    ]
                )
                errors = _errors(response, "topic_errors")
                retry = _raise_or_retry(errors, "creating")
                failed = {topic for topic, code, _ in errors if code != 0}
                created += [name for name in missing if name not in failed]
            grow: dict[str, NewPartitions] = {}
            for info in await admin.describe_topics(list(wanted)):
                name, code = info["topic"], int(info["error_code"])
                if code != 0:  # e.g. leader not yet elected just after creation
                    retry = True
                    continue
                count = len(info["partitions"])
                if count < wanted[name]:
                    grow[name] = NewPartitions(total_count=wanted[name])
                elif count > wanted[name]:
                    logger.warning(
                        "kafka: %s has %d partitions, the catalogue says %d",
                        name, count, wanted[name],
                    )  # fmt: skip
            if grow:
                logger.info("kafka: growing partitions of %s", sorted(grow))
                response = await admin.create_partitions(grow)
                retry |= _raise_or_retry(_errors(response, "topic_errors"), "growing")
                retry = True  # describe again to confirm
            if not retry:
                break
            if time.monotonic() >= deadline:
                raise StackError(f"kafka: topics not all ready after {within_s:.0f}s")
            await asyncio.sleep(0.5)
    finally:
        await admin.close()
    if created:
        logger.info("kafka: created %d topics", len(created))
    return created


# A binding on the wire: resource type, name, pattern type, principal, host, operation,
# permission type (Kafka's codes).
Binding = tuple[int, str, int, str, str, int, int]
ANY = 1  # the ANY code of every ACL enum (a filter that matches everything)


def _binding(rule: AclRule) -> Binding:
    return (
        int(rule.resource_type),
        rule.resource,
        int(rule.pattern),
        rule.kafka_principal,
        "*",
        int(rule.operation),
        ALLOW,
    )


def _check(response: Any, key: str, what: str) -> None:
    obj = response.to_object()
    items = obj.get(key, [obj]) if key else [obj]
    for item in items:
        code = int(item.get("error_code", 0))
        if code:
            raise StackError(
                f"kafka: {what} failed: {for_code(code).__name__} {item.get('error_message') or ''}"
            )


async def ensure_acls_async(
    bootstrap: str,
    client_options: Mapping[str, Any],
    rules: Iterable[AclRule] | None = None,
    *,
    managed: Iterable[str] | None = None,
) -> tuple[int, int]:
    """Make the ACLs of the ``managed`` principals exactly ``rules``; idempotent.

    ``rules`` default to the ACL table, ``managed`` to its principals. Missing
    bindings are created (Kafka treats an existing one as created); bindings of
    a managed principal that the rules no longer grant are deleted, so
    narrowing the table narrows the cluster. Other principals' ACLs are left
    alone. ``client_options`` must authenticate a super user. Returns
    (created, deleted).
    """
    wanted = {_binding(rule) for rule in (acl_rules() if rules is None else rules)}
    ours = {f"User:{name}" for name in (ACCESS if managed is None else managed)}
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=15000, **dict(client_options)
    )
    await admin.start()
    try:
        # The public admin API of aiokafka 0.14 has no ACL calls: send the requests.
        described = await admin._send_request(
            DescribeAclsRequest(ANY, None, ANY, None, None, ANY, ANY)  # type: ignore[arg-type]
        )
        _check(described, "", "describing ACLs")
        existing: set[Binding] = set()
        for resource in described.to_object()["resources"]:
            for acl in resource["acls"]:
                existing.add(
                    (
                        int(resource["resource_type"]),
                        str(resource["resource_name"]),
                        int(resource.get("resource_pattern_type", 3)),
                        str(acl["principal"]),
                        str(acl["host"]),
                        int(acl["operation"]),
                        int(acl["permission_type"]),
                    )
                )
        missing = sorted(wanted - existing)
        stale = sorted(b for b in existing - wanted if b[3] in ours)
        for binding in missing:
            response = await admin._send_request(CreateAclsRequest(*binding))
            _check(response, "creation_responses", f"creating ACL {binding}")
        for binding in stale:
            response = await admin._send_request(DeleteAclsRequest(*binding))
            _check(response, "filter_responses", f"deleting ACL {binding}")
    finally:
        await admin.close()
    logger.info(
        "kafka: %d ACLs in place (%d created, %d stale removed)",
        len(wanted), len(missing), len(stale),
    )  # fmt: skip
    if stale:
        logger.warning("kafka: removed ACLs the table no longer grants: %s", stale)
    return len(missing), len(stale)
