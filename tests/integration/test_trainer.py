"""The trainer service as a process on the real stack (Kafka, Redis, MLflow; Ray in-process).

A small search (2 trials of at most 50 rounds) keeps each training under a
minute; the full-size numbers come from benchmarks/train_quality.py.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import mlflow
import pytest
import redis
from spamops_cli import stack as local_stack
from spamops_cli.stack.process import cmdline, group_members, is_alive
from spamops_features.mail import message_key, parse_email
from spamops_features.pipeline import FeaturePipeline
from spamops_runtime.kafka import H_ERROR_REASON
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import (
    DatasetReady,
    DriftDetected,
    EmailLabeled,
    ModelTrained,
)
from spamops_schemas.events import DriftWindow

from tests.integration.conftest import StackFactory
from tests.integration.helpers import events_on, send, spamops

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

SMALL_SEARCH = {
    "SPAMOPS_TRAINER_NUM_SAMPLES": "2",
    "SPAMOPS_TRAINER_MAX_ESTIMATORS": "50",
    "SPAMOPS_TRAINER_REPORT_EVERY": "25",
    "SPAMOPS_TRAINER_GRACE_REPORTS": "1",
    "SPAMOPS_TRAINER_TIME_BUDGET_S": "300",
}


@pytest.fixture(scope="module")
def trainer_stack(stack_factory: StackFactory) -> Iterator[PlatformSettings]:
    """Kafka, Redis, MLflow and the trainer (small search) in a stack of their own."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in SMALL_SEARCH.items():
            patch.setenv(key, value)
        settings = stack_factory(
            components=["kafka", "redis", "mlflow", "trainer"], name="trainer-stack"
        )
    yield settings
    local_stack.down(settings)


def trainer_alive(settings: PlatformSettings) -> bool:
    row = next(r for r in local_stack.status(settings) if r.name == "trainer")
    return row.pid is not None and is_alive(row.pid) and row.ready


def training_runs(settings: PlatformSettings, dataset_id: str) -> list[Any]:
    client = mlflow.MlflowClient(settings.mlflow_uri)
    experiment = client.get_experiment_by_name("spam-detector")
    assert experiment is not None
    return list(
        client.search_runs(
            [experiment.experiment_id],
            filter_string=f"tags.`spamops.dataset_id` = '{dataset_id}'",
        )
    )


