"""The lifecycle on the real stack: training, registry, ONNX, Triton, promotion, the stream.

trainer (small search), registry-bridge and inference run as processes; one
real training gives version 1, a second ModelTrained of the same run gives
version 2, so promotion and rollback have two versions to move between, and
the inference stream classifies with whatever production and staging are.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import mlflow
import numpy as np
import pyarrow.parquet as pq
import pytest
from sklearn.metrics import f1_score, recall_score
from spamops_cli import stack as local_stack
from spamops_registry_bridge.onnx_export import onnx_spam_probability
from spamops_runtime.kafka import H_ERROR_REASON
from spamops_runtime.replay import read_topic
from spamops_runtime.settings import PlatformSettings
from spamops_runtime.triton_repo import TritonRepositoryClient
from spamops_schemas import (
    ClassificationMetrics,
    DatasetReady,
    EmailClassified,
    Event,
    ModelPromoted,
    ModelRegistered,
    ModelRejected,
    ModelTrained,
    PromotionApproved,
)
from spamops_schemas.registry import MODEL_FILE_ARTIFACT, RUN_TAG_MODEL_SHA256

from tests.integration.conftest import StackFactory
from tests.integration.helpers import events_on, sample_email, send, spamops

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ENV = {
    "SPAMOPS_TRAINER_NUM_SAMPLES": "2",
    "SPAMOPS_TRAINER_MAX_ESTIMATORS": "50",
    "SPAMOPS_TRAINER_GRACE_REPORTS": "1",
    "SPAMOPS_TRAINER_USE_REPUTATION": "false",
    # A tiny training must pass; the gate itself is tested with a bad model below.
    "SPAMOPS_REGISTRY_BRIDGE_MIN_F1": "0.6",
    "SPAMOPS_REGISTRY_BRIDGE_MAX_FALSE_POSITIVE_RATE": "0.2",
    "SPAMOPS_REGISTRY_BRIDGE_CHAMPION_MARGIN": "1.0",
    "SPAMOPS_REGISTRY_BRIDGE_APPROVERS": '["alice", "bob"]',
    "SPAMOPS_INFERENCE_MAX_MESSAGE_BYTES": "200000",
}
MODEL = "spam-detector"


@pytest.fixture(scope="module")
def bridge_stack(stack_factory: StackFactory) -> Iterator[PlatformSettings]:
    """Kafka, Redis, MLflow, Triton, trainer and registry-bridge."""
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
            name="lifecycle-stack",
        )
    yield settings
    local_stack.down(settings)


def wait_for(settings: PlatformSettings, topic: str, cls: type, **fields: object) -> list:  # type: ignore[type-arg]
    def match(e: object) -> bool:
        return isinstance(e, cls) and all(getattr(e, k) == v for k, v in fields.items())

    return [e for e, _ in asyncio.run(events_on(settings, topic, match))]


def triton_probabilities(settings: PlatformSettings, name: str, version: int, x: np.ndarray):  # type: ignore[no-untyped-def]
    import tritonclient.http as triton_http

    client = triton_http.InferenceServerClient(settings.triton_http)
    try:
        tensor = triton_http.InferInput("input", list(x.shape), "FP32")
        tensor.set_data_from_numpy(x.astype(np.float32))
        result = client.infer(name, [tensor], model_version=str(version))
        return np.asarray(result.as_numpy("spam_probability"))[:, 0]
    finally:
        client.close()


def parity_rows(settings: PlatformSettings, run_id: str, tmp_path) -> np.ndarray:  # type: ignore[no-untyped-def]
    path = mlflow.artifacts.download_artifacts(
        run_id=run_id, artifact_path="parity/test_sample.npz", dst_path=str(tmp_path),
        tracking_uri=settings.mlflow_uri,
    )  # fmt: skip
    with np.load(path) as data:
        return np.asarray(data["x"][:16], np.float32)


@pytest.fixture(scope="module")
def registered_v1(bridge_stack: PlatformSettings) -> tuple[ModelTrained, ModelRegistered, float]:
    began = time.monotonic()
    result = spamops(
        bridge_stack, "ingest", "--groups", "easy-ham-2,spam-1", "--wait-trained",
        "--timeout-minutes", "10",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [ready] = wait_for(bridge_stack, "datasets.ready", DatasetReady)
    [trained] = wait_for(bridge_stack, "models.trained", ModelTrained, causation_id=ready.event_id)
    trained_at = time.monotonic()
    [registered] = wait_for(
        bridge_stack, "models.registered", ModelRegistered, causation_id=trained.event_id
    )
    print(f"\ningest->trained {trained_at - began:.1f}s, trained->registered observed "
          f"{time.monotonic() - trained_at:.1f}s")  # fmt: skip
    return trained, registered, time.monotonic() - trained_at


def dead_letter_reason(settings: PlatformSettings, topic: str, event: Event) -> str:
    """The x-error-reason of ``event``'s one dead letter on ``<topic>.dlq``."""

    def is_it(e: object) -> bool:
        return isinstance(e, type(event)) and e.event_id == event.event_id

    [(_, headers)] = asyncio.run(events_on(settings, f"{topic}.dlq", is_it))
    return headers[H_ERROR_REASON]


