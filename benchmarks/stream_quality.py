"""Quality through the stream: the production model's held-out mail, scored from its verdicts.

Runs against the platform of this state directory (``SPAMOPS_HOME``, default
``.spamops``) after ``make up``: every component running, a production model
trained through the platform (``spamops ingest`` -> trainer -> registry-bridge
-> PromotionApproved). It

1. reads the production version's MLflow run: the snapshot it was trained on
   and its offline test figures (the ``ModelTrained`` the trainer published);
2. publishes that snapshot's **test split** (never trained on, never used to
   choose the threshold) as raw RFC 822 bytes to ``emails.inbox`` with a plain
   Kafka producer and new keys, as a mail team would;
3. reads the verdicts on ``emails.verdicts`` (and any dead letters of these keys
   on ``emails.inbox.dlq``), scores them against the snapshot's labels, and
   compares with the offline figures of the same split.

Serving and training compute the same inputs for the same mail (one features
library, reputation over the training labels on both paths), so the two
figures should agree; the issue's bar is |F1 stream - F1 offline| <= 0.005.
Labels published since the training (``emails.feedback``) change a domain's
reputation online and can move a few verdicts: the result records how many
EmailLabeled events the feedback topic holds.

    .venv/bin/python -m benchmarks.stream_quality

Writes benchmarks/results/stream_quality.json with the machine, date and commit.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from aiokafka import AIOKafkaConsumer
from sklearn.metrics import confusion_matrix, f1_score, precision_score, recall_score
from spamops_runtime.settings import PlatformSettings

from benchmarks._common import write_results
from benchmarks.stream_throughput import components, end_offsets, publish

VERDICTS = "emails.verdicts"
DEAD_LETTERS = "emails.inbox.dlq"
FEEDBACK = "emails.feedback"


def production_training(settings: PlatformSettings) -> tuple[int, dict[str, Any]]:
    """The production version and the ModelTrained event of its run (offline figures)."""
    import mlflow
    from spamops_runtime.model_registry import serving_aliases
    from spamops_schemas import ModelTrained

    version = serving_aliases(settings.mlflow_uri, settings.model_name).get("production")
    if version is None:
        raise SystemExit("no production model: run `make up` first")
    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
    run_id = client.get_model_version(settings.model_name, str(version)).run_id
    tag = client.get_run(str(run_id)).data.tags.get("spamops.model_trained")
    if not tag:
        raise SystemExit(f"version {version}'s run {run_id} carries no ModelTrained")
    trained = ModelTrained.from_bytes(tag)
    return int(version), json.loads(trained.model_dump_json())


def test_split(settings: PlatformSettings, dataset_id: str) -> list[tuple[str, bytes, str, str]]:
    """(source_id, raw, label, group) of the snapshot's test rows."""
    path = settings.state_dir / "data" / "datasets" / dataset_id / "snapshot.parquet"
    if not path.exists():
        raise SystemExit(f"the production model's snapshot is gone: {path}")
    table = pq.read_table(path, columns=["source_id", "raw", "label", "group", "split"])
    rows = table.to_pylist()
    return [
        (str(r["source_id"]), bytes(r["raw"]), str(r["label"]), str(r["group"]))
        for r in rows
        if r["split"] == "test"
    ]


async def read_outcomes(
    settings: PlatformSettings,
    topics_start: dict[str, dict[Any, int]],
    prefix: bytes,
    count: int,
    timeout_s: float,
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Verdicts (key -> EmailClassified as dict) and dead letters (key -> reason) of our keys."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, enable_auto_commit=False
    )
    await consumer.start()
    start = {tp: off for offsets in topics_start.values() for tp, off in offsets.items()}
    consumer.assign(list(start))
    for tp, offset in start.items():
        consumer.seek(tp, offset)
    verdicts: dict[str, dict[str, Any]] = {}
    dead: dict[str, str] = {}
    deadline = time.monotonic() + timeout_s
    try:
        while len(verdicts) + len(dead) < count and time.monotonic() < deadline:
            batches = await consumer.getmany(timeout_ms=500, max_records=5_000)
            for tp, records in batches.items():
                for r in records:
                    if r.key is None or not r.key.startswith(prefix):
                        continue
                    key = r.key.decode()
                    if tp.topic == VERDICTS and r.value is not None:
                        verdicts[key] = json.loads(r.value)
                    elif tp.topic == DEAD_LETTERS:
                        headers = {k: v for k, v in r.headers or ()}
                        reason = headers.get("x-error-reason", b"?") or b"?"
                        dead[key] = reason.decode(errors="replace")
    finally:
        await consumer.stop()
    return verdicts, dead