@pytest.fixture(scope="module")
def first_training(trainer_stack: PlatformSettings) -> tuple[DatasetReady, ModelTrained]:
    """`spamops ingest --wait-trained` on two corpus groups, as a user runs it."""
    result = spamops(
        trainer_stack, "ingest", "--groups", "easy-ham-2,spam-1", "--wait-trained",
        "--timeout-minutes", "10",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "ModelTrained: run" in result.stdout
    [(ready, _)] = asyncio.run(
        events_on(trainer_stack, "datasets.ready", lambda e: isinstance(e, DatasetReady))
    )
    [(trained, _)] = asyncio.run(
        events_on(
            trainer_stack,
            "models.trained",
            lambda e: isinstance(e, ModelTrained) and e.causation_id == ready.event_id,
        )
    )
    return ready, trained


def test_dataset_ready_trains_and_logs_everything_to_mlflow(
    trainer_stack: PlatformSettings, first_training: tuple[DatasetReady, ModelTrained], tmp_path
) -> None:
    ready, trained = first_training
    assert trained.correlation_id == ready.correlation_id
    assert trained.dataset_id == ready.dataset_id
    # 500 chi²-selected terms + 24 handcrafted + 3 reputation + the linear text score.
    assert trained.n_features == 528
    assert trained.metrics.f1 > 0.8  # two tiny trials; the benchmark measures the real thing
    assert 0 < trained.threshold < 1

    client = mlflow.MlflowClient(trainer_stack.mlflow_uri)
    run = client.get_run(trained.run_id)
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset_uri"] == ready.uri
    assert run.data.params["dataset_sha256"] == ready.sha256
    for metric in ("test_f1", "test_precision", "test_recall", "test_roc_auc"):
        assert metric in run.data.metrics
    assert "test_false_positive_rate" in run.data.metrics
    assert "test_group_spam_1" in run.data.metrics  # recall per source group
    artifacts = {a.path for a in client.list_artifacts(trained.run_id)}
    assert {"feature_pipeline", "plots", "parity", "dataset"} <= artifacts
    plots = {a.path for a in client.list_artifacts(trained.run_id, "plots")}
    assert plots == {"plots/confusion_matrix.png", "plots/feature_importance.png"}
    children = client.search_runs(
        [run.info.experiment_id],
        filter_string=f"tags.`mlflow.parentRunId` = '{trained.run_id}'",
    )
    assert len(children) == 2  # one child run per Ray Tune trial
    # The logged pipeline is the one the model was trained with, and it loads as data.
    local = mlflow.artifacts.download_artifacts(
        run_id=trained.run_id, artifact_path="feature_pipeline", dst_path=str(tmp_path),
        tracking_uri=trainer_stack.mlflow_uri,
    )  # fmt: skip
    pipeline = FeaturePipeline.load(local)
    assert pipeline.spec.version == trained.feature_spec_version
    assert pipeline.spec.n_inputs == trained.n_features
    assert pipeline.coef.any()  # the linear text model is part of the saved data
    # The saved pipeline recomputes the training inputs of the test rows exactly.
    assert run.data.metrics["feature_parity_max_abs"] <= 1e-6
    assert run.data.metrics["max_val_fpr"] == 0.005
    # The reputation states of the training data reached the online store.
    kv = redis.Redis.from_url(trainer_stack.redis)
    try:
        assert int(kv.dbsize()) > 0  # type: ignore[arg-type]
    finally:
        kv.close()


def _ray_processes(pid: int) -> list[str]:
    """Command lines of the Ray daemons in the process group of ``pid`` (the trainer's)."""
    commands = [cmdline(member) for member in group_members(pid) if member != pid]
    return [command[:120] for command in commands if "ray" in command]


def test_the_in_process_ray_is_stopped_after_the_search(
    trainer_stack: PlatformSettings, first_training: tuple[DatasetReady, ModelTrained]
) -> None:
    # Idle, a local Ray node's daemons took ~5% of a core from serving (benchmark);
    # SPAMOPS_TRAINER_RAY_KEEP_ALIVE keeps it.
    row = next(r for r in local_stack.status(trainer_stack) if r.name == "trainer")
    assert row.pid is not None
    deadline = time.monotonic() + 30
    while (left := _ray_processes(row.pid)) and time.monotonic() < deadline:
        time.sleep(1)
    assert not left, left


def test_the_same_dataset_ready_twice_trains_once(
    trainer_stack: PlatformSettings, first_training: tuple[DatasetReady, ModelTrained]
) -> None:
    ready, trained = first_training
    asyncio.run(send(trainer_stack, "datasets.ready", [(ready.dataset_id, ready.to_bytes())]))
    republished = asyncio.run(
        events_on(
            trainer_stack,
            "models.trained",
            lambda e: isinstance(e, ModelTrained) and e.causation_id == ready.event_id,
        )
    )
    deadline = time.monotonic() + 120
    while len(republished) < 2:
        assert time.monotonic() < deadline, "the replayed DatasetReady was not answered"
        republished = asyncio.run(
            events_on(
                trainer_stack,
                "models.trained",
                lambda e: isinstance(e, ModelTrained) and e.causation_id == ready.event_id,
            )
        )
    assert {e.run_id for e, _ in republished} == {trained.run_id}
    parents = [
        r for r in training_runs(trainer_stack, ready.dataset_id) if "mlflow.parentRunId" not in
        r.data.tags
    ]  # fmt: skip
    assert len(parents) == 1


def test_a_bad_snapshot_is_dead_lettered_and_the_trainer_goes_on(
    trainer_stack: PlatformSettings, first_training: tuple[DatasetReady, ModelTrained]
) -> None:
    ready, _ = first_training
    bad = ready.model_copy(update={"event_id": uuid.uuid4(), "sha256": "0" * 64})
    asyncio.run(send(trainer_stack, "datasets.ready", [(bad.dataset_id, bad.to_bytes())]))
    [(_, headers)] = asyncio.run(
        events_on(
            trainer_stack,
            "datasets.ready.dlq",
            lambda item: isinstance(item, DatasetReady) and item.event_id == bad.event_id,
            wait_s=120,
        )
    )
    assert headers[H_ERROR_REASON] == "bad-snapshot"
    assert trainer_alive(trainer_stack)
    log = (trainer_stack.state_dir / "logs" / "trainer.log").read_text()
    assert "bad-snapshot" in log


def test_drift_retrains_on_the_parent_plus_the_labelled_feedback(
    trainer_stack: PlatformSettings,
    first_training: tuple[DatasetReady, ModelTrained],
    tmp_path: Path,
) -> None:
    ready, _ = first_training
    # Twenty new messages arrive in the inbox and people label them.
    raws = [
        (
            f"From: promo{i}@deals{i % 4}.example\nTo: you@example.org\n"
            f"Subject: {'cheap pills' if i % 2 else 'lunch on friday'} {i}\n"
            f"Message-ID: <drift-{uuid.uuid4().hex}@example>\n"
            f"Date: Tue, 0{1 + i % 9} Oct 2002 09:00:00 +0000\n\n"
            f"{'buy now, limited offer' if i % 2 else 'see you at noon'} {i}\n"
        ).encode()
        for i in range(20)
    ]
    keys = [message_key(raw, parse_email(raw)) for raw in raws]
    asyncio.run(send(trainer_stack, "emails.inbox", list(zip(keys, raws, strict=True))))
    labels = [
        EmailLabeled(
            producer="test", message_key=key, label="spam" if i % 2 else "ham", labelled_by="qa"
        )
        for i, key in enumerate(keys)
    ]
    asyncio.run(
        send(trainer_stack, "emails.feedback", [(e.message_key, e.to_bytes()) for e in labels])
    )
    drift = DriftDetected(
        producer="monitor",
        model_name="spam-detector",
        model_version=1,  # not registered here: the latest training is the parent
        window=DriftWindow(size=20),
        drift_share=0.5,
    )
    asyncio.run(send(trainer_stack, "monitoring.drift", [(drift.model_name, drift.to_bytes())]))

    [(retrain, _)] = asyncio.run(
        events_on(
            trainer_stack,
            "datasets.ready",
            lambda e: isinstance(e, DatasetReady) and e.causation_id == drift.event_id,
        )
    )
    assert retrain.reason == "drift"
    assert retrain.parent_dataset_id == ready.dataset_id
    assert retrain.counts_by_group.get("feedback") == 20
    assert retrain.rows == ready.rows + 20
    assert retrain.correlation_id == drift.correlation_id
    [(trained, _)] = asyncio.run(
        events_on(
            trainer_stack,
            "models.trained",
            lambda e: isinstance(e, ModelTrained) and e.causation_id == retrain.event_id,
        )
    )
    assert trained.dataset_id == retrain.dataset_id
    assert trained.correlation_id == drift.correlation_id
    summary = json.loads(
        Path(
            mlflow.artifacts.download_artifacts(
                run_id=trained.run_id, artifact_path="training_summary.json",
                dst_path=str(tmp_path), tracking_uri=trainer_stack.mlflow_uri,
            )
        ).read_text()
    )  # fmt: skip
    assert "feedback" in summary["per_group"]
