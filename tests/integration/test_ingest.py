"""``spamops ingest`` run as a user runs it, against the real stack and the real corpus."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import DatasetReady
from spamops_schemas.codec import decode_event
from spamops_schemas.topics import DATASETS_READY

pytestmark = pytest.mark.integration

SPAMOPS = Path(sys.executable).with_name("spamops")


def spamops(settings: PlatformSettings, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings.to_env(), "COLUMNS": "200"}
    return subprocess.run(
        [str(SPAMOPS), *args], env=env, capture_output=True, text=True, timeout=600, check=False
    )


async def dataset_ready(settings: PlatformSettings, event_id: str) -> DatasetReady:
    """The DatasetReady with ``event_id`` from datasets.ready (read from the beginning)."""
    consumer = AIOKafkaConsumer(
        DATASETS_READY, bootstrap_servers=settings.kafka_bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            for batch in (await consumer.getmany(timeout_ms=500)).values():
                for record in batch:
                    event = decode_event(record.value, DatasetReady)
                    if str(event.event_id) == event_id:
                        assert record.key is not None
                        return event
    finally:
        await consumer.stop()
    raise AssertionError(f"DatasetReady {event_id} not found on {DATASETS_READY}")


def published_id(stdout: str) -> str:
    match = re.search(r"published DatasetReady (\S+)", stdout)
    assert match, stdout
    return match.group(1)


def test_ingest_publishes_one_dataset_ready_with_the_corpus_counts(
    stack: PlatformSettings,
) -> None:
    result = spamops(stack, "ingest")
    assert result.returncode == 0, result.stderr + result.stdout
    event = asyncio.run(dataset_ready(stack, published_id(result.stdout)))
    assert event.rows == 6046
    assert event.counts_by_group == {
        "easy-ham-1": 2500,
        "easy-ham-2": 1400,
        "hard-ham-1": 250,
        "spam-1": 500,
        "spam-2": 1396,
    }
    assert event.counts_by_label == {"ham": 4150, "spam": 1896}
    assert event.split.train + event.split.validation + event.split.test == 6046
    assert event.uri.startswith("file://")
    assert Path(event.uri.removeprefix("file://")).is_file()
    assert str(stack.state_dir) in event.uri
    # Printed per group and label for the user.
    assert "easy-ham-1" in result.stdout and "label=spam" in result.stdout


def test_ingest_of_selected_groups(stack: PlatformSettings) -> None:
    result = spamops(stack, "ingest", "--groups", "easy-ham-1,hard-ham-1,spam-1")
    assert result.returncode == 0, result.stderr + result.stdout
    event = asyncio.run(dataset_ready(stack, published_id(result.stdout)))
    assert event.counts_by_group == {"easy-ham-1": 2500, "hard-ham-1": 250, "spam-1": 500}
    assert event.rows == 3250


def test_ingest_of_a_missing_folder_fails_clearly(stack: PlatformSettings, tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("key,label\nsome-message,spam\n")
    result = spamops(stack, "ingest", "--path", str(tmp_path / "nope"), "--labels", str(labels))
    assert result.returncode != 0
    assert "nope" in result.stderr + result.stdout
