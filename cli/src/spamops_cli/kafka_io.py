"""Kafka access for the command line: publish through the shared wiring.

Reading topics plainly is ``spamops_runtime.replay.read_topic``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from faststream.kafka import KafkaBroker
from spamops_runtime.kafka import make_broker, publish_event
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import Event

CLIENT_ID = "spamops-cli"


@dataclass(frozen=True)
class RawRecord:
    """A record to send as it is (e.g. raw email bytes)."""

    topic: str
    value: bytes
    key: str | None = None
    headers: Mapping[str, str] | None = None


async def _connected(settings: PlatformSettings) -> KafkaBroker:
    broker = make_broker(settings, client_id=CLIENT_ID)
    try:
        await broker.connect()
    except BaseException:
        await broker.stop()  # else the half-started producer is reported as unclosed
        raise
    return broker


async def send_events(
    settings: PlatformSettings, events: Iterable[Event], *, in_flight: int = 1
) -> int:
    """Publish typed events to their catalogue topics; returns how many were acknowledged.

    ``in_flight`` > 1 pipelines: that many sends are started, then awaited
    together (the producer keeps their order; a failure fails the call).
    """
    broker = await _connected(settings)
    sent = 0
    try:
        pending = []
        for event in events:
            pending.append(publish_event(broker, event, service=CLIENT_ID))
            if len(pending) >= in_flight:
                await asyncio.gather(*pending)
                sent += len(pending)
                pending = []
        if pending:
            await asyncio.gather(*pending)
            sent += len(pending)
    finally:
        await broker.stop()
    return sent


async def send_raw(
    settings: PlatformSettings, records: Iterable[RawRecord], *, on_sent: object = None
) -> int:
    """Publish raw records, pipelined (all sends in flight, then awaited)."""
    broker = await _connected(settings)
    sent = 0
    try:
        pending = []
        for record in records:
            pending.append(
                broker.publish(
                    record.value,
                    topic=record.topic,
                    key=record.key.encode("utf-8") if record.key is not None else None,
                    headers=dict(record.headers or {}),
                )
            )
            if len(pending) >= 500:
                await asyncio.gather(*pending)
                sent += len(pending)
                if callable(on_sent):
                    on_sent(len(pending))
                pending = []
        if pending:
            await asyncio.gather(*pending)
            sent += len(pending)
            if callable(on_sent):
                on_sent(len(pending))
    finally:
        await broker.stop()
    return sent
