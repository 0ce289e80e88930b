"""Reading a topic from the beginning without a consumer group (replays, CLI, trainer), and lag.

Topics are the platform's log: the CLI prints verdicts with it and the trainer
replays ``emails.feedback`` and ``emails.inbox`` to build a drift snapshot.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from spamops_runtime.kafka import RecordContext, context_of
from spamops_runtime.settings import PlatformSettings

# A record read from a topic: the same type handlers get (headers decoded tolerantly,
# exact header bytes kept), so every reader survives any record a client can write.
ReadRecord = RecordContext


async def topic_partitions(settings: PlatformSettings, topic: str) -> list[int]:
    """The partition ids of ``topic`` (empty if it does not exist)."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=settings.kafka_bootstrap, **settings.kafka_client_options()
    )
    await admin.start()
    try:
        described = await admin.describe_topics([topic])
    finally:
        await admin.close()
    found: list[int] = []
    for entry in described:
        if entry.get("topic") == topic and not entry.get("error_code"):
            found += [int(p["partition"]) for p in entry.get("partitions", [])]
    return sorted(found)


async def read_topic(
    settings: PlatformSettings,
    topic: str,
    *,
    follow: bool = False,
    from_beginning: bool = True,
    idle_timeout_s: float = 2.0,
    client_id: str = "spamops-replay",
    since_ms: int | None = None,
    partitions: Sequence[int] | None = None,
    last_n: int | None = None,
) -> AsyncIterator[ReadRecord]:
    """Yield the records of ``topic`` without joining a consumer group.

    Without ``follow`` it stops at the end offsets it saw when it started.
    ``since_ms`` starts each partition at its first record of that time or later;
    ``last_n`` starts each partition ``last_n`` records before its end.
    ``partitions``: read only these (default: all).
    """
    existing = await topic_partitions(settings, topic)
    if partitions is not None:
        existing = [p for p in existing if p in set(partitions)]
    partitions = existing
    if not partitions:
        return  # no such topic (or partition): nothing to read
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id=client_id,
        enable_auto_commit=False,
        group_id=None,
        **settings.kafka_client_options(),
    )
    await consumer.start()
    try:
        assigned = [TopicPartition(topic, p) for p in partitions]
        consumer.assign(assigned)
        if since_ms is not None:
            starts = await consumer.offsets_for_times({tp: since_ms for tp in assigned})
            for tp in assigned:
                found = starts.get(tp)
                if found is None:
                    await consumer.seek_to_end(tp)
                else:
                    consumer.seek(tp, found.offset)
        elif last_n is not None:
            ends = await consumer.end_offsets(assigned)
            starts = await consumer.beginning_offsets(assigned)
            for tp in assigned:
                consumer.seek(tp, max(starts[tp], ends[tp] - max(0, last_n)))
        elif from_beginning:
            await consumer.seek_to_beginning(*assigned)
        else:
            await consumer.seek_to_end(*assigned)
        end_offsets = await consumer.end_offsets(assigned)
        while True:
            batch = await consumer.getmany(timeout_ms=int(idle_timeout_s * 1000))
            for records in batch.values():
                for rec in records:
                    yield context_of(rec)
            if not follow:
                positions = {tp: await consumer.position(tp) for tp in assigned}
                if all(positions[tp] >= end_offsets[tp] for tp in assigned):
                    return
    finally:
        await consumer.stop()


async def read_record(settings: PlatformSettings, topic: str, partition: int, offset: int) -> bytes:
    """The value of one record, without a consumer group.

    Raises LookupError when it is gone (retention) or not there.
    """
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="spamops-record-reader",
        enable_auto_commit=False,
        group_id=None,
        **settings.kafka_client_options(),
    )
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        if not start <= offset < end:
            why = "gone (retention)" if offset < start else "not written"
            raise LookupError(
                f"{topic} {partition}:{offset} is {why}; the log holds {start}..{end - 1}"
            )
        consumer.seek(tp, offset)
        record = await consumer.getone()
        if record.offset != offset or record.value is None:
            raise LookupError(f"{topic} {partition}:{offset} not found")
        return bytes(record.value)
    finally:
        await consumer.stop()


async def consumer_lags(
    settings: PlatformSettings, groups: Mapping[str, Sequence[str]]
) -> dict[str, int | None]:
    """Committed lag of each consumer group: records of its topics it has not committed.

    ``groups`` maps a group id to the topics it reads; an empty sequence means
    whatever topics the group has committed on. Per partition the lag is the
    log end minus the committed offset, or minus the log start where the group
    has committed nothing yet (it would read from the start). A group that
    has committed nothing at all (and whose topics are not named) is None.
    One implementation for ``spamops status``, the benchmarks and the drills.
    """
    options = settings.kafka_client_options()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **options)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, **options)
    await admin.start()
    await consumer.start()
    try:
        out: dict[str, int | None] = {}
        for group, topics in groups.items():
            committed = {
                tp: meta.offset
                for tp, meta in (await admin.list_consumer_group_offsets(group)).items()
                if meta is not None and meta.offset >= 0 and (not topics or tp.topic in topics)
            }
            parts = set(committed)
            for topic in topics:
                parts |= {TopicPartition(topic, p) for p in await topic_partitions(settings, topic)}
            if not parts:
                out[group] = None
                continue
            ends = await consumer.end_offsets(list(parts))
            starts = await consumer.beginning_offsets(list(parts))
            out[group] = sum(max(0, ends[tp] - committed.get(tp, starts[tp])) for tp in parts)
        return out
    finally:
        await consumer.stop()
        await admin.close()
