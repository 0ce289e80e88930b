"""Streaming throughput and latency of the whole platform, as `make up` runs it.

Runs against the platform of this state directory (``SPAMOPS_HOME``, default
``.spamops``): Kafka, Redis, MLflow, Triton and the four services (the monitor
included) must all be running and ready, or the benchmark refuses to start
(``--allow-missing`` runs anyway and flags it in the result). Every inference
process of the state directory is found, also ones started by hand beside the
stack (scale-out: a second process in the group).

It publishes raw emails on emails.inbox and reads their verdicts on
emails.verdicts. The mail is held out: the test split of the snapshot the
production model was trained on (never seen in training), repeated with new
keys for volume. Cases:

* full speed on 6,046 and on 20,000 messages: everything published at once;
  verdicts/s from the first send to the last verdict;
* fixed rate, 300/s and 1,000/s for 60 s: end-to-end latency p50/p99 (send ->
  verdict record timestamp, both on this machine's clock).

For each case and each component (kafka, redis, mlflow, triton, each service
process) it records the CPU seconds used during the case (utime + stime from
``/proc/<pid>/stat`` of every process in the component's process group) and
the peak resident memory (``VmRSS`` from ``/proc/<pid>/status`` summed over
the group, sampled every ``--sample-s``), plus the committed consumer lag of
the inference and monitor groups when the case ends (last verdict seen); then
it waits for both groups to drain before the next case and records how long
that took (the monitor holds its open drift window uncommitted by design, so
"drained" means a lag below two windows for it). The client's own CPU
seconds are in the result too: it shares the machine.

    .venv/bin/python -m benchmarks.stream_throughput            # all four cases
    .venv/bin/python -m benchmarks.stream_throughput --quick    # a smoke run

Writes benchmarks/results/stream_throughput.json (``--quick``:
stream_throughput_quick.json) with the machine, the date and the commit.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from spamops_runtime.replay import consumer_lags, topic_partitions
from spamops_runtime.settings import PlatformSettings

from benchmarks._common import write_results

INBOX = "emails.inbox"
VERDICTS = "emails.verdicts"
INFERENCE_GROUP = "spamops-inference"
MONITOR_GROUP = "spamops-monitor"
EXPECTED = (
    "kafka",
    "redis",
    "mlflow",
    "triton",
    "trainer",
    "registry-bridge",
    "inference",
    "monitor",
)
_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")


# ------------------------------------------------------------------ the mail
def _production_dataset(settings: PlatformSettings) -> str | None:
    """The dataset id the production model was trained on (from its MLflow run), if known."""
    try:
        import mlflow
        from spamops_runtime.model_registry import serving_aliases
        from spamops_schemas import ModelTrained

        aliases = serving_aliases(settings.mlflow_uri, settings.model_name)
        version = aliases.get("production") or aliases.get("staging")
        if version is None:
            return None
        client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
        run_id = client.get_model_version(settings.model_name, str(version)).run_id
        tag = client.get_run(str(run_id)).data.tags.get("spamops.model_trained")
        return ModelTrained.from_bytes(tag).dataset_id if tag else None
    except Exception as exc:  # the result says which snapshot was used instead
        print(f"warning: cannot read the production model's dataset: {exc}", file=sys.stderr)
        return None


def held_out_mail(settings: PlatformSettings) -> tuple[list[bytes], dict[str, Any]]:
    """The test split of the production model's snapshot (else the newest snapshot)."""
    root = settings.state_dir / "data" / "datasets"
    dataset = _production_dataset(settings)
    path = root / dataset / "snapshot.parquet" if dataset else None
    source = "the production model's training snapshot"
    if path is None or not path.exists():
        files = sorted(glob.glob(str(root / "*" / "snapshot.parquet")), key=os.path.getmtime)
        if not files:
            raise SystemExit("no snapshot: run `make up` first")
        path, source = Path(files[-1]), "the newest snapshot (production model's not found)"
    table = pq.read_table(path, columns=["raw", "split"])
    splits = table.column("split").to_pylist()
    raws = table.column("raw").to_pylist()
    test = [bytes(r) for r, s in zip(raws, splits, strict=True) if s == "test"]
    described = {"snapshot": str(path), "source": source, "split": "test"}
    if not test:
        test, described["split"] = [bytes(r) for r in raws], "all (no test split!)"
    described["distinct_messages"] = len(test)
    described["note"] = (
        "held-out mail (never trained on), repeated with new keys for volume"
        if described["split"] == "test"
        else "NOT held out"
    )
    return test, described


def repeat(mails: Sequence[bytes], count: int) -> list[bytes]:
    """``count`` messages cycling through ``mails``."""
    return [mails[i % len(mails)] for i in range(count)]


