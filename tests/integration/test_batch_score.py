"""``spamops score`` on a real stack (issue 18): batch verdicts = the stream's verdicts.

A small real model (trainer, registry-bridge; the tiny training of
test_lifecycle) is promoted to production; a folder of sample emails plus one
binary file is scored over Ray Data into a parquet file and published with
``--publish``. The same emails through emails.inbox get the inference service's
verdicts (ONNX on Triton): the batch probabilities must agree with them.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from spamops_cli import stack as local_stack
from spamops_features.mail import message_key, parse_email
from spamops_features.snapshot_io import snapshot_path
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import DatasetReady, EmailClassified, ModelPromoted, ModelRegistered

from tests.integration.conftest import StackFactory
from tests.integration.helpers import events_on, sample_email, send, spamops

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ENV = {  # test_lifecycle's tiny training
    "SPAMOPS_TRAINER_NUM_SAMPLES": "2",
    "SPAMOPS_TRAINER_MAX_ESTIMATORS": "50",
    "SPAMOPS_TRAINER_GRACE_REPORTS": "1",
    "SPAMOPS_TRAINER_USE_REPUTATION": "false",
    "SPAMOPS_REGISTRY_BRIDGE_MIN_F1": "0.6",
    "SPAMOPS_REGISTRY_BRIDGE_MAX_FALSE_POSITIVE_RATE": "0.2",
    "SPAMOPS_REGISTRY_BRIDGE_CHAMPION_MARGIN": "1.0",
    "SPAMOPS_REGISTRY_BRIDGE_APPROVERS": '["alice"]',
}
MODEL = "spam-detector"
SCORE_ENV = {"SPAMOPS_BATCH_NUM_CPUS": "2"}


@pytest.fixture(scope="module")
def batch_stack(stack_factory: StackFactory) -> Iterator[PlatformSettings]:
    """Kafka, Redis, MLflow, Triton, trainer, registry-bridge and inference."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        settings = stack_factory(
            components=[
                "kafka",
                "redis",
                "mlflow",
                "triton",
                "trainer",
                "registry-bridge",
                "inference",
            ],
            name="batch-stack",
        )
    yield settings
    local_stack.down(settings)


def first(settings: PlatformSettings, topic: str, cls: type, **fields: object) -> object:
    def match(e: object) -> bool:
        return isinstance(e, cls) and all(getattr(e, k) == v for k, v in fields.items())

    return asyncio.run(events_on(settings, topic, match, wait_s=900))[0][0]


