"""The monitor service as a process on a stack of its own (Kafka, MLflow, monitor).

The reference data is made here: a snapshot of the corpus's ``-1`` groups, a
feature pipeline and a parity sample logged to an MLflow run, registered as
version 1 of ``spam-detector`` (alias production). Then EmailClassified records
carrying the handcrafted features of held-out ``-1`` messages (same period: no
DriftDetected) and of ``-2`` messages (the later collection: exactly one
DriftDetected), labels for live quality, and bad records.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import mlflow
import numpy as np
import pytest
from spamops_cli import stack as local_stack
from spamops_cli.corpus import iter_corpus
from spamops_features.mail import parse_email
from spamops_features.pipeline import FeaturePipeline
from spamops_features.snapshot import build_snapshot
from spamops_features.snapshot_io import load_snapshot
from spamops_runtime.kafka import H_ERROR_REASON
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import DriftDetected, EmailClassified, EmailLabeled

from tests.integration.conftest import StackFactory
from tests.integration.helpers import events_on, send

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MODEL = "spam-detector"
WINDOW = 300
MONITOR_ENV = {
    "SPAMOPS_MONITOR_WINDOW_SIZE": str(WINDOW),
    "SPAMOPS_MONITOR_WINDOW_MAX_AGE_S": "0",
    "SPAMOPS_MONITOR_QUALITY_MIN_LABELS": "100000",  # labels here only feed the gauges
    "SPAMOPS_MONITOR_PROFILE_RETRY_S": "2",
}


@pytest.fixture(scope="module")
def monitor_stack(stack_factory: StackFactory) -> Iterator[PlatformSettings]:
    with pytest.MonkeyPatch.context() as patch:
        for key, value in MONITOR_ENV.items():
            patch.setenv(key, value)
        settings = stack_factory(components=["kafka", "mlflow", "monitor"], name="monitor-stack")
    yield settings
    local_stack.down(settings)


def probabilities(labels: list[str], seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.array([rng.beta(8, 2) if y == "spam" else rng.beta(2, 8) for y in labels])


def register_reference(
    settings: PlatformSettings,
) -> tuple[FeaturePipeline, list[tuple[str, bytes]]]:
    """Snapshot of the -1 groups + an MLflow run + version 1 (production); returns the
    pipeline and the held-out (validation + test) messages as (label, raw)."""
    groups = {"easy-ham-1", "hard-ham-1", "spam-1"}
    messages = list(iter_corpus(settings.corpus_cache_dir, groups))
    ready = build_snapshot(messages, settings.state_dir / "data" / "datasets")
    snapshot = load_snapshot(ready.uri, ready.sha256)
    train = snapshot[snapshot["split"] == "train"]
    held_out = snapshot[snapshot["split"] != "train"]
    pipeline = FeaturePipeline.fit([parse_email(bytes(r)) for r in train["raw"][:300]])
    test = snapshot[snapshot["split"] == "test"]
    x = pipeline.transform([parse_email(bytes(r)) for r in test["raw"]])
    p = probabilities(list(test["label"]), seed=0)
    mlflow.set_tracking_uri(settings.mlflow_uri)
    client = mlflow.MlflowClient(settings.mlflow_uri)
    experiment = client.create_experiment("monitor-it")
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(experiment_id=experiment) as run:
        mlflow.log_params({"dataset_uri": ready.uri, "dataset_sha256": ready.sha256})
        mlflow.log_artifacts(str(pipeline.save(Path(tmp) / "pipe")), "feature_pipeline")
        np.savez_compressed(Path(tmp) / "test_sample.npz", x=x, p=p)
        mlflow.log_artifact(str(Path(tmp) / "test_sample.npz"), "parity")
        mlflow.log_dict({"note": "no real model"}, "model/MLmodel.json")
    run_id = run.info.run_id
    client.create_registered_model(MODEL)
    mv = client.create_model_version(
        MODEL, f"runs:/{run_id}/model", run_id=run_id, tags={"spamops.run_id": run_id}
    )
    client.set_registered_model_alias(MODEL, "production", str(mv.version))
    # Shuffled: the snapshot is in group order, and a window of one group alone (all ham,
    # say) is a real shift of the class mix, not the same period's traffic.
    items = list(zip(held_out["label"], map(bytes, held_out["raw"]), strict=True))
    order = np.random.default_rng(0).permutation(len(items))
    return pipeline, [items[i] for i in order]


def verdicts(
    pipeline: FeaturePipeline, items: list[tuple[str, bytes]], prefix: str, seed: int
) -> list[tuple[str, bytes]]:
    p = probabilities([label for label, _ in items], seed)
    out = []
    for i, (_, raw) in enumerate(items):
        key = f"{prefix}-{i}"
        event = EmailClassified(
            producer="it", message_key=key, verdict="spam" if p[i] >= 0.5 else "ham",
            spam_probability=float(p[i]), threshold=0.5, model_name=MODEL, model_version=1,
            environment="production", features=pipeline.handcrafted(parse_email(raw)),
            latency_ms=3.0,
        )  # fmt: skip
        out.append((key, event.to_bytes()))
    return out


def metric(settings: PlatformSettings, name: str, **labels: str) -> float:
    """One sample of the monitor's /metrics (0 when absent)."""
    port = settings.service_ports["monitor"]
    text = httpx.get(f"http://{settings.host}:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        match = re.fullmatch(rf"{name}\{{(.*)\}} (\S+)", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            return float(match.group(2))
    return 0.0


def wait_for(check: object, what: str, timeout_s: float = 90) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)