# --------------------------------------------------------- the components
@dataclass
class Proc:
    """One component: a process group of the stack, or a process started beside it."""

    name: str
    pid: int
    group: bool  # whole process group (pid == pgid), else the process alone


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return text[text.rindex(")") + 2 :].split()


def _processes() -> dict[int, tuple[int, float, int]]:
    """pid -> (process group, CPU seconds, RSS bytes) of every live process: one /proc pass."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = _stat(int(entry))
            if fields and fields[0] not in ("Z", "X"):
                # from the state (field 3) on: pgrp 5, utime 14, stime 15, rss 24 (pages)
                cpu = (int(fields[11]) + int(fields[12])) / _TICKS
                out[int(entry)] = (int(fields[2]), cpu, int(fields[21]) * _PAGE)
    return out


def _members(proc: Proc, table: dict[int, tuple[int, float, int]]) -> list[int]:
    if not proc.group:
        return [proc.pid] if proc.pid in table else []
    return [pid for pid, (pgrp, _, _) in table.items() if pgrp == proc.pid]


def _environ(pid: int) -> dict[str, str]:
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return {}
    pairs = (item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
    return {k.decode(errors="replace"): v.decode(errors="replace") for k, v in pairs}


def _extra_inference(settings: PlatformSettings, known: set[int]) -> list[int]:
    """Inference processes of this state directory not started by the stack."""
    home = str(settings.state_dir)
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) in known:
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"spamops_inference" not in cmd or b"-m" not in cmd:
            continue
        env_home = _environ(int(entry)).get("SPAMOPS_HOME", ".spamops")
        if str(Path(env_home).expanduser().resolve()) == home:
            found.append(int(entry))
    return sorted(found)


def components(
    settings: PlatformSettings, allow_missing: bool
) -> tuple[list[Proc], dict[str, Any]]:
    """Every running component; refuse (or flag, with ``allow_missing``) a missing one."""
    from spamops_cli.stack.manager import status

    procs: list[Proc] = []
    ran: dict[str, Any] = {}
    missing = []
    for item in status(settings):
        ran[item.name] = {"running": item.running, "ready": item.ready, "pid": item.pid}
        if item.running and item.ready and item.pid:
            procs.append(Proc(item.name, item.pid, group=True))
        else:
            missing.append(item.name)
    table = _processes()
    known = {m for p in procs for m in _members(p, table)}
    extra = _extra_inference(settings, known)
    for i, pid in enumerate(extra, start=2):
        procs.append(Proc(f"inference#{i}", pid, group=False))
    missing += [name for name in EXPECTED if name not in ran]
    info = {
        "components": ran,
        "inference_processes": 1 + len(extra) if "inference" not in missing else len(extra),
        "monitor_ran": "monitor" not in missing,
        "every_service_up": not missing,
        "missing": sorted(set(missing)),
    }
    if missing:
        message = f"NOT every component is running and ready: missing {sorted(set(missing))}"
        if not allow_missing:
            raise SystemExit(message + " (start them with `make up`, or pass --allow-missing)")
        print("!" * 78 + f"\n!! {message}\n!! the result is flagged\n" + "!" * 78, file=sys.stderr)
    return procs, info


class Usage:
    """CPU seconds and peak RSS of each component between ``start`` and ``stop``."""

    def __init__(self, procs: Sequence[Proc], sample_s: float) -> None:
        self.procs = procs
        self.sample_s = sample_s
        self._first: dict[str, dict[int, float]] = {}
        self._last: dict[str, dict[int, float]] = {}
        self._peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._client0 = 0.0

    def _sample(self) -> None:
        table = _processes()
        for proc in self.procs:
            members = _members(proc, table)
            first = self._first.setdefault(proc.name, {})
            last = self._last.setdefault(proc.name, {})
            for pid in members:
                first.setdefault(pid, table[pid][1])  # a process that appears mid-case: from then
                last[pid] = table[pid][1]
            rss = sum(table[pid][2] for pid in members)
            self._peak[proc.name] = max(self._peak.get(proc.name, 0), rss)

    def _run(self) -> None:
        while not self._stop.wait(self.sample_s):
            self._sample()

    def start(self) -> None:
        self._client0 = _client_cpu()
        self._sample()
        self._thread.start()

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join()
        self._sample()
        out: dict[str, Any] = {}
        for proc in self.procs:
            first, last = self._first.get(proc.name, {}), self._last.get(proc.name, {})
            cpu = sum(last[pid] - first.get(pid, last[pid]) for pid in last)
            out[proc.name] = {
                "cpu_seconds": round(cpu, 2),
                "peak_rss_mib": round(self._peak.get(proc.name, 0) / 2**20, 1),
            }
        out["benchmark-client"] = {
            "cpu_seconds": round(_client_cpu() - self._client0, 2),
            "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        }
        return out


def _client_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


# ------------------------------------------------------------------- Kafka
async def end_offsets(settings: PlatformSettings, topic: str) -> dict[TopicPartition, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    await consumer.start()
    try:
        parts = [TopicPartition(topic, p) for p in await topic_partitions(settings, topic)]
        return dict(await consumer.end_offsets(parts))
    finally:
        await consumer.stop()


async def committed_lag(settings: PlatformSettings) -> dict[str, int | None]:
    """Committed consumer lag of inference (emails.inbox) and monitor (emails.verdicts)."""
    lags = await consumer_lags(settings, {INFERENCE_GROUP: (INBOX,), MONITOR_GROUP: (VERDICTS,)})
    return {"inference": lags[INFERENCE_GROUP], "monitor": lags[MONITOR_GROUP]}


def monitor_open_window() -> int:
    """Verdicts the monitor leaves uncommitted by design: its open drift window.

    The monitor commits a verdict only once the window holding it is evaluated
    (a restart replays the open window), so on a quiet stream its committed lag
    rests below two windows (one open, one queued for its check; the floor is
    per partition) until the open one closes on count or on age
    (``window_max_age_s``).
    """
    from spamops_monitor.settings import MonitorSettings

    return 2 * int(MonitorSettings().window_size)


async def drain(settings: PlatformSettings, timeout_s: float) -> tuple[dict[str, Any], float]:
    """Wait until inference has committed everything and the monitor all but its open
    window (or ``timeout_s``)."""
    allowance = monitor_open_window()

    def busy(lag: dict[str, int | None]) -> bool:
        return bool(lag["inference"]) or (lag["monitor"] or 0) >= allowance

    began = time.monotonic()
    lag = await committed_lag(settings)
    while busy(lag) and time.monotonic() - began < timeout_s:
        await asyncio.sleep(1.0)
        lag = await committed_lag(settings)
    return lag, round(time.monotonic() - began, 1)


async def collect(
    settings: PlatformSettings,
    start: dict[TopicPartition, int],
    prefix: bytes,
    count: int,
    timeout_s: float,
    ready: asyncio.Event,
) -> dict[bytes, int]:
    """key -> verdict record timestamp (ms) of the verdicts of our keys (no JSON decoding)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        fetch_max_bytes=16 << 20,
        max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    consumer.assign(list(start))
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    ready.set()
    found: dict[bytes, int] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(found) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=200, max_records=10_000)
            for records in batches.values():
                for r in records:
                    if r.key is not None and r.key.startswith(prefix) and r.key not in found:
                        found[r.key] = r.timestamp
    finally:
        await consumer.stop()
    return found


