"""Soak: the platform under a steady stream for ten minutes; memory, lag and loss.

Runs against the local platform that `make up` started. It publishes raw emails
(the production model's held-out test split, repeated with new keys) to ``emails.inbox`` at
a steady rate — by default the fixed rate the throughput benchmark sustained
(benchmarks/results/stream_throughput.json) — for ``--seconds`` (600), and
every ``--sample-every`` seconds records:

* the resident memory (RSS) of each component's process group;
* the consumer lag (end offset - committed offset) of the inference group on
  ``emails.inbox`` and of the monitor group on ``emails.verdicts``.

At the end it waits for the last verdicts and counts loss and duplicates by
key. Memory growth is measured from the end of the warm-up (``--warmup``, 60 s)
to the end; the aim is < 10 % per service, a bounded lag and zero loss.

    .venv/bin/python -m benchmarks.soak [--seconds 600] [--rate 300]

Writes benchmarks/results/soak.json.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from spamops_cli.stack import COMPONENT_NAMES, SERVICE_NAMES, StackPaths
from spamops_cli.stack.process import group_rss_bytes, read_pid
from spamops_runtime.replay import consumer_lags, topic_partitions
from spamops_runtime.settings import PlatformSettings

from benchmarks._common import RESULTS, write_results
from benchmarks.stream_throughput import components, held_out_mail

# consumer group -> the topic whose lag it has
LAG_GROUPS = {"spamops-inference": "emails.inbox", "spamops-monitor": "emails.verdicts"}


def sustainable_rate(default: float = 300.0) -> float:
    """The highest fixed rate the throughput benchmark sustained (its last result): every
    verdict came and they kept up with the offered rate (>= 95 %); else ``default``."""
    path = RESULTS / "stream_throughput.json"
    try:
        results = json.loads(path.read_text())["results"]
    except (OSError, KeyError, ValueError):
        return default
    sustained = [
        float(case["offered_rate"])
        for name, case in results.items()
        if name.startswith("fixed_rate")
        and isinstance(case, dict)
        and isinstance(case.get("offered_rate"), int | float)
        and case.get("lost_or_late") == 0
        and (case.get("verdicts_per_second") or 0) >= 0.95 * float(case["offered_rate"])
    ]
    return max(sustained, default=default)


def rss_mib(settings: PlatformSettings) -> dict[str, float]:
    """RSS (MiB) of each running component's process group."""
    paths = StackPaths.from_settings(settings)
    out = {}
    for name in COMPONENT_NAMES:
        pid = read_pid(paths.pid_file(name))
        if pid is not None:
            out[name] = round(group_rss_bytes(pid) / 2**20, 1)
    return out


async def lags(settings: PlatformSettings) -> dict[str, int | None]:
    """Committed lag of each watched consumer group."""
    return await consumer_lags(settings, {g: (t,) for g, t in LAG_GROUPS.items()})


@dataclass
class Verdicts:
    """Verdicts seen for this run's keys: first record timestamp and count per key."""

    first_ms: dict[str, int] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)