def drift_events(settings: PlatformSettings) -> list[DriftDetected]:
    async def read() -> list[DriftDetected]:
        from spamops_runtime.replay import read_topic
        from spamops_schemas import decode_event

        found = []
        async for record in read_topic(settings, "monitoring.drift", idle_timeout_s=1.0):
            found.append(decode_event(record.value, DriftDetected))
        return found

    return asyncio.run(read())


def test_no_alarm_on_the_same_period_one_alarm_on_the_shift_quality_and_bad_input(
    monitor_stack: PlatformSettings,
) -> None:
    settings = monitor_stack
    started = time.monotonic()
    pipeline, held_out = register_reference(settings)
    windows = "spamops_monitor_windows_total"

    # Same period as the training data: held-out -1 messages, three windows, no alarm.
    same = verdicts(pipeline, held_out[: 3 * WINDOW], "same", seed=1)
    asyncio.run(send(settings, "emails.verdicts", same))
    wait_for(lambda: metric(settings, windows, result="no_drift") >= 3, "3 checked windows")
    assert metric(settings, windows, result="drift") == 0
    assert drift_events(settings) == []

    # The later collection (-2 groups): two drifted windows, one DriftDetected (cooldown).
    later = [
        (m.label, m.raw) for m in iter_corpus(settings.corpus_cache_dir, {"easy-ham-2", "spam-2"})
    ]
    rng = np.random.default_rng(0)
    picked = [later[i] for i in rng.choice(len(later), 2 * WINDOW, replace=False)]
    asyncio.run(send(settings, "emails.verdicts", verdicts(pipeline, picked, "later", seed=2)))
    wait_for(lambda: metric(settings, windows, result="drift") >= 2, "2 drifted windows")
    [event] = drift_events(settings)
    assert (event.model_name, event.model_version, event.kind) == (MODEL, 1, "data")
    assert event.window.size == WINDOW and event.drift_share >= 0.3
    assert all(f.statistic == "psi" and f.score > 0.1 for f in event.drifted_features)
    report = Path(event.report_uri.removeprefix("file://"))
    assert report.is_file() and report.with_suffix(".json").is_file()
    assert metric(settings, "spamops_monitor_suppressed_total", kind="data") >= 1

    # Labels -> live quality gauges per version and live_quality.json.
    labels = [
        (key, EmailLabeled(producer="it", message_key=key, label=label).to_bytes())
        for (key, _), (label, _) in zip(same[:200], held_out[:200], strict=True)
    ]
    asyncio.run(send(settings, "emails.feedback", labels))
    wait_for(
        lambda: metric(settings, "spamops_monitor_live_labels", model_version="1") >= 200,
        "200 joined labels",
    )
    f1 = metric(settings, "spamops_monitor_live_quality", model_version="1", metric="f1")
    assert 0.5 < f1 <= 1
    status = settings.state_dir / "data" / "monitor" / "live_quality.json"
    wait_for(status.is_file, "live_quality.json")

    # Bad input: an unparsable verdict is dead-lettered; an unknown version does no harm.
    unknown = verdicts(pipeline, held_out[:5], "unknown", seed=3)
    unknown = [(k, v.replace(b'"model_version":1', b'"model_version":99')) for k, v in unknown]
    asyncio.run(send(settings, "emails.verdicts", [("bad", b"{not json"), *unknown]))
    [(_, headers)] = asyncio.run(
        events_on(settings, "emails.verdicts.dlq", lambda item: True, wait_s=60)
    )
    assert headers[H_ERROR_REASON]
    wait_for(
        lambda: metric(settings, "spamops_monitor_verdicts_total", model_version="99") >= 5,
        "unknown-version verdicts read",
    )
    assert metric(settings, "spamops_service_ready", service="monitor") == 1
    assert time.monotonic() - started < 150