async def feedback_count(settings: PlatformSettings) -> int:
    """Records on emails.feedback (labels that may have moved reputation since training)."""
    ends = await end_offsets(settings, FEEDBACK)
    return int(sum(ends.values()))


def scores(labels: list[str], verdicts: list[str]) -> dict[str, Any]:
    """F1, precision, recall, false-positive rate and the confusion counts (spam = positive)."""
    y = np.array([v == "spam" for v in labels])
    p = np.array([v == "spam" for v in verdicts])
    tn, fp, fn, tp = (int(c) for c in confusion_matrix(y, p, labels=[False, True]).ravel())
    return {
        "f1": round(float(f1_score(y, p)), 4),
        "precision": round(float(precision_score(y, p, zero_division=0)), 4),
        "recall": round(float(recall_score(y, p)), 4),
        "false_positive_rate": round(fp / (fp + tn), 4) if fp + tn else 0.0,
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--timeout-s", type=float, default=600.0)
    parser.add_argument(
        "--allow-missing", action="store_true", help="Run although a component is down (flagged)."
    )
    args = parser.parse_args()
    settings = PlatformSettings()
    _, ran = components(settings, args.allow_missing)
    version, trained = production_training(settings)
    rows = test_split(settings, trained["dataset_id"])
    prefix = f"quality-{uuid.uuid4().hex[:8]}-".encode()
    keys = [prefix + sid.encode() for sid, *_ in rows]
    print(f"production v{version}: streaming {len(rows)} held-out test mails", file=sys.stderr)

    async def run() -> tuple[dict[str, dict[str, Any]], dict[str, str], float, int]:
        start = {
            VERDICTS: await end_offsets(settings, VERDICTS),
            DEAD_LETTERS: await end_offsets(settings, DEAD_LETTERS),
        }
        reader = asyncio.create_task(
            read_outcomes(settings, start, prefix, len(rows), args.timeout_s)
        )
        began = time.monotonic()
        await publish(settings, [raw for _, raw, _, _ in rows], keys, None)
        verdicts, dead = await reader
        return verdicts, dead, time.monotonic() - began, await feedback_count(settings)

    verdicts, dead, seconds, feedback = asyncio.run(run())
    by_key = {prefix.decode() + sid: (label, group) for sid, _, label, group in rows}
    scored = [k for k in by_key if k in verdicts]
    stream = scores([by_key[k][0] for k in scored], [verdicts[k]["verdict"] for k in scored])
    versions = sorted({int(verdicts[k]["model_version"]) for k in scored})
    per_group: dict[str, dict[str, int]] = {}
    for k in scored:
        label, group = by_key[k]
        tally = per_group.setdefault(group, {"messages": 0, "correct": 0})
        tally["messages"] += 1
        tally["correct"] += int(verdicts[k]["verdict"] == label)
    offline = trained["metrics"]
    results: dict[str, Any] = {
        "production_version": version,
        "versions_in_verdicts": versions,
        "dataset_id": trained["dataset_id"],
        "threshold": trained.get("threshold"),
        "test_mails": len(rows),
        "verdicts": len(scored),
        "dead_letters": dict(sorted(dead.items())),
        "missing": len(rows) - len(scored) - len(dead),
        "stream_seconds": round(seconds, 1),
        "stream": stream,
        "offline_same_split": {k: round(float(v), 4) for k, v in offline.items()},
        "f1_stream_minus_offline": round(stream["f1"] - float(offline["f1"]), 4),
        "within_0_005": abs(stream["f1"] - float(offline["f1"])) <= 0.005,
        "per_group_accuracy": {
            g: round(t["correct"] / t["messages"], 4) for g, t in sorted(per_group.items())
        },
        "feedback_records_on_topic": feedback,
        "setup": {
            **ran,
            "state_dir": str(settings.state_dir),
            "client": "aiokafka producer (acks=all), raw RFC 822 bytes, new keys",
            "note": "offline = the trainer's test figures for the same split (ModelTrained)",
        },
    }
    write_results("stream_quality", results)
    print(
        f"stream F1 {stream['f1']:.4f} vs offline {float(offline['f1']):.4f} "
        f"({results['f1_stream_minus_offline']:+.4f}); FPR {stream['false_positive_rate']:.4f}",
        file=sys.stderr,
    )
    if not ran["every_service_up"]:
        print("!! flagged: not every component was running (see setup.missing)", file=sys.stderr)
    if len(scored) < len(rows):
        print(f"!! {len(rows) - len(scored)} test mails without a verdict", file=sys.stderr)


if __name__ == "__main__":
    main()
