"""A stream of emails that keeps flowing while a fault is injected, and what came out of it.

``Drill`` sends numbered emails to ``emails.inbox`` from a background thread at
a steady rate, retrying what Kafka does not acknowledge (as any producer
with ``acks=all`` would), then reads ``emails.verdicts`` and
``emails.inbox.dlq`` and counts, per key, what the platform produced.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from spamops_runtime.replay import read_topic
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import EmailClassified, EventDecodeError, decode_event

from tests.integration.helpers import sample_email

# Set to a file path to collect every drill's numbers (JSON lines) for the issue note.
REPORT_ENV = "SPAMOPS_FAULTS_REPORT"


@dataclass
class DrillReport:
    """What went in and what came out of one fault scenario."""

    scenario: str
    sent: int = 0
    send_retries: int = 0
    verdicts: int = 0  # keys with at least one verdict
    duplicates: int = 0  # verdicts beyond the first per key
    dead_letters: int = 0
    lost: int = 0
    longest_verdict_gap_s: float = 0.0  # the stream's longest pause, fault included
    # From the repair to the next verdict / to the last verdict; None when the
    # stream never waited for the repair (the fault did not touch the verdict path).
    recovery_s: float | None = None
    caught_up_s: float | None = None
    notes: dict[str, object] = field(default_factory=dict)

    def save(self) -> None:
        """Print the numbers and append them to $SPAMOPS_FAULTS_REPORT when set."""
        line = json.dumps(asdict(self))
        print(f"\nfault drill: {line}")
        target = os.environ.get(REPORT_ENV)
        if target:
            with Path(target).open("a") as out:
                out.write(line + "\n")


class Drill:
    """Send ``count`` emails keyed ``<scenario>-<i>`` at ``rate`` per second in the background."""

    def __init__(
        self, settings: PlatformSettings, scenario: str, count: int = 1500, rate: float = 50
    ) -> None:
        self.settings = settings
        self.report = DrillReport(scenario)
        self.keys = [f"{scenario}-{i}" for i in range(count)]
        self.rate = rate
        self.started_at = 0.0
        self.repaired_at: float | None = None  # wall clock, set by the test
        self._thread = threading.Thread(target=lambda: asyncio.run(self._send()), daemon=True)
        self._error: BaseException | None = None

    # ------------------------------------------------------------ input
    def __enter__(self) -> Drill:
        self.started_at = time.time()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._thread.join(timeout=600)

    def elapsed(self) -> float:
        """Seconds since the stream started."""
        return time.time() - self.started_at

    def sleep_until(self, seconds: float) -> None:
        """Block until ``seconds`` after the stream started."""
        time.sleep(max(0.0, self.started_at + seconds - time.time()))

    def repaired(self) -> float:
        """Mark (and return) the moment the fault is over: the component is back."""
        self.repaired_at = time.time()
        return self.repaired_at

    async def _send(self) -> None:
        try:
            producer = await self._producer()
            try:
                for i, key in enumerate(self.keys):
                    # Steady rate from the start, whatever the retries cost.
                    await asyncio.sleep(max(0.0, self.started_at + i / self.rate - time.time()))
                    mail = sample_email(i, spam=i % 3 == 0, id_prefix="fault")
                    await self._send_one(producer, key, mail)
            finally:
                await producer.stop()
        except BaseException as exc:  # surfaced by finish()
            self._error = exc

    async def _producer(self) -> AIOKafkaProducer:
        while True:
            producer = AIOKafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                acks="all",
                # Not idempotent: aiokafka's idempotent producer can wedge for good after a
                # broker restart (OutOfOrderSequenceException); a plain one fails the send
                # after request_timeout_ms and is retried here (duplicates allowed).
                enable_idempotence=False,
                request_timeout_ms=10_000,
            )
            try:
                await producer.start()
                return producer
            except KafkaError:
                await producer.stop()
                await asyncio.sleep(1)

    async def _send_one(self, producer: AIOKafkaProducer, key: str, value: bytes) -> None:
        while True:
            try:
                await producer.send_and_wait("emails.inbox", value, key=key.encode())
                self.report.sent += 1
                return
            except KafkaError:
                # Kafka is away: try again (a duplicate in the inbox is fine, a loss is not).
                self.report.send_retries += 1
                await asyncio.sleep(0.5)

    # ------------------------------------------------------------ output
    def finish(self, wait_s: float = 240) -> DrillReport:
        """Wait for the stream to end and every key to have a verdict (or a dead letter)."""
        self._thread.join(timeout=wait_s)
        assert not self._thread.is_alive(), "the producer did not finish"
        if self._error is not None:
            raise self._error
        wanted = set(self.keys)
        deadline = time.monotonic() + wait_s
        while True:
            verdict_times, dead = asyncio.run(self._outputs(wanted))
            done = {k for k in verdict_times} | set(dead)
            if done >= wanted or time.monotonic() > deadline:
                break
            time.sleep(2)
        report = self.report
        report.verdicts = len(verdict_times)
        report.duplicates = sum(len(times) - 1 for times in verdict_times.values())
        report.dead_letters = len(dead)
        report.lost = len(wanted - done)
        report.notes["dead_letter_reasons"] = dict(Counter(dead.values()))
        stamps = sorted(t for times in verdict_times.values() for t in times)
        gaps = [b - a for a, b in itertools.pairwise(stamps)]
        report.longest_verdict_gap_s = round(max(gaps, default=0.0), 2)
        after = [t for t in stamps if self.repaired_at is not None and t >= self.repaired_at]
        if self.repaired_at is not None and after:
            report.recovery_s = round(after[0] - self.repaired_at, 2)
            report.caught_up_s = round(after[-1] - self.repaired_at, 2)
        report.save()
        return report

    async def _outputs(self, wanted: set[str]) -> tuple[dict[str, list[float]], dict[str, str]]:
        verdict_times: dict[str, list[float]] = {}
        async for record in read_topic(self.settings, "emails.verdicts", idle_timeout_s=0.5):
            if record.key not in wanted:
                continue
            try:
                event = decode_event(record.value, EmailClassified)
            except EventDecodeError:
                continue
            verdict_times.setdefault(event.message_key, []).append(record.timestamp_ms / 1000)
        dead: dict[str, str] = {}
        async for record in read_topic(self.settings, "emails.inbox.dlq", idle_timeout_s=0.5):
            if record.key in wanted:
                dead[record.key] = record.headers.get("x-error-reason", "")
        return verdict_times, dead