def test_killed_mid_window_the_windows_cover_every_verdict_exactly_once(
    monitor_stack: PlatformSettings, monkeypatch: pytest.MonkeyPatch
) -> None:
    """kill -9 with a window half full: the restart replays it, counts nothing twice.

    Verdicts of a version of their own (2): one full window, half of the next, kill,
    restart. The second window then closes on exactly the 600th verdict: one earlier
    would mean a replayed verdict counted twice, none would mean one lost.
    """
    from spamops_cli.stack.paths import StackPaths
    from spamops_cli.stack.process import kill_group, read_pid, wait_group_gone

    settings = monitor_stack
    client = mlflow.MlflowClient(settings.mlflow_uri)
    v1 = client.get_model_version(MODEL, "1")
    client.create_model_version(
        MODEL, str(v1.source), run_id=v1.run_id, tags={"spamops.run_id": v1.run_id}
    )
    pipeline, held_out = register_reference_pipeline(settings)
    items = verdicts(pipeline, (held_out * 2)[: 2 * WINDOW], "kill", seed=4)
    items = [(k, v.replace(b'"model_version":1', b'"model_version":2')) for k, v in items]
    windows = "spamops_monitor_windows_total"

    asyncio.run(send(settings, "emails.verdicts", items[: WINDOW + WINDOW // 2]))
    wait_for(lambda: metric(settings, windows, model_version="2") >= 1, "the first window")
    wait_for(
        lambda: (
            metric(settings, "spamops_monitor_verdicts_total", model_version="2")
            >= WINDOW + WINDOW // 2
        ),
        "half of the second window read",
    )
    time.sleep(2)  # its batch committed (up to the open window's first verdicts)
    pid = read_pid(StackPaths.from_settings(settings).pid_file("monitor"))
    assert pid is not None
    kill_group(pid)
    assert wait_group_gone(pid, 10)
    for key, value in MONITOR_ENV.items():
        monkeypatch.setenv(key, value)
    local_stack.up(settings, components=["monitor"])

    rest = items[WINDOW + WINDOW // 2 :]
    asyncio.run(send(settings, "emails.verdicts", rest[:-1]))
    wait_for(
        lambda: (
            metric(settings, "spamops_monitor_verdicts_total", model_version="2") >= len(rest) - 1
        ),
        "the rest but one read",
    )
    time.sleep(3)
    assert metric(settings, windows, model_version="2") == 0, "a verdict was counted twice"
    asyncio.run(send(settings, "emails.verdicts", rest[-1:]))
    wait_for(
        lambda: metric(settings, windows, model_version="2") >= 1,
        "the second window, closed by the 600th verdict (none lost)",
    )
    assert metric(settings, windows, model_version="2") == 1


def register_reference_pipeline(
    settings: PlatformSettings,
) -> tuple[FeaturePipeline, list[tuple[str, bytes]]]:
    """Version 1's feature pipeline (from MLflow) and held-out -1 messages, for more verdicts."""
    client = mlflow.MlflowClient(settings.mlflow_uri)
    run_id = client.get_model_version(MODEL, "1").run_id
    with tempfile.TemporaryDirectory() as tmp:
        local = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path="feature_pipeline", dst_path=tmp,
            tracking_uri=settings.mlflow_uri,
        )  # fmt: skip
        pipeline = FeaturePipeline.load(Path(local))
    messages = list(iter_corpus(settings.corpus_cache_dir, {"easy-ham-1", "spam-1"}))
    return pipeline, [(m.label, m.raw) for m in messages[:WINDOW]]
