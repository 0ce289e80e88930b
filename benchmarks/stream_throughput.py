"""Streaming throughput and latency: raw emails on emails.inbox -> verdicts on emails.verdicts.

Runs against the local platform that `make up` started (Kafka, Triton, the
inference service, a production model). It publishes N raw emails (the
corpus, repeated with new keys) and reads their verdicts:

* full speed: everything published at once; sustained verdicts/s between the
  first and the last verdict, and end-to-end latency (inbox record timestamp
  -> verdict record timestamp) p50/p99;
* fixed rate: ``--rate`` emails/s for ``--seconds``; latency p50/p99;
* SpamAssassin's spamd on the same messages (a sample through ``spamc``,
  ``--spamd-sample``), when spamd is installed (Debian package spamassassin).

    .venv/bin/python -m benchmarks.stream_throughput [--messages 20000] [--rate 300]

Writes benchmarks/results/stream_throughput.json.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from spamops_runtime.replay import topic_partitions
from spamops_runtime.settings import PlatformSettings

from benchmarks._common import write_results


def corpus(settings: PlatformSettings) -> list[bytes]:
    """Raw messages of the newest snapshot under the state directory."""
    files = sorted(
        glob.glob(str(settings.state_dir / "data" / "datasets" / "*" / "snapshot.parquet")),
        key=lambda p: Path(p).stat().st_mtime,
    )
    if not files:
        raise SystemExit("no snapshot: run `make up` first")
    return [bytes(v) for v in pq.read_table(files[-1], columns=["raw"]).column("raw").to_pylist()]


async def end_offsets(settings: PlatformSettings, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in await topic_partitions(settings, topic)]
        return dict(await consumer.end_offsets(parts))
    finally:
        await consumer.stop()


async def collect(
    settings: PlatformSettings,
    start: dict[TopicPartition, int],
    prefix: str,
    count: int,
    timeout_s: float,
) -> list[tuple[str, int, float]]:
    """(key, verdict record timestamp, latency_ms in the event) of ``count`` verdicts."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    consumer.assign(list(start))
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    found: dict[str, tuple[str, int, float]] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < count and time.monotonic() < deadline:
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for r in records:
                    key = r.key.decode() if r.key else ""
                    if key.startswith(prefix) and key not in found:
                        event = json.loads(r.value)
                        found[key] = (key, r.timestamp, float(event["latency_ms"]))
    finally:
        await consumer.stop()
    return list(found.values())


async def publish(
    settings: PlatformSettings, mails: list[bytes], prefix: str, rate: float | None
) -> dict[str, int]:
    """Send ``mails`` (at ``rate``/s or as fast as possible); returns key -> send time (ms)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5,
        max_batch_size=1 << 20, max_request_size=16 << 20,
    )  # fmt: skip
    await producer.start()
    sent: dict[str, int] = {}
    began = time.monotonic()
    try:
        pending = []
        for i, raw in enumerate(mails):
            if rate:
                delay = began + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            key = f"{prefix}{i}"
            sent[key] = int(time.time() * 1000)
            pending.append(await producer.send("emails.inbox", raw, key=key.encode()))
        await asyncio.gather(*pending)
    finally:
        await producer.stop()
    return sent


def latency_stats(rows: list[tuple[str, int, float]], sent: dict[str, int]) -> dict[str, float]:
    e2e = np.array([ts - sent[key] for key, ts, _ in rows], dtype=float)
    inside = np.array([lat for _, _, lat in rows], dtype=float)
    return {
        "p50_ms": round(float(np.percentile(e2e, 50)), 1),
        "p99_ms": round(float(np.percentile(e2e, 99)), 1),
        "max_ms": round(float(e2e.max()), 1),
        "service_p50_ms": round(float(np.percentile(inside, 50)), 1),
        "service_p99_ms": round(float(np.percentile(inside, 99)), 1),
    }


async def run_case(
    settings: PlatformSettings, mails: list[bytes], rate: float | None, timeout_s: float
) -> dict[str, object]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}-"
    start = await end_offsets(settings, "emails.verdicts")
    collector = asyncio.create_task(collect(settings, start, prefix, len(mails), timeout_s))
    began = time.time()
    sent = await publish(settings, mails, prefix, rate)
    published_s = time.time() - began
    rows = await collector
    if not rows:
        return {"messages": len(mails), "verdicts": 0, "error": "no verdicts (is inference up?)"}
    stamps = sorted(ts for _, ts, _ in rows)
    first_send = min(sent.values())
    span = (stamps[-1] - first_send) / 1000
    return {
        "messages": len(mails),
        "verdicts": len(rows),
        "lost": len(mails) - len(rows),
        "offered_rate": rate or "max",
        "publish_seconds": round(published_s, 2),
        "verdicts_per_second": round(len(rows) / span, 1) if span > 0 else None,
        **latency_stats(rows, sent),
    }


def spamd(mails: list[bytes], sample: int) -> dict[str, object]:
    """SpamAssassin (spamd, local rules only) on a sample, through spamc."""
    spamd_bin, spamc_bin = shutil.which("spamd"), shutil.which("spamc")
    if not spamd_bin or not spamc_bin:
        return {"available": False, "note": "spamassassin/spamc not installed"}
    port = "7831"
    proc = subprocess.Popen(
        [spamd_bin, "--local", "-p", port, "-i", "127.0.0.1", "--max-children", "2"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ping = subprocess.run([spamc_bin, "-p", port, "-K"], capture_output=True, check=False)
            if ping.returncode == 0:
                break
            time.sleep(0.5)
        subset = mails[:sample]
        began = time.perf_counter()
        latencies = []
        for raw in subset:
            t = time.perf_counter()
            subprocess.run(
                [spamc_bin, "-p", port, "-c"], input=raw, capture_output=True, check=False
            )
            latencies.append((time.perf_counter() - t) * 1000)
        seconds = time.perf_counter() - began
        return {
            "available": True,
            "messages": len(subset),
            "emails_per_second": round(len(subset) / seconds, 1),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "mode": "spamd --local, 2 children, sequential spamc calls",
        }
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--rate", type=float, default=300.0)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--spamd-sample", type=int, default=300)
    args = parser.parse_args()
    settings = PlatformSettings()
    raw = corpus(settings)
    full = [raw[i % len(raw)] for i in range(args.messages)]
    paced = [raw[i % len(raw)] for i in range(int(args.rate * args.seconds))]
    results = {
        "full_speed": asyncio.run(run_case(settings, full, None, 900)),
        "fixed_rate": asyncio.run(run_case(settings, paced, args.rate, 300)),
        "spamd": spamd(raw, args.spamd_sample),
        "setup": "one inference process; the whole platform on this 2-core machine",
    }
    write_results("stream_throughput", results)


if __name__ == "__main__":
    main()
