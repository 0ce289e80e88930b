"""Looking things up for daily work: one verdict, the model versions, why a mail was spam.

* ``find_verdicts``: the verdicts of one message key. ``emails.verdicts`` is
  keyed by the message key, so only the key's partition is read (Kafka's
  default partitioner, murmur2, the one every client uses for keyed records).
* ``model_rows``: every registered version with its aliases, gate result,
  training figures and whether Triton serves it.
* ``explain``: the top feature contributions of the exact model version that
  decided (XGBoost ``pred_contribs`` on the run's own booster and feature
  pipeline), recomputed from the inbox record the verdict names.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import numpy as np
from spamops_runtime.replay import read_topic, topic_partitions
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import EmailClassified, EventDecodeError, decode_event
from spamops_schemas.registry import MODEL_FILE_ARTIFACT, PIPELINE_ARTIFACT, TAG_GATE, TAG_RUN
from spamops_schemas.topics import EMAILS_INBOX, EMAILS_VERDICTS


class NotFoundError(Exception):
    """What was asked for cannot be found (the message says what and where)."""


def partition_of(key: str, partitions: list[int]) -> int:
    """The partition of a keyed record from inference's producer (murmur2, Java's default).

    Only for topics the platform writes: kcat's default partitioner (CRC32) differs.
    """
    from aiokafka.partitioner import DefaultPartitioner

    return int(DefaultPartitioner()(key.encode("utf-8"), partitions, partitions))


async def find_verdicts(
    settings: PlatformSettings, key: str, *, last_n: int | None = None
) -> list[EmailClassified]:
    """Every verdict on ``key`` in ``emails.verdicts``, oldest first.

    ``last_n``: look at only the last ``last_n`` records of the key's partition.
    """
    partitions = await topic_partitions(settings, EMAILS_VERDICTS)
    if not partitions:
        return []
    found: list[EmailClassified] = []
    async for record in read_topic(
        settings,
        EMAILS_VERDICTS,
        partitions=[partition_of(key, partitions)],
        last_n=last_n,
        client_id="spamops-cli-lookup",
    ):
        if record.key != key:
            continue
        try:
            event = decode_event(record.value)
        except EventDecodeError:
            continue  # the dead-letter path's business, not a verdict
        if isinstance(event, EmailClassified) and event.message_key == key:
            found.append(event)
    return found


async def inbox_record(settings: PlatformSettings, partition: int, offset: int) -> bytes:
    """The raw value of one ``emails.inbox`` record."""
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        client_id="spamops-cli-lookup",
        enable_auto_commit=False,
        group_id=None,
        **settings.kafka_client_options(),
    )
    await consumer.start()
    try:
        tp = TopicPartition(EMAILS_INBOX, partition)
        consumer.assign([tp])
        start = (await consumer.beginning_offsets([tp]))[tp]
        if offset < start:
            raise NotFoundError(
                f"{EMAILS_INBOX} {partition}:{offset} is gone (retention; the log starts at "
                f"{start})"
            )
        consumer.seek(tp, offset)
        record = await consumer.getone()
        if record.offset != offset or record.value is None:
            raise NotFoundError(f"{EMAILS_INBOX} {partition}:{offset} not found")
        return bytes(record.value)
    finally:
        await consumer.stop()


@dataclass(frozen=True)
class ModelRow:
    """One registered model version, as ``spamops models`` shows it."""

    version: int
    aliases: list[str]
    gate: str
    run_id: str
    created: datetime
    metrics: dict[str, float]
    served: bool  # loaded and ready in Triton (as <model>-<alias>)


def model_rows(settings: PlatformSettings) -> list[ModelRow]:
    """Every version of the platform's model, newest first."""
    from datetime import UTC

    import mlflow
    from spamops_runtime.model_registry import serving_aliases
    from spamops_runtime.triton_repo import TritonRepositoryClient

    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
    name = settings.model_name
    versions = client.search_model_versions(f"name = '{name}'")
    # search_model_versions leaves the versions' aliases out: the registered model has them.
    aliases_of: dict[int, list[str]] = {}
    for alias, number in serving_aliases(settings.mlflow_uri, name).items():
        aliases_of.setdefault(number, []).append(alias)
    served: set[int] = set()
    try:
        key = settings.triton_repository_key()
        with TritonRepositoryClient(settings.triton_http, timeout=5, key=key) as triton:
            # The bridge serves each alias as its own Triton model, <model>-<alias>.
            served = {
                int(entry["version"])
                for entry in triton.index(ready_only=True)
                if str(entry.get("name", "")).startswith(f"{name}-")
                and str(entry.get("version", "")).isdigit()
            }
    except Exception:  # Triton down or refusing: nothing is shown as served
        served = set()
    rows = []
    for version in versions:
        run_id = version.tags.get(TAG_RUN) or version.run_id or ""
        metrics: dict[str, float] = {}
        if run_id:
            run_metrics = client.get_run(run_id).data.metrics
            metrics = {
                k: round(v, 4) for k, v in sorted(run_metrics.items()) if k.startswith("test_")
            }
        rows.append(
            ModelRow(
                version=int(version.version),
                aliases=sorted(aliases_of.get(int(version.version), [])),
                gate=version.tags.get(TAG_GATE, ""),
                run_id=run_id,
                created=datetime.fromtimestamp(version.creation_timestamp / 1000, UTC),
                metrics=metrics,
                served=int(version.version) in served,
            )
        )
    return sorted(rows, key=lambda r: -r.version)


