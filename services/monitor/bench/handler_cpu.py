"""CPU of the monitor per 1,000 verdicts, feeding its handlers directly (no Kafka).

    .venv/bin/python services/monitor/bench/handler_cpu.py --verdicts 20000

Decodes EmailClassified records as the wiring does, runs ``on_verdict`` and checks
every closed window (PSI from histogram counts), calls the commit floor every 500
verdicts (a batch commit: the SQLite flush), and prints CPU seconds (process time) per
1,000 verdicts: decoding, handler + window checks. The Evidently report of the first
window (periodic) is timed apart: it runs at most once per report_interval_s.
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path

import numpy as np
from spamops_features.handcrafted import HANDCRAFTED_NAMES
from spamops_monitor.adapters import ProfileStore, ReportWriter
from spamops_monitor.drift import (
    PROBABILITY,
    AlertGate,
    EvidentlyDrift,
    HistogramDrift,
    Profile,
    Windows,
)
from spamops_monitor.handlers import MonitorDeps, check_window, commit_floor, on_verdict
from spamops_monitor.quality import LiveQuality
from spamops_monitor.settings import MonitorSettings
from spamops_monitor.state import StateStore
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import EmailClassified, decode_event

MODEL = "spam-detector"


def rows(n: int, seed: int) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    columns = {name: rng.lognormal(2.0, 1.0, n) for name in HANDCRAFTED_NAMES}
    columns[PROBABILITY] = rng.beta(0.5, 0.5, n)
    return [{k: float(v[i]) for k, v in columns.items()} for i in range(n)]


async def main(count: int) -> None:
    import pandas as pd

    home = Path(tempfile.mkdtemp())
    settings = MonitorSettings(platform=PlatformSettings(home=home), status_interval_s=1.0)
    reference = Profile(MODEL, 1, pd.DataFrame(rows(3000, 1)), "bench")
    checks: list[object] = []

    class Sink:
        def submit(self, window: object) -> None:
            checks.append(window)

    async def publish(event: object) -> None:
        return None

    deps = MonitorDeps(
        settings=settings, model_name=MODEL,
        windows=Windows(settings.window_size, settings.window_max_age_s,
                        settings.min_window_size, time.monotonic),
        profiles=ProfileStore(lambda v: reference, None, model_name=MODEL, retry_s=1),
        detector=HistogramDrift(), reporter=EvidentlyDrift(),
        quality=LiveQuality(settings.join_capacity, settings.quality_window,
                            StateStore(settings.state_path, join_capacity=settings.join_capacity,
                                       quality_window=settings.quality_window)),
        gate=AlertGate(settings.cooldown_s, None, time.time),
        reports=ReportWriter(settings.monitor_dir / "reports", keep=3),
        publish=publish, checks=Sink(),  # type: ignore[arg-type]
        status_path=settings.monitor_dir / "live_quality.json",
    )  # fmt: skip
    await deps.profiles.wait(1)
    records = []
    for i, row in enumerate(rows(count, 2)):
        p = row.pop(PROBABILITY)
        event = EmailClassified(
            producer="bench", message_key=f"k{i}", verdict="spam" if p >= 0.5 else "ham",
            spam_probability=p, threshold=0.5, model_name=MODEL, model_version=1,
            environment="production", features=row, latency_ms=1.0,
        )  # fmt: skip
        records.append(event.to_bytes())

    # the first window's periodic Evidently report, apart
    started = time.process_time()
    for i, raw in enumerate(records[: settings.window_size]):
        await on_verdict(decode_event(raw, expected=EmailClassified), i % 6, i, 0, deps)
    await check_window(checks.pop(), deps)  # type: ignore[arg-type]
    report_s = time.process_time() - started

    rest = records[settings.window_size :]
    started = time.process_time()
    events = [decode_event(raw, expected=EmailClassified) for raw in rest]
    decode_s = time.process_time() - started
    started = time.process_time()
    for n, event in enumerate(events, settings.window_size):
        await on_verdict(event, n % 6, n, 0, deps)
        while checks:
            await check_window(checks.pop(0), deps)  # type: ignore[arg-type]
        if n % 500 == 499:
            for partition in range(6):
                commit_floor("emails.verdicts", partition, deps)
    handler_s = time.process_time() - started
    per = 1000 / len(rest)
    print(f"verdicts: {len(rest)} (+{settings.window_size} for the first report)")
    print(f"decode (pydantic, as the wiring does): {decode_s * per * 1000:.1f} ms CPU / 1,000")
    print(f"on_verdict + window checks + floor/flush: {handler_s * per * 1000:.1f} ms CPU / 1,000")
    print(f"one Evidently report (HTML + JSON, first window, periodic): {report_s:.1f} s CPU")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--verdicts", type=int, default=20000)
    asyncio.run(main(parser.parse_args().verdicts))