async def follow_verdicts(
    settings: PlatformSettings, prefix: str, seen: Verdicts, stop: asyncio.Event
) -> None:
    """Read emails.verdicts from its current end until ``stop`` is set."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    try:
        parts = [
            TopicPartition("emails.verdicts", p)
            for p in await topic_partitions(settings, "emails.verdicts")
        ]
        consumer.assign(parts)
        await consumer.seek_to_end(*parts)
        while not stop.is_set():
            for records in (await consumer.getmany(timeout_ms=500, max_records=5000)).values():
                for r in records:
                    key = r.key.decode() if r.key else ""
                    if key.startswith(prefix):
                        seen.first_ms.setdefault(key, r.timestamp)
                        seen.count[key] = seen.count.get(key, 0) + 1
    finally:
        await consumer.stop()


async def soak(args: argparse.Namespace) -> dict[str, Any]:
    settings = PlatformSettings()
    mails, _ = held_out_mail(settings)  # the production model's test split
    # The snapshot is stored group by group; a mail stream mixes them.
    random.Random(42).shuffle(mails)
    prefix = f"soak-{uuid.uuid4().hex[:8]}-"
    seen = Verdicts()
    stop = asyncio.Event()
    follower = asyncio.create_task(follow_verdicts(settings, prefix, seen, stop))
    await asyncio.sleep(2)  # the follower is at the end before the first email goes out

    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5,
        max_request_size=16 << 20,
    )  # fmt: skip
    await producer.start()
    samples: list[dict[str, Any]] = []
    sent_ms: dict[str, int] = {}
    total = int(args.rate * args.seconds)
    began = time.monotonic()
    next_sample = began
    try:
        pending: list[asyncio.Future[Any]] = []
        for i in range(total):
            now = time.monotonic()
            if now >= next_sample:
                samples.append(
                    {
                        "t_s": round(now - began, 1),
                        "sent": i,
                        "verdicts": len(seen.first_ms),
                        "rss_mib": rss_mib(settings),
                        "lag": await lags(settings),
                    }
                )
                print(json.dumps(samples[-1]), flush=True)
                next_sample += args.sample_every
            delay = began + i / args.rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            key = f"{prefix}{i}"
            sent_ms[key] = int(time.time() * 1000)
            pending.append(
                await producer.send("emails.inbox", mails[i % len(mails)], key=key.encode())
            )
            if len(pending) >= 1000:
                await asyncio.gather(*pending)
                pending.clear()
        await asyncio.gather(*pending)
        publish_s = time.monotonic() - began
        deadline = time.monotonic() + args.drain_timeout
        while len(seen.first_ms) < total and time.monotonic() < deadline:  # noqa: ASYNC110 - polls another task's dict
            await asyncio.sleep(1)
        samples.append(
            {
                "t_s": round(time.monotonic() - began, 1),
                "sent": total,
                "verdicts": len(seen.first_ms),
                "rss_mib": rss_mib(settings),
                "lag": await lags(settings),
            }
        )
    finally:
        stop.set()
        await follower
        await producer.stop()

    return summarise(args, samples, sent_ms, seen, publish_s)


def summarise(
    args: argparse.Namespace,
    samples: list[dict[str, Any]],
    sent_ms: dict[str, int],
    seen: Verdicts,
    publish_s: float,
) -> dict[str, Any]:
    warm = next((s for s in samples if s["t_s"] >= args.warmup), samples[0])
    last = samples[-1]
    memory = {}
    for name, start in warm["rss_mib"].items():
        end = last["rss_mib"].get(name)
        if end is None:
            continue
        growth = (end - start) / start * 100 if start else 0.0
        peak = max(s["rss_mib"].get(name, 0.0) for s in samples if s["t_s"] >= args.warmup)
        memory[name] = {
            "after_warmup_mib": start,
            "end_mib": end,
            "peak_mib": peak,
            "growth_pct": round(growth, 1),
            "flat": growth < 10 if name in SERVICE_NAMES else None,
        }
    latencies = np.array(
        [seen.first_ms[k] - sent_ms[k] for k in seen.first_ms if k in sent_ms], dtype=float
    )
    max_lag = {g: max(s["lag"][g] for s in samples) for g in LAG_GROUPS}
    return {
        "rate_per_s": args.rate,
        "seconds": args.seconds,
        "publish_seconds": round(publish_s, 1),
        "warmup_s": args.warmup,
        "sent": len(sent_ms),
        "verdicts": len(seen.first_ms),
        "lost": len(sent_ms) - len(seen.first_ms),
        "duplicates": sum(c - 1 for c in seen.count.values()),
        "latency_p50_ms": round(float(np.percentile(latencies, 50)), 1) if latencies.size else None,
        "latency_p99_ms": round(float(np.percentile(latencies, 99)), 1) if latencies.size else None,
        "latency_max_ms": round(float(latencies.max()), 1) if latencies.size else None,
        "max_lag": max_lag,
        "memory": memory,
        "services_flat": all(m["flat"] for m in memory.values() if m["flat"] is not None),
        "samples": samples,
        "setup": "the whole platform (make up) on this 2-core machine; one inference process",
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=600.0)
    parser.add_argument("--rate", type=float, default=None, help="emails/s (default: measured)")
    parser.add_argument("--warmup", type=float, default=60.0)
    parser.add_argument("--sample-every", type=float, default=10.0)
    parser.add_argument("--drain-timeout", type=float, default=300.0)
    parser.add_argument("--name", default="soak", help="results file name")
    parser.add_argument(
        "--allow-missing", action="store_true", help="Run although a component is down (flagged)."
    )
    args = parser.parse_args()
    if args.rate is None:
        args.rate = sustainable_rate()
    _, ran = components(PlatformSettings(), args.allow_missing)  # refuses unless all are up
    results = asyncio.run(soak(args))
    results["setup"] = ran
    write_results(args.name, results)


if __name__ == "__main__":
    main()
