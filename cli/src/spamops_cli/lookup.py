"""Looking things up for daily work: one verdict, the model versions, why a mail was spam.

* ``find_verdicts``: the verdicts of one message key. ``emails.verdicts`` is
  keyed by the message key, so only the key's partition is read (Kafka's
  default partitioner, murmur2, the one every client uses for keyed records).
* ``model_rows``: every registered version with its aliases, gate result,
  training figures and whether Triton serves it.
* ``explain``: the top feature contributions of the exact model version that
  decided (``spamops_features.explain``), recomputed from the inbox record the
  verdict names.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from spamops_runtime.replay import read_topic, topic_partitions
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import EmailClassified, EventDecodeError, decode_event
from spamops_schemas.registry import TAG_GATE, TAG_RUN
from spamops_schemas.topics import EMAILS_VERDICTS


class NotFoundError(LookupError):
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


def explain(
    settings: PlatformSettings, verdict: EmailClassified, raw: bytes, *, top: int = 10
) -> dict[str, Any]:
    """Top ``top`` contributions of the deciding version's booster on this message (JSON-ready).

    The sender's reputation is the online store's now, counted at the verdict's time.
    """
    from spamops_features.explain import ModelFiles, explain_mail, reputation_at
    from spamops_runtime.model_registry import download_version_files

    reputation = reputation_at(
        settings.state_dir / "data" / "cli" / "feast", settings.redis, raw, verdict.occurred_at
    )
    with tempfile.TemporaryDirectory(prefix="spamops-explain-") as tmp:
        try:
            pipeline_dir, booster = download_version_files(
                settings.mlflow_uri, verdict.model_name, verdict.model_version, tmp
            )
        except LookupError as exc:
            raise NotFoundError(str(exc)) from exc
        result = explain_mail(ModelFiles(pipeline_dir, booster), raw, reputation, top=top)
    return {
        "message_key": verdict.message_key,
        "verdict": verdict.verdict,
        "spam_probability": verdict.spam_probability,
        "model_version": verdict.model_version,
        **result.as_dict(),
    }
