"""`spamops demo`: stream a sample of the corpus through the platform and summarise it.

The sample is the newest snapshot's TEST split (messages no model trained on),
published to emails.inbox with fresh keys; the verdicts are read back from
emails.verdicts and compared with the corpus labels.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from spamops_runtime.replay import read_topic
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import EmailClassified, EventDecodeError, decode_event

from spamops_cli.kafka_io import RawRecord, send_raw


@dataclass
class DemoSummary:
    """What the demo measured."""

    sent: int
    verdicts: int
    spam: int
    ham: int
    accuracy: float
    false_positives: int
    seconds: float
    latency_p50_ms: float
    latency_p99_ms: float
    versions: dict[str, int]


def sample(settings: PlatformSettings, size: int) -> list[tuple[bytes, str]]:
    """(raw, label) of up to ``size`` test-split messages of the newest snapshot."""
    files = sorted(
        glob.glob(str(settings.state_dir / "data" / "datasets" / "*" / "snapshot.parquet")),
        key=lambda p: Path(p).stat().st_mtime,
    )
    if not files:
        raise FileNotFoundError("no snapshot yet: run `spamops ingest` first")
    table = pq.read_table(files[-1], columns=["raw", "label", "split"]).to_pandas()
    test = table[table["split"] == "test"]
    test = test.sample(n=min(size, len(test)), random_state=0)  # every group, not the first
    return [(bytes(r), str(label)) for r, label in zip(test["raw"], test["label"], strict=True)]


async def _collect(
    settings: PlatformSettings, keys: set[str], timeout_s: float
) -> dict[str, EmailClassified]:
    found: dict[str, EmailClassified] = {}

    async def follow() -> None:
        async for record in read_topic(settings, "emails.verdicts", follow=True):
            if record.key in keys:
                try:
                    found[record.key] = decode_event(record.value, EmailClassified)
                except EventDecodeError:
                    continue
                if len(found) == len(keys):
                    return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(follow(), timeout_s)
    return found


def run_demo(settings: PlatformSettings, size: int = 500, timeout_s: float = 120) -> DemoSummary:
    """Publish the sample, wait for its verdicts, compare with the labels."""
    messages = sample(settings, size)
    prefix = f"demo-{uuid.uuid4().hex[:6]}-"
    labels = {f"{prefix}{i}": label for i, (_, label) in enumerate(messages)}
    records = [
        RawRecord("emails.inbox", raw, key=f"{prefix}{i}") for i, (raw, _) in enumerate(messages)
    ]

    async def go() -> tuple[dict[str, EmailClassified], float]:
        began = time.monotonic()
        collector = asyncio.create_task(_collect(settings, set(labels), timeout_s))
        await send_raw(settings, records)
        found = await collector
        return found, time.monotonic() - began

    found, seconds = asyncio.run(go())
    verdicts = list(found.values())
    correct = sum(v.verdict == labels[k] for k, v in found.items())
    false_positives = sum(v.verdict == "spam" and labels[k] == "ham" for k, v in found.items())
    latencies = np.array([v.latency_ms for v in verdicts]) if verdicts else np.zeros(1)
    versions: dict[str, int] = {}
    for v in verdicts:
        name = f"{v.environment} v{v.model_version}"
        versions[name] = versions.get(name, 0) + 1
    return DemoSummary(
        sent=len(records),
        verdicts=len(verdicts),
        spam=sum(v.verdict == "spam" for v in verdicts),
        ham=sum(v.verdict == "ham" for v in verdicts),
        accuracy=correct / len(verdicts) if verdicts else 0.0,
        false_positives=false_positives,
        seconds=seconds,
        latency_p50_ms=float(np.percentile(latencies, 50)),
        latency_p99_ms=float(np.percentile(latencies, 99)),
        versions=versions,
    )
