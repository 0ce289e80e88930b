"""The platform at a glance for `spamops status`: models, Triton, lag, dead letters, events.

Each part is read independently and a part that cannot be read says why,
so the overview works on a half-started platform too.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from spamops_runtime.model_registry import serving_aliases
from spamops_runtime.replay import consumer_lags, topic_partitions
from spamops_runtime.settings import PlatformSettings
from spamops_runtime.triton_repo import TritonRepositoryClient
from spamops_schemas.topics import DLQ_SUFFIX, catalogue

CONTROL_TYPES_BY_TOPIC = {t.name: t.value for t in catalogue() if t.kind == "control"}
QUALITY_FILE = ("data", "monitor", "live_quality.json")


@dataclass
class Overview:
    """What `spamops status` shows below the component table."""

    aliases: dict[str, int] = field(default_factory=dict)
    versions: list[int] = field(default_factory=list)
    triton: list[str] = field(default_factory=list)
    lag: dict[str, int] = field(default_factory=dict)
    dead_letters: dict[str, int] = field(default_factory=dict)
    last_events: dict[str, str] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    verdicts_total: int = 0
    errors: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return self.__dict__.copy()


def _models(settings: PlatformSettings, view: Overview) -> None:
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
    name = settings.model_name
    try:
        found = client.search_model_versions(f"name = '{name}'")
    except MlflowException as exc:
        view.errors["mlflow"] = str(exc)[:200]
        return
    view.versions = sorted(int(v.version) for v in found)
    view.aliases = serving_aliases(settings.mlflow_uri, name)


def _triton(settings: PlatformSettings, view: Overview) -> None:
    key = settings.triton_repository_key()
    with TritonRepositoryClient(settings.triton_http, timeout=5, key=key) as client:
        for entry in client.index(ready_only=True):
            view.triton.append(f"{entry.get('name')} v{entry.get('version')}")


async def _kafka(settings: PlatformSettings, view: Overview) -> None:
    from aiokafka import AIOKafkaConsumer, TopicPartition
    from aiokafka.admin import AIOKafkaAdminClient

    sasl = settings.kafka_client_options()
    admin = AIOKafkaAdminClient(bootstrap_servers=settings.kafka_bootstrap, **sasl)
    consumer = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, **sasl)
    await admin.start()
    await consumer.start()
    try:
        topics = await consumer.topics()
        # Per-process control groups (inference) follow from "latest": their lag says nothing.
        groups = [
            g[0]
            for g in await admin.list_consumer_groups()
            if g[0].startswith("spamops-") and "-control-" not in g[0]
        ]
        lags = await consumer_lags(settings, {group: () for group in sorted(groups)})
        view.lag = {group: lag for group, lag in lags.items() if lag is not None}
        for topic in sorted(t for t in topics if t.endswith(DLQ_SUFFIX)):
            parts = [TopicPartition(topic, p) for p in await topic_partitions(settings, topic)]
            if not parts:
                continue
            ends = await consumer.end_offsets(parts)
            starts = await consumer.beginning_offsets(parts)
            view.dead_letters[topic] = sum(ends[tp] - starts[tp] for tp in parts)
        verdict_parts = [
            TopicPartition("emails.verdicts", p)
            for p in await topic_partitions(settings, "emails.verdicts")
        ]
        if verdict_parts:
            view.verdicts_total = sum((await consumer.end_offsets(verdict_parts)).values())
        control = [TopicPartition(t, 0) for t in CONTROL_TYPES_BY_TOPIC if t in topics]
        for tp in control:
            await topic_partitions(settings, tp.topic)
        ends = await consumer.end_offsets(control)
        last = [tp for tp in control if ends[tp] > 0]
        consumer.assign(last)
        for tp in last:
            consumer.seek(tp, ends[tp] - 1)
        pending = set(last)
        while pending:
            batch = await consumer.getmany(timeout_ms=2000)
            if not batch:
                break
            for tp, records in batch.items():
                if records and tp in pending:
                    pending.discard(tp)
                    view.last_events[CONTROL_TYPES_BY_TOPIC[tp.topic]] = _summary(records[-1])
    finally:
        await consumer.stop()
        await admin.close()


def _summary(record: Any) -> str:
    try:
        data = json.loads(record.value)
    except (TypeError, ValueError):
        return "(not JSON)"
    when = str(data.get("occurred_at", ""))[:19].replace("T", " ")
    keys = ("dataset_id", "version", "run_id", "reason", "previous_version", "drift_share")
    detail = ", ".join(f"{k}={data[k]}" for k in keys if data.get(k) is not None)
    return f"{when}  {detail}"


def _quality(settings: PlatformSettings, view: Overview) -> None:
    path = settings.state_dir.joinpath(*QUALITY_FILE)
    if path.is_file():
        view.quality = json.loads(path.read_text())


def overview(settings: PlatformSettings) -> Overview:
    """Read every part; failures go to ``errors`` by part."""
    view = Overview()
    for part, reader in (("mlflow", _models), ("triton", _triton), ("quality", _quality)):
        try:
            reader(settings, view)
        except Exception as exc:  # a half-started platform: show what is there
            view.errors.setdefault(part, f"{type(exc).__name__}: {str(exc)[:160]}")
    try:
        asyncio.run(asyncio.wait_for(_kafka(settings, view), 20))
    except Exception as exc:
        view.errors["kafka"] = f"{type(exc).__name__}: {str(exc)[:160]}"
    return view
