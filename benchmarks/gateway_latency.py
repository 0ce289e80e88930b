"""Latency of POST /v1/classify through the gateway, against the same mail through Kafka alone.

Runs against the platform of this state directory (``SPAMOPS_HOME``, default
``.spamops``) with the gateway up (``make up``), using the local stack's API
key (``<state>/secrets/gateway-api.key``, or ``SPAMOPS_API_KEY``). The mail is
held out, as in ``stream_throughput`` (the production model's test split).

Cases, each open-loop (requests start on schedule whatever the answers do, so a
slow gateway cannot slow the offered load down):

* POST /v1/classify at 50/s and 200/s for ``--seconds``: p50/p90/p99/max of
  the HTTP round trip, and what did not answer 200 (by status);
* the same rates straight through Kafka (publish on emails.inbox, the verdict
  record's timestamp on emails.verdicts, as ``stream_throughput`` measures):
  what the gateway adds;
* the maximum sustained rate: offered rates step up (``--steps``) until fewer
  than 99 % of the requests answer 200 or the achieved rate falls under 95 %
  of the offered one; the last rate that held is the result.

The client (aiohttp, asyncio) runs on the same machine and its CPU time is in
the result: on 2 cores it competes with the platform.

    .venv/bin/python -m benchmarks.gateway_latency            # the full run
    .venv/bin/python -m benchmarks.gateway_latency --quick    # a smoke run

Writes benchmarks/results/gateway_latency.json (``--quick``:
gateway_latency_quick.json) with the machine, the date and the commit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from typing import Any

import aiohttp
import httpx
import numpy as np
from spamops_runtime.settings import PlatformSettings

from benchmarks._common import write_results
from benchmarks.stream_throughput import (
    VERDICTS,
    collect,
    end_offsets,
    held_out_mail,
    latency_stats,
    publish,
    repeat,
)

# The client's kept-alive connections: beyond them a request waits in the client, and that
# wait counts in its latency (open-loop).
CONNECTIONS = 64


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _percentiles(ms: Sequence[float]) -> dict[str, float]:
    if not ms:
        return {}
    a = np.asarray(ms, dtype=float)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 1),
        "p90_ms": round(float(np.percentile(a, 90)), 1),
        "p99_ms": round(float(np.percentile(a, 99)), 1),
        "max_ms": round(float(a.max()), 1),
    }


async def http_case(
    settings: PlatformSettings, key: str, mails: Sequence[bytes], rate: float, seconds: float
) -> dict[str, Any]:
    """POST /v1/classify open-loop at ``rate``/s for ``seconds``, with a plain HTTP client.

    aiohttp, with ``CONNECTIONS`` kept-alive connections, as a load tool would: the
    SDK's httpx client costs ~1.3 ms of CPU per request, a quarter of a core at
    200/s on the machine the platform runs on, which tipped these runs into overload.
    """
    count = max(1, int(rate * seconds))
    batch = repeat(mails, count)
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    url = settings.gateway_http.rstrip("/") + "/v1/classify"
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "message/rfc822"}
    cpu0 = _cpu_s()
    connector = aiohttp.TCPConnector(limit=CONNECTIONS)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(
        connector=connector, headers=headers, timeout=timeout
    ) as session:

        async def one(raw: bytes) -> None:
            began = time.perf_counter()
            try:
                async with session.post(url, data=raw) as response:
                    await response.read()
                    status = response.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                statuses[type(exc).__name__] += 1
                return
            statuses[str(status)] += 1
            if status == 200:
                latencies.append((time.perf_counter() - began) * 1000)

        began = time.monotonic()
        tasks = []
        for i, raw in enumerate(batch):
            delay = began + i / rate - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(raw)))
        offered_s = time.monotonic() - began
        await asyncio.gather(*tasks)
        wall = time.monotonic() - began
    ok = statuses["200"]
    return {
        "offered_rate": rate,
        "requests": count,
        "ok": ok,
        "not_ok": {k: v for k, v in statuses.items() if k != "200"},
        "achieved_rate": round(ok / wall, 1) if wall else None,
        "offer_seconds": round(offered_s, 2),
        "wall_seconds": round(wall, 2),
        "client_cpu_s": round(_cpu_s() - cpu0, 2),
        **_percentiles(latencies),
    }


async def kafka_case(
    settings: PlatformSettings, mails: Sequence[bytes], rate: float, seconds: float
) -> dict[str, Any]:
    """The same load straight on emails.inbox: send -> verdict record timestamp."""
    count = max(1, int(rate * seconds))
    prefix = f"bench-gw-{uuid.uuid4().hex[:8]}-".encode()
    batch = repeat(mails, count)
    keys = [prefix + str(i).encode() for i in range(count)]
    start = await end_offsets(settings, VERDICTS)
    ready = asyncio.Event()
    collector = asyncio.create_task(collect(settings, start, prefix, count, seconds + 60, ready))
    await ready.wait()
    sent = await publish(settings, batch, keys, rate)
    found = await collector
    return {
        "offered_rate": rate,
        "messages": count,
        "verdicts": len(found),
        **(latency_stats(found, sent) if found else {"error": "no verdicts"}),
    }


async def max_sustained(
    settings: PlatformSettings,
    key: str,
    mails: Sequence[bytes],
    steps: Sequence[float],
    seconds: float,
) -> dict[str, Any]:
    """Step the offered rate up until it no longer holds; the last rate that held."""
    held: float | None = None
    tried = []
    for rate in steps:
        result = await http_case(settings, key, mails, rate, seconds)
        tried.append(result)
        holds = (
            result["ok"] >= 0.99 * result["requests"]
            and (result["achieved_rate"] or 0) >= 0.95 * rate
        )
        print(f"  {rate:>6.0f}/s: {'holds' if holds else 'does not hold'} {result}")
        if not holds:
            break
        held = rate
        await asyncio.sleep(5)  # let the consumers drain between steps
    return {"max_sustained_rate": held, "steps": tried}


def api_key(settings: PlatformSettings) -> str:
    """SPAMOPS_API_KEY, else the local stack's key."""
    key = os.environ.get("SPAMOPS_API_KEY", "").strip()
    return key or settings.gateway_api_key_path.read_text("utf-8").strip()


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    settings = PlatformSettings()
    key = api_key(settings)
    mails, described = held_out_mail(settings)
    async with httpx.AsyncClient(timeout=10) as http:
        health = await http.get(f"{settings.gateway_http}/readyz")
    if health.status_code != 200:
        raise SystemExit(f"the gateway is not ready: {health.text}")
    results: dict[str, Any] = {
        "mail": described,
        "seconds_per_case": args.seconds,
        "gateway": settings.gateway_http,
        "http": {},
        "kafka_only": {},
    }
    await http_case(settings, key, mails, 10, 2)  # warm-up: connections, first batches
    for rate in args.rates:
        print(f"POST /v1/classify at {rate:g}/s ...")
        results["http"][f"{rate:g}/s"] = await http_case(settings, key, mails, rate, args.seconds)
        print(f"  {results['http'][f'{rate:g}/s']}")
        await asyncio.sleep(5)
        print(f"Kafka alone at {rate:g}/s ...")
        results["kafka_only"][f"{rate:g}/s"] = await kafka_case(settings, mails, rate, args.seconds)
        print(f"  {results['kafka_only'][f'{rate:g}/s']}")
        await asyncio.sleep(5)
    if args.steps:
        print("maximum sustained rate ...")
        results["max_sustained"] = await max_sustained(
            settings, key, mails, args.steps, args.step_seconds
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rates", type=float, nargs="+", default=[50, 200])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument(
        "--steps", type=float, nargs="*", default=[100, 200, 300, 400, 500, 600, 800, 1000]
    )
    parser.add_argument("--step-seconds", type=float, default=20)
    parser.add_argument("--quick", action="store_true", help="a smoke run: small and short")
    args = parser.parse_args()
    name = "gateway_latency"
    if args.quick:
        args.rates, args.seconds, args.steps, args.step_seconds = [20], 5, [20, 40], 5
        name += "_quick"
    results = asyncio.run(main_async(args))
    results["note"] = (
        "open-loop; the client shares the machine (client_cpu_s); every service up "
        "as `make up` leaves it" + (" (--quick smoke run: not a measurement)" if args.quick else "")
    )
    write_results(name, results)


if __name__ == "__main__":
    main()
