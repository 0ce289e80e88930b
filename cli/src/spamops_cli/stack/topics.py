"""Create the topic catalogue (and every dead-letter twin) and the ACLs on a Kafka cluster."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable, Mapping
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewPartitions, NewTopic
from aiokafka.errors import TopicAlreadyExistsError, for_code
from aiokafka.protocol.admin import CreateAclsRequest
from spamops_runtime.acl import ALLOW, AclRule, acl_rules
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


async def ensure_acls_async(
    bootstrap: str,
    client_options: Mapping[str, Any],
    rules: Iterable[AclRule] | None = None,
) -> int:
    """Create the ALLOW ACLs of ``rules`` (default: the ACL table); idempotent.

    Kafka treats an existing binding as created, so this runs at every start.
    ``client_options`` must authenticate a super user. Returns how many were sent.
    """
    wanted = list(acl_rules() if rules is None else rules)
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=15000, **dict(client_options)
    )
    await admin.start()
    try:
        for rule in wanted:
            request = CreateAclsRequest(
                int(rule.resource_type),
                rule.resource,
                int(rule.pattern),
                rule.kafka_principal,
                "*",
                int(rule.operation),
                ALLOW,
            )
            response = await admin._send_request(request)  # no public API in 0.14
            for item in response.to_object()["creation_responses"]:
                code = int(item["error_code"])
                if code:
                    error = for_code(code)
                    raise StackError(
                        f"kafka: creating ACL {rule} failed: {error.__name__} "
                        f"{item.get('error_message') or ''}"
                    )
    finally:
        await admin.close()
    logger.info("kafka: %d ACLs in place", len(wanted))
    return len(wanted)