@pytest.fixture(scope="module")
def production_v1(batch_stack: PlatformSettings) -> DatasetReady:
    """Version 1 trained, registered and promoted to production."""
    result = spamops(
        batch_stack, "ingest", "--groups", "easy-ham-2,spam-1", "--wait-registered",
        "--timeout-minutes", "15",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    ready = first(batch_stack, "datasets.ready", DatasetReady)
    registered = first(batch_stack, "models.registered", ModelRegistered)
    assert isinstance(registered, ModelRegistered) and registered.version == 1
    approved = spamops(batch_stack, "approve", MODEL, "1", "--by", "alice", "--reason", "batch")
    assert approved.returncode == 0, approved.stdout + approved.stderr
    first(batch_stack, "models.promoted", ModelPromoted, version=1)
    assert isinstance(ready, DatasetReady)
    return ready


def test_a_folder_is_scored_to_parquet_published_and_agrees_with_the_stream(
    batch_stack: PlatformSettings, production_v1: DatasetReady, tmp_path: Path
) -> None:
    folder = tmp_path / "mails"
    folder.mkdir()
    raws = {f"{i:02d}.eml": sample_email(i, spam=i % 2 == 0, id_prefix="batch") for i in range(20)}
    for name, raw in raws.items():
        (folder / name).write_bytes(raw)
    (folder / "zz-binary.eml").write_bytes(b"\x00\x01\x02\xff garbage" * 100)
    keys = {name: message_key(raw, parse_email(raw)) for name, raw in raws.items()}
    output = tmp_path / "verdicts.parquet"

    done = spamops(
        batch_stack, "--json", "score", str(folder), "--output", str(output), "--publish",
        env=SCORE_ENV,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)  # stdout is exactly one JSON document
    print(f"\nbatch summary: {summary}")
    assert (summary["messages"], summary["errors"]) == (21, 1)
    assert summary["spam"] + summary["ham"] == 20
    assert summary["errors_by_reason"] == {"not-email": 1}
    assert summary["model_version"] == 1 and "production" in summary["model_aliases"]
    assert summary["published"] == 20 and summary["output"] == str(output)
    assert summary["reputation"].startswith("online store")  # the stack's Redis answers
    assert summary["emails_per_s"] > 0

    table = pq.read_table(output).to_pylist()
    assert [r["source_name"] for r in table] == [*sorted(raws), "zz-binary.eml"]
    by_name = {r["source_name"]: r for r in table}
    junk = by_name["zz-binary.eml"]
    assert junk["verdict"] is None and junk["error"] == "not-email"
    assert junk["message_key"].startswith("sha256:")
    for name, key in keys.items():
        row = by_name[name]
        assert row["message_key"] == key and row["error"] is None
        assert row["model_name"] == MODEL and row["model_version"] == 1
        assert row["source_path"] == str(folder)
        assert row["verdict"] == ("spam" if row["spam_probability"] >= row["threshold"] else "ham")
    # the sample spam is obvious enough for even the tiny model
    assert sum(by_name[n]["verdict"] == "spam" for n in raws if int(n[:2]) % 2 == 0) >= 8

    # --publish: the batch verdicts are on emails.verdicts, marked as batch
    def batch_verdict(e: object) -> bool:
        return isinstance(e, EmailClassified) and e.correlation_id == summary["correlation_id"]

    published = [
        e for e, _ in asyncio.run(events_on(batch_stack, "emails.verdicts", batch_verdict))
    ]
    assert {e.message_key for e in published} == set(keys.values())
    for event in published:
        assert event.note == "batch" and event.producer == "spamops-batch"
        assert event.environment == "production" and event.features

    # The same mail through the stream (ONNX on Triton): the same probabilities.
    asyncio.run(send(batch_stack, "emails.inbox", [(keys[n], raws[n]) for n in raws]))
    stream: dict[str, EmailClassified] = {}
    deadline = time.monotonic() + 300

    def streamed(e: object) -> bool:
        return isinstance(e, EmailClassified) and e.producer == "inference"

    while set(stream) != set(keys.values()):
        assert time.monotonic() < deadline, "the stream did not classify every mail"
        found = asyncio.run(events_on(batch_stack, "emails.verdicts", streamed))
        stream = {e.message_key: e for e, _ in found if e.message_key in set(keys.values())}
    for name, key in keys.items():
        row, served = by_name[name], stream[key]
        assert served.model_version == 1
        assert abs(row["spam_probability"] - served.spam_probability) <= 1e-5, name
        assert row["verdict"] == served.verdict and row["threshold"] == served.threshold


def test_a_snapshot_is_scored_with_a_pinned_version_and_keeps_its_labels(
    batch_stack: PlatformSettings, production_v1: DatasetReady, tmp_path: Path
) -> None:
    snapshot = snapshot_path(production_v1.uri)
    output = tmp_path / "snapshot-verdicts.parquet"
    done = spamops(
        batch_stack, "--json", "score", str(snapshot), "--output", str(output), "--version", "1",
        "--reputation", "defaults", env=SCORE_ENV,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["reputation"].startswith("defaults")
    rows = pq.read_table(output).to_pylist()
    assert len(rows) == production_v1.rows == summary["messages"]
    assert summary["errors"] == 0
    correct = sum((r["verdict"] == "spam") == (r["label"] == "spam") for r in rows)
    print(f"\nsnapshot: {len(rows)} mails, accuracy {correct / len(rows):.4f}, {summary}")
    assert correct / len(rows) > 0.9