def test_a_trained_model_is_registered_exported_and_served_as_staging(
    bridge_stack: PlatformSettings,
    registered_v1: tuple[ModelTrained, ModelRegistered, float],
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    trained, registered, _ = registered_v1
    assert registered.version == 1
    assert registered.run_id == trained.run_id
    assert registered.triton_model == f"{MODEL}-staging"
    assert registered.parity_max_abs_diff <= 1e-4
    assert registered.correlation_id == trained.correlation_id
    assert registered.feature_spec_version == trained.feature_spec_version

    client = mlflow.MlflowClient(bridge_stack.mlflow_uri)
    version = client.get_model_version_by_alias(MODEL, "staging")
    assert int(version.version) == 1
    assert version.tags["spamops.run_id"] == trained.run_id
    assert version.tags["spamops.dataset_id"] == trained.dataset_id
    assert version.tags["spamops.correlation_id"] == trained.correlation_id
    assert version.tags["spamops.feature_spec_version"] == trained.feature_spec_version
    assert version.tags["spamops.onnx_sha256"] == registered.onnx_sha256

    onnx_path = mlflow.artifacts.download_artifacts(
        run_id=trained.run_id, artifact_path="onnx/v1/model.onnx", dst_path=str(tmp_path),
        tracking_uri=bridge_stack.mlflow_uri,
    )  # fmt: skip
    onnx_bytes = open(onnx_path, "rb").read()  # noqa: SIM115
    assert len(onnx_bytes) < 5 * 2**20
    x = parity_rows(bridge_stack, trained.run_id, tmp_path)
    served = triton_probabilities(bridge_stack, f"{MODEL}-staging", 1, x)
    np.testing.assert_allclose(served, onnx_spam_probability(onnx_bytes, x), atol=1e-5)


def test_the_held_out_split_through_the_stream_scores_as_offline(
    bridge_stack: PlatformSettings, registered_v1: tuple[ModelTrained, ModelRegistered, float]
) -> None:
    """Issue 15: the test split, published raw to emails.inbox, scores what training reported.

    Serving and training compute the same inputs for the same mail, so the
    verdicts of version 1 on its own test split give its offline figures.
    """
    trained, _, _ = registered_v1
    path = bridge_stack.state_dir / "data" / "datasets" / trained.dataset_id / "snapshot.parquet"
    table = pq.read_table(path, columns=["source_id", "raw", "label", "split"]).to_pylist()
    run = uuid.uuid4().hex[:6]
    held = {f"q{run}-{r['source_id']}": r for r in table if r["split"] == "test"}
    assert len(held) >= 100
    asyncio.run(
        send(
            bridge_stack,
            "emails.inbox",
            [(k, bytes(r["raw"])) for k, r in held.items()],
            headers={"x-environment": "staging"},
        )
    )
    got = verdicts_for(bridge_stack, set(held))
    assert set(got) == set(held)
    assert {(v[0].environment, v[0].model_version) for v in got.values()} == {("staging", 1)}
    keys = sorted(held)
    truth = [held[k]["label"] == "spam" for k in keys]
    said = [got[k][0].verdict == "spam" for k in keys]
    stream_f1 = float(f1_score(truth, said))
    print(
        f"\nheld-out {len(keys)} mails: stream F1 {stream_f1:.4f}, offline {trained.metrics.f1:.4f}"
    )
    assert abs(stream_f1 - trained.metrics.f1) <= 0.005
    assert abs(float(recall_score(truth, said)) - trained.metrics.recall) <= 0.005


def test_replaying_model_trained_registers_nothing_new(
    bridge_stack: PlatformSettings, registered_v1: tuple[ModelTrained, ModelRegistered, float]
) -> None:
    trained, _, _ = registered_v1
    asyncio.run(send(bridge_stack, "models.trained", [(trained.run_id, trained.to_bytes())]))
    time.sleep(10)  # the bridge handles it (nothing to do) within a second or two
    client = mlflow.MlflowClient(bridge_stack.mlflow_uri)
    assert [int(v.version) for v in client.search_model_versions(f"name = '{MODEL}'")] == [1]
    assert len(wait_for(bridge_stack, "models.registered", ModelRegistered)) == 1


def test_only_data_of_this_experiment_crosses_the_registry(
    bridge_stack: PlatformSettings,
    registered_v1: tuple[ModelTrained, ModelRegistered, float],
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    """A run of another experiment, or a model file changed after training: dead letters."""
    trained, _, _ = registered_v1
    client = mlflow.MlflowClient(bridge_stack.mlflow_uri)
    elsewhere = client.create_run(client.create_experiment(f"elsewhere-{uuid.uuid4().hex[:8]}"))
    foreign = trained.model_copy(update={
        "event_id": uuid.uuid4(), "run_id": elsewhere.info.run_id,
        "model_uri": f"runs:/{elsewhere.info.run_id}/model",
    })  # fmt: skip
    # The trained run's model file, overwritten with other bytes (its recorded sha256 stays).
    tampered_run = client.create_run(
        client.get_run(trained.run_id).info.experiment_id, tags={
            RUN_TAG_MODEL_SHA256: client.get_run(trained.run_id).data.tags[RUN_TAG_MODEL_SHA256]
        },
    )  # fmt: skip
    fake = tmp_path / Path(MODEL_FILE_ARTIFACT).name
    fake.write_bytes(b"not the trained booster")
    client.log_artifact(tampered_run.info.run_id, str(fake), str(Path(MODEL_FILE_ARTIFACT).parent))
    tampered = trained.model_copy(update={
        "event_id": uuid.uuid4(), "run_id": tampered_run.info.run_id,
        "model_uri": f"runs:/{tampered_run.info.run_id}/model",
    })  # fmt: skip
    events = [foreign, tampered]
    asyncio.run(send(bridge_stack, "models.trained", [(e.run_id, e.to_bytes()) for e in events]))
    reasons = ("model-outside-experiment", "model-file-mismatch")
    for event, reason in zip(events, reasons, strict=True):
        assert dead_letter_reason(bridge_stack, "models.trained", event) == reason
    for run in (elsewhere, tampered_run):  # nothing registered from either
        assert not client.search_model_versions(
            f"name = '{MODEL}' and run_id = '{run.info.run_id}'"
        )


def test_a_model_under_the_gate_is_rejected_and_not_registered(
    bridge_stack: PlatformSettings, registered_v1: tuple[ModelTrained, ModelRegistered, float]
) -> None:
    trained, _, _ = registered_v1
    weak = trained.model_copy(
        update={
            "event_id": uuid.uuid4(),
            "metrics": ClassificationMetrics(
                f1=0.4, precision=0.5, recall=0.33, roc_auc=0.7, false_positive_rate=0.3
            ),
        }
    )
    asyncio.run(send(bridge_stack, "models.trained", [(weak.run_id, weak.to_bytes())]))
    [rejected] = wait_for(
        bridge_stack, "models.rejected", ModelRejected, causation_id=weak.event_id
    )
    gates = {f.gate: f for f in rejected.failures}
    assert set(gates) == {"min_f1", "max_false_positive_rate"}
    assert gates["min_f1"].actual == pytest.approx(0.4)
    assert gates["min_f1"].threshold == pytest.approx(0.6)
    client = mlflow.MlflowClient(bridge_stack.mlflow_uri)
    assert len(client.search_model_versions(f"name = '{MODEL}'")) == 1


def test_promotion_rollback_and_refused_approvals(
    bridge_stack: PlatformSettings,
    registered_v1: tuple[ModelTrained, ModelRegistered, float],
    tmp_path,  # type: ignore[no-untyped-def]
) -> None:
    trained, _, _ = registered_v1
    x = parity_rows(bridge_stack, trained.run_id, tmp_path)
    production = f"{MODEL}-production"

    # v1 -> production, approved with the CLI as a reviewer would.
    began = time.monotonic()
    result = spamops(bridge_stack, "approve", MODEL, "1", "--by", "alice", "--reason", "first")
    assert result.returncode == 0, result.stdout + result.stderr
    [promoted] = wait_for(bridge_stack, "models.promoted", ModelPromoted, version=1)
    print(f"\napproval->promoted observed {time.monotonic() - began:.1f}s")
    assert promoted.previous_version is None
    assert promoted.triton_model == production
    assert triton_probabilities(bridge_stack, production, 1, x).shape == (16,)

    # A second version of the same run (a retraining would do the same).
    second = trained.model_copy(update={"event_id": uuid.uuid4()})
    asyncio.run(send(bridge_stack, "models.trained", [(second.run_id, second.to_bytes())]))
    [registered] = wait_for(
        bridge_stack, "models.registered", ModelRegistered, causation_id=second.event_id
    )
    assert registered.version == 2

    approve_v2 = PromotionApproved(model_name=MODEL, version=2, approved_by="bob")
    asyncio.run(send(bridge_stack, "models.promotion-approved", [(MODEL, approve_v2.to_bytes())]))
    [promoted] = wait_for(
        bridge_stack, "models.promoted", ModelPromoted, causation_id=approve_v2.event_id
    )
    assert (promoted.version, promoted.previous_version) == (2, 1)

    # Rollback: approve the earlier version again.
    rollback = PromotionApproved(model_name=MODEL, version=1, approved_by="alice")
    asyncio.run(send(bridge_stack, "models.promotion-approved", [(MODEL, rollback.to_bytes())]))
    [promoted] = wait_for(
        bridge_stack, "models.promoted", ModelPromoted, causation_id=rollback.event_id
    )
    assert (promoted.version, promoted.previous_version) == (1, 2)
    client = mlflow.MlflowClient(bridge_stack.mlflow_uri)
    assert int(client.get_model_version_by_alias(MODEL, "production").version) == 1
    with TritonRepositoryClient(bridge_stack.triton_http) as repo:
        assert repo.is_ready(production, 1)

    # Refused: an unlisted approver, an unknown version, and the v2 approval captured
    # and re-sent byte for byte (a replay would roll production forward again). Nothing moves.
    refused = [
        PromotionApproved(model_name=MODEL, version=2, approved_by="mallory"),
        PromotionApproved(model_name=MODEL, version=99, approved_by="alice"),
        approve_v2,
    ]
    asyncio.run(
        send(bridge_stack, "models.promotion-approved", [(MODEL, e.to_bytes()) for e in refused])
    )
    reasons = ("approver-not-allowed", "unknown-version", "approval-replayed")
    for approval, reason in zip(refused, reasons, strict=True):
        assert dead_letter_reason(bridge_stack, "models.promotion-approved", approval) == reason
    assert int(client.get_model_version_by_alias(MODEL, "production").version) == 1


# ------------------------------------------------------------------ inference
def verdicts_for(settings: PlatformSettings, keys: set[str]) -> dict[str, list[EmailClassified]]:
    def match(e: object) -> bool:
        return isinstance(e, EmailClassified) and e.message_key in keys

    found: dict[str, list[EmailClassified]] = {}
    deadline = time.monotonic() + 120
    while True:
        found = {}
        for event, _ in asyncio.run(events_on(settings, "emails.verdicts", match)):
            found.setdefault(event.message_key, []).append(event)
        if set(found) == keys or time.monotonic() > deadline:
            return found
        time.sleep(1)


def test_the_stream_classifies_with_production_and_staging(
    bridge_stack: PlatformSettings,
    registered_v1: tuple[ModelTrained, ModelRegistered, float],
) -> None:
    client = mlflow.MlflowClient(bridge_stack.mlflow_uri)
    production = int(client.get_model_version_by_alias(MODEL, "production").version)
    staging = int(client.get_model_version_by_alias(MODEL, "staging").version)
    mails = {f"p-{i}": sample_email(i, spam=i % 2 == 0) for i in range(20)}
    asyncio.run(send(bridge_stack, "emails.inbox", list(mails.items())))
    staged = {"s-1": sample_email(99, spam=True)}
    asyncio.run(
        send(
            bridge_stack, "emails.inbox", list(staged.items()), headers={"x-environment": "staging"}
        )
    )
    got = verdicts_for(bridge_stack, set(mails) | set(staged))
    assert set(got) == set(mails) | set(staged)
    for key in mails:
        [verdict] = got[key]
        assert (verdict.environment, verdict.model_version) == ("production", production)
        assert verdict.features and verdict.latency_ms >= 0
    [staged_verdict] = got["s-1"]
    assert (staged_verdict.environment, staged_verdict.model_version) == ("staging", staging)
    spam_keys = [k for k in mails if int(k.split("-")[1]) % 2 == 0]
    flagged = sum(got[k][0].verdict == "spam" for k in spam_keys)
    assert flagged >= len(spam_keys) // 2  # a tiny model, but it sees obvious spam


def test_bad_inbox_records_are_dead_lettered_and_the_stream_goes_on(
    bridge_stack: PlatformSettings,
    registered_v1: tuple[ModelTrained, ModelRegistered, float],
) -> None:
    bad = {"bad-empty": b"", "bad-big": sample_email(1, True) + b"x" * 300_000}
    good = {"after-bad": sample_email(2, False)}
    asyncio.run(send(bridge_stack, "emails.inbox", [*bad.items(), *good.items()]))
    asyncio.run(
        send(bridge_stack, "emails.inbox", [("bad-env", sample_email(3, False))],
             headers={"x-environment": "canary"})
    )  # fmt: skip
    # Headers any client may write (issue 13: each of these was skipped and committed):
    # the mail itself is fine, so each gets a verdict, between two normal ones.
    odd_headers: dict[str, list[tuple[str, bytes | None]]] = {
        "hdr-not-utf8": [("x-note", b"\xff\xfe bad")],
        "hdr-null": [("x-null", None)],
        "hdr-json-content-type": [("content-type", b"application/json")],
        "hdr-text-content-type-8bit": [("content-type", b"text/plain")],
        "hdr-reply-to": [("reply_to", b"emails.verdicts")],
    }
    asyncio.run(send_with_raw_headers(bridge_stack, odd_headers))
    reasons: dict[str, str] = {}
    deadline = time.monotonic() + 120
    while len(reasons) < 3 and time.monotonic() < deadline:
        time.sleep(1)
        reasons = dead_letter_reasons(bridge_stack)
    assert reasons.get("bad-empty") == "empty"
    assert reasons.get("bad-big") == "too-large"
    assert reasons.get("bad-env") == "bad-environment"
    expected = {*good, *odd_headers, "hdr-before", "hdr-after"}
    assert set(verdicts_for(bridge_stack, expected)) == expected
    assert not set(odd_headers) & set(reasons)


async def send_with_raw_headers(
    settings: PlatformSettings, odd: dict[str, list[tuple[str, bytes | None]]]
) -> None:
    """Each key's mail (8-bit body) with its raw headers, between two normal records."""
    from aiokafka import AIOKafkaProducer

    producer = AIOKafkaProducer(bootstrap_servers=settings.kafka_bootstrap, acks="all")
    await producer.start()
    try:
        mail_8bit = sample_email(7, False).replace(b"\r\n\r\n", b"\r\n\r\nK\xf6ln \xfc\xdf ", 1)
        records = [("hdr-before", []), *odd.items(), ("hdr-after", [])]
        for key, headers in records:
            await producer.send_and_wait(
                "emails.inbox", mail_8bit, key=key.encode(), headers=headers, partition=0
            )
    finally:
        await producer.stop()


def dead_letter_reasons(settings: PlatformSettings) -> dict[str, str]:
    async def collect() -> dict[str, str]:
        out: dict[str, str] = {}
        async for record in read_topic(settings, "emails.inbox.dlq", idle_timeout_s=0.5):
            if record.key:
                out[record.key] = record.headers.get(H_ERROR_REASON, "")
        return out

    return asyncio.run(collect())


def test_a_promotion_while_the_stream_flows_loses_and_mixes_nothing(
    bridge_stack: PlatformSettings,
    registered_v1: tuple[ModelTrained, ModelRegistered, float],
) -> None:
    client = mlflow.MlflowClient(bridge_stack.mlflow_uri)
    before = int(client.get_model_version_by_alias(MODEL, "production").version)
    target = 2 if before == 1 else 1
    mails = {f"flow-{i}": sample_email(i, spam=i % 3 == 0) for i in range(400)}
    items = list(mails.items())
    approval = PromotionApproved(model_name=MODEL, version=target, approved_by="alice")

    async def flow() -> None:
        for start in range(0, len(items), 20):
            await send(bridge_stack, "emails.inbox", items[start : start + 20])
            if start == 100:
                await send(
                    bridge_stack, "models.promotion-approved", [(MODEL, approval.to_bytes())]
                )
            await asyncio.sleep(0.05)

    asyncio.run(flow())
    wait_for(bridge_stack, "models.promoted", ModelPromoted, causation_id=approval.event_id)
    got = verdicts_for(bridge_stack, set(mails))
    assert set(got) == set(mails)  # none lost
    assert all(len(v) == 1 for v in got.values())  # none duplicated
    # Per partition, in offset order, the version switches once and never back.
    by_partition: dict[int, list[tuple[int, int]]] = {}
    for [verdict] in got.values():
        assert verdict.model_version in (before, target)
        assert verdict.inbox_partition is not None and verdict.inbox_offset is not None
        by_partition.setdefault(verdict.inbox_partition, []).append(
            (verdict.inbox_offset, verdict.model_version)
        )
    for rows in by_partition.values():
        versions = [v for _, v in sorted(rows)]
        switches = sum(a != b for a, b in itertools.pairwise(versions))
        assert switches <= 1


# ------------------------------------------------------------------ kcat
KCAT = shutil.which("kcat")


@pytest.mark.skipif(KCAT is None, reason="kcat is installed by scripts/bootstrap.sh")
def test_an_outside_client_kcat_drives_the_platform(
    bridge_stack: PlatformSettings,
    registered_v1: tuple[ModelTrained, ModelRegistered, float],
    tmp_path: Path,
) -> None:
    """kcat, not the project's code, publishes an .eml and an approval and reads the results."""
    assert KCAT is not None
    broker = bridge_stack.kafka_bootstrap
    eml = tmp_path / "mail.eml"
    eml.write_bytes(sample_email(7, spam=True))
    key = f"kcat-{uuid.uuid4().hex[:8]}"
    trace_id = uuid.uuid4().hex
    traceparent = f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01"
    subprocess.run(
        [KCAT, "-b", broker, "-P", "-t", "emails.inbox", "-k", key, "-H",
         f"traceparent={traceparent}", str(eml)],
        check=True, timeout=60,
    )  # fmt: skip
    verdict_line = ""
    deadline = time.monotonic() + 120
    while key not in verdict_line and time.monotonic() < deadline:
        read = subprocess.run(
            [KCAT, "-b", broker, "-C", "-t", "emails.verdicts", "-e", "-q",
             "-f", "%k\t%h\t%s\n"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        verdict_line = next((ln for ln in read.stdout.splitlines() if ln.startswith(key)), "")
        time.sleep(1)
    _, headers, value = verdict_line.split("\t", 2)
    verdict = json.loads(value)
    assert verdict["message_key"] == key
    assert verdict["verdict"] in ("spam", "ham")
    assert f"traceparent=00-{trace_id}-" in headers  # the verdict continues the inbox trace

    # A reviewer's approval as plain JSON: only the payload, the envelope gets defaults.
    client = mlflow.MlflowClient(bridge_stack.mlflow_uri)
    before = int(client.get_model_version_by_alias(MODEL, "production").version)
    target = 2 if before == 1 else 1
    approval = json.dumps({"model_name": MODEL, "version": target, "approved_by": "alice"})
    subprocess.run(
        [KCAT, "-b", broker, "-P", "-t", "models.promotion-approved", "-k", MODEL],
        input=approval.encode(), check=True, timeout=60,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if int(client.get_model_version_by_alias(MODEL, "production").version) == target:
            break
        time.sleep(1)
    assert int(client.get_model_version_by_alias(MODEL, "production").version) == target


def test_status_shows_models_triton_lag_and_last_events(
    bridge_stack: PlatformSettings,
    registered_v1: tuple[ModelTrained, ModelRegistered, float],
) -> None:
    result = spamops(bridge_stack, "status", "--json")
    assert result.returncode == 0, result.stderr
    view = json.loads(result.stdout)
    assert {"staging", "production"} <= set(view["aliases"])
    assert f"{MODEL}-production v{view['aliases']['production']}" in view["triton"]
    assert "spamops-inference" in view["lag"]
    assert "emails.inbox.dlq" in view["dead_letters"]
    assert {"DatasetReady", "ModelTrained", "ModelRegistered"} <= set(view["last_events"])
    assert not view["errors"]


def test_daily_work_commands_verdict_verdicts_models_explain(
    bridge_stack: PlatformSettings,
    registered_v1: tuple[ModelTrained, ModelRegistered, float],
) -> None:
    """`spamops verdict/verdicts/models/explain` on the real stack, as a script would use them."""
    mails = {f"daily-{i}-{uuid.uuid4().hex[:6]}": sample_email(i, spam=i == 0) for i in range(2)}
    asyncio.run(send(bridge_stack, "emails.inbox", list(mails.items())))
    got = verdicts_for(bridge_stack, set(mails))
    for key, [expected] in got.items():
        one = spamops(bridge_stack, "verdict", key, "--json")
        assert one.returncode == (1 if expected.verdict == "spam" else 0), one.stderr
        found = json.loads(one.stdout)
        assert (found["message_key"], found["verdict"]) == (key, expected.verdict)
        listed = spamops(bridge_stack, "--json", "verdicts", "--key", key, "--limit", "5")
        assert listed.returncode == 0, listed.stderr
        [line] = listed.stdout.splitlines()
        assert json.loads(line)["message_key"] == key
    missing = spamops(bridge_stack, "verdict", "no-such-key-" + uuid.uuid4().hex)
    assert missing.returncode == 3 and missing.stdout == ""
    # A label names the mail's inbox record, copied from its verdict (issue 17).
    labelled_key, [labelled_verdict] = next(iter(got.items()))
    labelled = spamops(bridge_stack, "label", labelled_key, "spam", "--by", "it", "--json")
    assert labelled.returncode == 0, labelled.stderr
    sent = json.loads(labelled.stdout)
    assert (sent["inbox_partition"], sent["inbox_offset"]) == labelled_verdict.inbox_record

    models = spamops(bridge_stack, "models", "--json")
    assert models.returncode == 0, models.stderr
    rows = {row["version"]: row for row in json.loads(models.stdout)}
    deciding = rows[got[next(iter(mails))][0].model_version]
    assert deciding["served"] and deciding["aliases"]  # it decided, so an alias serves it
    assert deciding["gate"] == "passed" and "test_f1" in deciding["metrics"]

    key = next(iter(mails))
    explained = spamops(bridge_stack, "explain", key, "--top", "5", "--json")
    assert explained.returncode == 0, explained.stderr
    why = json.loads(explained.stdout)
    assert len(why["contributions"]) == 5
    assert all(c["feature"] for c in why["contributions"])
    # The same booster and inputs as the served ONNX model: the same probability.
    assert why["recomputed_probability"] == pytest.approx(why["spam_probability"], abs=1e-3)
    margin = why["bias"] + sum(c["contribution"] for c in why["contributions"])
    assert abs(margin) > 0  # the contributions are the model's, not zeros