async def publish(
    settings: PlatformSettings, mails: Sequence[bytes], keys: Sequence[bytes], rate: float | None
) -> dict[bytes, int]:
    """Send ``mails`` (at ``rate``/s, or as fast as possible); returns key -> send time (ms)."""
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap, acks="all", linger_ms=5,
        max_batch_size=1 << 20, max_request_size=16 << 20,
    )  # fmt: skip
    await producer.start()
    sent: dict[bytes, int] = {}
    began = time.monotonic()
    try:
        pending = []
        for i, (raw, key) in enumerate(zip(mails, keys, strict=True)):
            if rate:
                delay = began + i / rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            sent[key] = int(time.time() * 1000)
            pending.append(await producer.send(INBOX, raw, key=key))
        try:
            await asyncio.wait_for(asyncio.gather(*pending), timeout=120)
        except TimeoutError:
            # Seen once: a send future never resolved although Kafka holds every record;
            # the verdicts (collected separately) say what arrived.
            unacked = sum(not f.done() for f in pending)
            print(f"!! {unacked} sends not acknowledged after 120 s", file=sys.stderr)
    finally:
        await producer.stop()
    return sent


def latency_stats(found: dict[bytes, int], sent: dict[bytes, int]) -> dict[str, float]:
    e2e = np.array([ts - sent[key] for key, ts in found.items()], dtype=float)
    return {
        "p50_ms": round(float(np.percentile(e2e, 50)), 1),
        "p90_ms": round(float(np.percentile(e2e, 90)), 1),
        "p99_ms": round(float(np.percentile(e2e, 99)), 1),
        "max_ms": round(float(e2e.max()), 1),
    }


@dataclass
class Case:
    name: str
    messages: int
    rate: float | None
    timeout_s: float
    extra: dict[str, Any] = field(default_factory=dict)


