"""Helpers of the end-to-end tests: run the CLI, send records, wait for events on a topic."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from spamops_runtime.replay import read_topic
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import EventDecodeError, decode_event

SPAMOPS = Path(sys.executable).with_name("spamops")


def spamops(
    settings: PlatformSettings, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the ``spamops`` CLI against ``settings``' stack."""
    full_env = {**os.environ, **settings.to_env(), "COLUMNS": "200", **(env or {})}
    return subprocess.run(
        [str(SPAMOPS), *args],
        env=full_env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )


async def events_on(
    settings: PlatformSettings, topic: str, match: Callable[[Any], bool], wait_s: float = 300
) -> list[tuple[Any, dict[str, str]]]:
    """Wait until a record of ``topic`` matches; returns every match (event or raw, headers)."""
    deadline = time.monotonic() + wait_s
    while True:
        found = []
        async for record in read_topic(settings, topic, idle_timeout_s=0.5):
            try:
                item: Any = decode_event(record.value)
            except EventDecodeError:
                item = record.value
            if match(item):
                found.append((item, dict(record.headers)))
        if found:
            return found
        assert time.monotonic() < deadline, f"nothing matching on {topic}"
        await asyncio.sleep(2)


async def send(
    settings: PlatformSettings,
    topic: str,
    items: list[tuple[str, bytes]],
    headers: dict[str, str] | None = None,
) -> None:
    """Produce ``(key, value)`` records (with ``headers``), each acknowledged by Kafka."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", **settings.kafka_client_options()
    )
    await producer.start()
    try:
        for key, value in items:
            await producer.send_and_wait(
                topic,
                value,
                key=key.encode(),
                headers=[(k, v.encode()) for k, v in (headers or {}).items()],
            )
    finally:
        await producer.stop()


def sample_email(i: int, spam: bool, id_prefix: str = "it") -> bytes:
    """A small, plausible email (spam or ham), unique by its Message-ID."""
    subject = "FREE money, click now!!!" if spam else f"Re: notes from the meeting {i}"
    body = (
        "CLICK HERE http://198.51.100.7/win to claim your prize!!! Unsubscribe"
        if spam
        else "Hi, attached are the notes. See you on Monday. Regards"
    )
    return (
        f"From: {'promo' if spam else 'colleague'}{i}@{'deals' if spam else 'example'}.com\n"
        f"To: you@example.org\nSubject: {subject}\n"
        f"Message-ID: <{id_prefix}-{uuid.uuid4().hex}@x>\n"
        f"Date: Tue, 1 Oct 2002 10:00:00 +0000\n\n{body} {i}\n"
    ).encode()


def metric_sum(port: int, sample: str, **labels: str) -> float:
    """The sum of the ``sample`` series whose labels include ``labels``, on the /metrics
    page a process serves at ``port`` (0 when none). Raises OSError while nothing answers."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == sample and labels.items() <= s.labels.items()
    )
