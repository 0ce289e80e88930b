"""Re-drive dead letters: send them back to their original topic once the cause is fixed.

A dead letter (``<topic>.dlq``) is the failed record unchanged, plus why it
failed in ``x-error-*`` and where it came from in ``x-original-*`` headers.
Re-driving publishes its value and key to the original topic with its original
headers (exact bytes when the dead letter kept them in ``x-original-headers``)
and one more header, ``x-redriven-from: <dlq>:<partition>:<offset>``. That mark
makes it idempotent: before sending, the original topic is read from the
oldest candidate's time on, and a dead letter whose mark is already there is
not sent again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer
from spamops_runtime.kafka import (
    H_ERROR_REASON,
    H_ORIGINAL_HEADERS,
    H_ORIGINAL_TOPIC,
    H_REDRIVEN_FROM,
    RecordContext,
    decode_raw_headers,
)
from spamops_runtime.replay import read_topic, topic_partitions
from spamops_runtime.settings import PlatformSettings

# Headers the dead-letter path adds; a re-driven record goes back without them.
_ADDED_PREFIXES = ("x-error-", "x-original-", "x-dead-letter-")
# A dead letter cut to fit its topic cannot be sent back as it was.
H_TRUNCATED = "x-dead-letter-truncated"


class RedriveError(Exception):
    """The request cannot be carried out (not a dead-letter topic, no such topic)."""


@dataclass
class RedriveResult:
    """What a re-drive did, per dead letter considered."""

    dlq: str
    matched: int = 0
    sent: int = 0
    already: int = 0
    truncated: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)


def redrive_mark(record: RecordContext) -> str:
    """The ``x-redriven-from`` value of a dead letter."""
    return f"{record.topic}:{record.partition}:{record.offset}"


def original_headers(record: RecordContext) -> list[tuple[str, bytes | None]]:
    """The headers the record had before it was dead-lettered (exact when kept)."""
    if H_ORIGINAL_HEADERS in record.headers:
        return list(decode_raw_headers(record.headers[H_ORIGINAL_HEADERS]))
    return [
        (name, value)
        for name, value in record.raw_headers
        if not name.startswith(_ADDED_PREFIXES) and name != H_REDRIVEN_FROM
    ]


async def redrive(
    settings: PlatformSettings,
    dlq: str,
    *,
    reason: str | None = None,
    since_ms: int | None = None,
    dry_run: bool = False,
    on_record: Callable[[RecordContext, str], None] | None = None,
) -> RedriveResult:
    """Send the dead letters of ``dlq`` (matching ``reason`` / ``since_ms``) back.

    ``on_record(dead_letter, outcome)`` is told each one's fate: ``sent`` (or
    ``would-send`` with ``dry_run``), ``already`` (re-driven before) or
    ``truncated`` (cut to fit the DLQ: not sent).
    """
    if not dlq.endswith(".dlq"):
        raise RedriveError(f"{dlq!r} is not a dead-letter topic (<topic>.dlq)")
    if not await topic_partitions(settings, dlq):
        raise RedriveError(f"no topic {dlq!r}")
    result = RedriveResult(dlq=dlq)
    candidates: list[RecordContext] = []
    async for record in read_topic(settings, dlq, since_ms=since_ms, client_id="spamops-redrive"):
        if reason is not None and record.headers.get(H_ERROR_REASON) != reason:
            continue
        candidates.append(record)
    result.matched = len(candidates)
    if not candidates:
        return result

    # Marks already on the original topics, read from the oldest candidate's time on.
    targets = {r.headers.get(H_ORIGINAL_TOPIC) or dlq.removesuffix(".dlq") for r in candidates}
    oldest = min(r.timestamp_ms for r in candidates)
    done: set[str] = set()
    for target in targets:
        async for record in read_topic(
            settings, target, since_ms=oldest, client_id="spamops-redrive"
        ):
            mark = record.headers.get(H_REDRIVEN_FROM)
            if mark:
                done.add(mark)

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="spamops-redrive",
        acks="all",
        max_request_size=12 * 2**20,
        **settings.kafka_client_options(),
    )
    if not dry_run:
        await producer.start()
    try:
        for record in candidates:
            mark = redrive_mark(record)
            target = record.headers.get(H_ORIGINAL_TOPIC) or dlq.removesuffix(".dlq")
            if mark in done:
                result.already += 1
                outcome = "already"
            elif H_TRUNCATED in record.headers:
                result.truncated += 1
                outcome = "truncated"
            else:
                if not dry_run:
                    headers = [*original_headers(record), (H_REDRIVEN_FROM, mark.encode())]
                    await producer.send_and_wait(
                        target,
                        value=record.raw,
                        key=record.key.encode("utf-8") if record.key is not None else None,
                        headers=headers,
                    )
                    done.add(mark)
                result.sent += 1
                result.by_topic[target] = result.by_topic.get(target, 0) + 1
                outcome = "would-send" if dry_run else "sent"
            if on_record is not None:
                on_record(record, outcome)
    finally:
        if not dry_run:
            await producer.stop()
    return result