async def run_case(
    settings: PlatformSettings,
    case: Case,
    mails: Sequence[bytes],
    procs: Sequence[Proc],
    sample_s: float,
    drain_s: float,
) -> dict[str, Any]:
    prefix = f"bench-{uuid.uuid4().hex[:8]}-".encode()
    batch = repeat(mails, case.messages)
    keys = [prefix + str(i).encode() for i in range(case.messages)]
    start = await end_offsets(settings, VERDICTS)
    ready = asyncio.Event()
    usage = Usage(procs, sample_s)
    collector = asyncio.create_task(
        collect(settings, start, prefix, len(batch), case.timeout_s, ready)
    )
    await ready.wait()
    usage.start()
    began = time.time()
    sent = await publish(settings, batch, keys, case.rate)
    published_s = time.time() - began
    found = await collector
    wall = time.time() - began
    resources = usage.stop()
    lag_at_end = await committed_lag(settings)
    lag_after, drain_seconds = await drain(settings, drain_s)
    result: dict[str, Any] = {
        "messages": len(batch),
        "offered_rate": case.rate or "max",
        "verdicts": len(found),
        "lost_or_late": len(batch) - len(found),
        "publish_seconds": round(published_s, 2),
        "case_wall_seconds": round(wall, 2),
    }
    if found:
        first_send = min(sent.values())
        span = (max(found.values()) - first_send) / 1000
        result["first_send_to_last_verdict_s"] = round(span, 2)
        result["verdicts_per_second"] = round(len(found) / span, 1) if span > 0 else None
        result.update(latency_stats(found, sent))
    else:
        result["error"] = "no verdicts (is inference up and a model serving?)"
    result["committed_lag_at_end"] = lag_at_end
    result["drain"] = {"seconds": drain_seconds, "lag_after": lag_after}
    result["resources"] = resources
    return result


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


def cases(args: argparse.Namespace) -> list[Case]:
    if args.quick:
        return [
            Case("full_speed_quick", 600, None, 300),
            Case("fixed_rate_quick", 100 * 5, 100.0, 120),
        ]
    out = [Case(f"full_speed_{n}", n, None, 900) for n in args.messages]
    out += [
        Case(f"fixed_rate_{int(r)}_per_s", int(r * args.seconds), r, args.seconds + 300)
        for r in args.rates
    ]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="Smoke run: 600 msgs, 100/s for 5 s.")
    parser.add_argument("--messages", type=int, nargs="+", default=[6046, 20_000])
    parser.add_argument("--rates", type=float, nargs="+", default=[300.0, 1000.0])
    parser.add_argument("--seconds", type=float, default=60.0, help="Length of a fixed-rate case.")
    parser.add_argument("--sample-s", type=float, default=0.5, help="RSS sampling period.")
    parser.add_argument("--drain-s", type=float, default=300.0, help="Longest wait for lag 0.")
    parser.add_argument(
        "--allow-missing", action="store_true", help="Run although a component is down (flagged)."
    )
    parser.add_argument("--label", default="", help="A note stored with the result.")
    parser.add_argument(
        "--spamd-sample", type=int, default=0, help="Also time SpamAssassin on N messages."
    )
    args = parser.parse_args()
    settings = PlatformSettings()
    procs, ran = components(settings, args.allow_missing)
    mails, mail_info = held_out_mail(settings)
    print(f"{len(mails)} held-out messages; components: {[p.name for p in procs]}", file=sys.stderr)

    async def run_all() -> dict[str, Any]:
        lag, waited = await drain(settings, args.drain_s)  # start from a quiet platform
        out: dict[str, Any] = {"lag_before_first_case": lag, "waited_for_it_s": waited}
        for case in cases(args):
            print(f"case {case.name} ...", file=sys.stderr)
            out[case.name] = await run_case(
                settings, case, mails, procs, args.sample_s, args.drain_s
            )
            summary = {
                k: out[case.name].get(k) for k in ("verdicts_per_second", "p50_ms", "p99_ms")
            }
            print(f"  {summary}", file=sys.stderr)
        return out

    results = asyncio.run(run_all())
    if args.spamd_sample:
        results["spamd"] = spamd(mails, args.spamd_sample)
    results["setup"] = {
        **ran,
        "mail": mail_info,
        "state_dir": str(settings.state_dir),
        "label": args.label,
        "latency": "send time (client) -> verdict record timestamp (broker log-append or "
        "producer create time), same machine clock",
        "cpu": "utime+stime of every process in each component's process group during the "
        "case; peak_rss_mib: largest summed VmRSS seen, sampled",
    }
    write_results("stream_throughput_quick" if args.quick else "stream_throughput", results)
    if not ran["every_service_up"]:
        print("!! flagged: not every component was running (see setup.missing)", file=sys.stderr)


if __name__ == "__main__":
    main()
