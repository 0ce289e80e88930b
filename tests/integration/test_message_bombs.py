"""Message bombs on the real stack: Kafka refuses what is too large for the inbox, the
inference process dead-letters the other bombs with the parser's reason (before any
model is looked up), parses the rest, and keeps going.

The inference service runs as a process against the session stack, with a
consumer group of its own. The session stack may or may not have a model: a
normal message gets either a verdict or a ``no-model`` dead letter; a bomb gets
its parser reason either way.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from spamops_inference.handlers import H_DEAD_LETTER_TRUNCATED
from spamops_runtime.kafka import H_ERROR_REASON, H_ERROR_SERVICE, H_ORIGINAL_TOPIC
from spamops_runtime.replay import read_topic
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import EmailClassified, EventDecodeError, decode_event

from tests.integration.conftest import free_ports, settings_env
from tests.unit.test_inference import email as normal_email
from tests.unit.test_message_bombs import (
    MB,
    attachment,
    deep_mime,
    gzip_bomb,
    long_header_line,
    many_headers,
    text_message,
)

pytestmark = pytest.mark.integration

INBOX_LIMIT = 11 * MB  # emails.inbox max.message.bytes in the topic catalogue


async def _produce(settings: PlatformSettings, items: list[tuple[str, bytes]]) -> dict[str, str]:
    """Produce each record (a producer allowing 64 MB); the error of each one Kafka refused."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        max_request_size=64 * MB,
        request_timeout_ms=60_000,
        **settings.kafka_client_options(),
    )
    await producer.start()
    refused: dict[str, str] = {}
    try:
        for key, value in items:
            try:
                await producer.send_and_wait("emails.inbox", value, key=key.encode())
            except KafkaError as exc:
                refused[key] = type(exc).__name__
    finally:
        await producer.stop()
    return refused


def _outcomes(settings: PlatformSettings, keys: set[str]) -> dict[str, tuple[str, dict[str, str]]]:
    """key -> ("dlq", headers + value length) or ("verdict", {}) for ``keys``, as far as seen."""

    async def collect() -> dict[str, tuple[str, dict[str, str]]]:
        seen: dict[str, tuple[str, dict[str, str]]] = {}
        async for record in read_topic(settings, "emails.inbox.dlq", idle_timeout_s=0.5):
            if record.key in keys:
                seen[record.key] = ("dlq", {**record.headers, "length": str(len(record.value))})
        async for record in read_topic(settings, "emails.verdicts", idle_timeout_s=0.5):
            try:
                event = decode_event(record.value, EmailClassified)
            except EventDecodeError:
                continue
            if event.message_key in keys:
                seen[event.message_key] = ("verdict", {})
        return seen

    return asyncio.run(collect())


@pytest.fixture
def inference(stack: PlatformSettings, tmp_path: Path) -> Iterator[subprocess.Popen[bytes]]:
    """The inference service as a process of its own on the session stack."""
    env = {
        **os.environ,
        **settings_env(stack),
        "SPAMOPS_INFERENCE_GROUP_ID": f"bombs-{uuid.uuid4().hex[:8]}",
        "SPAMOPS_INFERENCE_METRICS_PORT": str(free_ports(1)[0]),
        "SPAMOPS_INFERENCE_USE_REPUTATION": "false",
    }
    log = (tmp_path / "inference.log").open("wb")
    process = subprocess.Popen(
        [sys.executable, "-m", "spamops_inference"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield process
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
        print((tmp_path / "inference.log").read_text()[-3000:])


def test_bombs_are_refused_by_kafka_or_dead_lettered_with_the_parser_reason(
    stack: PlatformSettings, inference: subprocess.Popen[bytes]
) -> None:
    run = uuid.uuid4().hex[:8]
    over_the_limit = text_message(10 * MB + 300_000)  # > the 10 MiB parser limit, < the topic's
    records = {
        f"{run}-normal-1": normal_email(1),
        f"{run}-empty": b"",
        f"{run}-header-line-1mb": long_header_line(MB),  # over Kafka's default 1 MB, too
        f"{run}-headers-5k": many_headers(5_000),
        f"{run}-binary": bytes(range(256)) * 4096,
        f"{run}-too-large": over_the_limit,
        f"{run}-deep-mime": deep_mime(10_000),  # parsed: too-deep is a defect
        f"{run}-gzip-bomb": attachment(gzip_bomb(), b"application/gzip", b"a.gz"),  # parsed
        f"{run}-50mb": text_message(50 * MB),  # over the topic's max.message.bytes
        f"{run}-normal-2": normal_email(2),
    }
    began = time.monotonic()
    refused_by_kafka = asyncio.run(_produce(stack, list(records.items())))
    assert refused_by_kafka == {f"{run}-50mb": "MessageSizeTooLargeError"}
    expected = {
        f"{run}-empty": "empty",
        f"{run}-header-line-1mb": "headers-too-large",
        f"{run}-headers-5k": "too-many-headers",
        f"{run}-binary": "not-email",
        f"{run}-too-large": "too-large",
    }
    parsed = {f"{run}-normal-1", f"{run}-normal-2", f"{run}-deep-mime", f"{run}-gzip-bomb"}
    keys = set(expected) | parsed
    outcomes: dict[str, tuple[str, dict[str, str]]] = {}
    deadline = time.monotonic() + 90
    while set(outcomes) != keys and time.monotonic() < deadline:
        assert inference.poll() is None, "the inference process died"
        time.sleep(1)
        outcomes = _outcomes(stack, keys)
    print(f"\nbombs handled in {time.monotonic() - began:.1f}s")
    assert set(outcomes) == keys, f"missing: {keys - set(outcomes)}"
    for key, reason in expected.items():
        kind, headers = outcomes[key]
        assert kind == "dlq" and headers[H_ERROR_REASON] == reason, (key, headers)
        assert headers[H_ERROR_SERVICE] == "inference"
        assert headers[H_ORIGINAL_TOPIC] == "emails.inbox"
    # The 10.3 MB dead letter went to the DLQ whole (it fits the DLQ topic).
    too_large = outcomes[f"{run}-too-large"][1]
    assert (
        int(too_large["length"]) == len(over_the_limit) and H_DEAD_LETTER_TRUNCATED not in too_large
    )
    # The bombs that parse, and the normal mails, are classified or wait for a model.
    for key in parsed:
        kind, headers = outcomes[key]
        assert kind == "verdict" or headers[H_ERROR_REASON] == "no-model", (key, headers)
    assert inference.poll() is None  # and the stream is still running
    assert len(over_the_limit) < INBOX_LIMIT