@dataclass
class Explanation:
    """Why one message got its verdict: the largest contributions to the model's margin."""

    verdict: EmailClassified
    probability: float  # recomputed now; differs from the verdict's if reputation moved
    bias: float
    contributions: list[tuple[str, float, float]] = field(default_factory=list)  # name, x, contrib

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "message_key": self.verdict.message_key,
            "verdict": self.verdict.verdict,
            "spam_probability": self.verdict.spam_probability,
            "recomputed_probability": round(self.probability, 6),
            "model_version": self.verdict.model_version,
            "bias": round(self.bias, 6),
            "contributions": [
                {"feature": name, "value": round(value, 6), "contribution": round(c, 6)}
                for name, value, c in self.contributions
            ],
        }


def _reputation_at_verdict(
    settings: PlatformSettings, email: Any, verdict: EmailClassified
) -> np.ndarray | None:
    """The sender's reputation as the online store has it, counted at the verdict's time."""
    from spamops_features.reputation import ReputationStore

    store = ReputationStore.open(settings.state_dir / "data" / "cli" / "feast", settings.redis)
    result = store.online([email.sender_domain], verdict.occurred_at, [email.date])
    return None if result.degraded else result.values


def explain(
    settings: PlatformSettings, verdict: EmailClassified, raw: bytes, *, top: int = 10
) -> Explanation:
    """Top ``top`` contributions of the deciding version's booster on this message."""
    import mlflow
    import xgboost as xgb
    from spamops_features.mail import parse_email
    from spamops_features.pipeline import FeaturePipeline

    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
    version = client.get_model_version(verdict.model_name, str(verdict.model_version))
    run_id = version.tags.get(TAG_RUN) or version.run_id
    if not run_id:
        raise NotFoundError(f"{verdict.model_name} v{verdict.model_version} names no run")
    with tempfile.TemporaryDirectory(prefix="spamops-explain-") as tmp:

        def download(path: str) -> str:
            local: str = mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=tmp, tracking_uri=settings.mlflow_uri
            )
            return local

        pipeline = FeaturePipeline.load(download(PIPELINE_ARTIFACT))
        booster = xgb.Booster()
        booster.load_model(download(MODEL_FILE_ARTIFACT))
    email = parse_email(raw)
    x = pipeline.transform([email], _reputation_at_verdict(settings, email, verdict))
    matrix = xgb.DMatrix(x, feature_names=None)
    contribs = booster.predict(matrix, pred_contribs=True)[0]
    probability = float(booster.predict(matrix)[0])
    names = pipeline.spec.names
    order = np.argsort(-np.abs(contribs[:-1]))[:top]
    return Explanation(
        verdict=verdict,
        probability=probability,
        bias=float(contribs[-1]),
        contributions=[(names[i], float(x[0, i]), float(contribs[i])) for i in order],
    )
