"""Wiring of the trainer service: settings -> broker -> subscribers -> FastStream app."""

from __future__ import annotations

from functools import partial

from faststream import FastStream
from spamops_runtime.kafka import publish_event, subscribe_events
from spamops_runtime.service import service_app, service_broker
from spamops_schemas import DatasetReady, DriftDetected, Event
from spamops_schemas.topics import DATASETS_READY, MONITORING_DRIFT

from spamops_trainer.adapters import MlflowTracker, labelled_feedback
from spamops_trainer.handlers import (
    SERVICE,
    DriftDeps,
    TrainerDeps,
    on_dataset_ready,
    on_drift_detected,
)
from spamops_trainer.settings import TrainerSettings
from spamops_trainer.tuning import SearchConfig


def search_config(settings: TrainerSettings) -> SearchConfig:
    """The search settings of a TrainerSettings."""
    return SearchConfig(
        num_samples=settings.num_samples,
        max_concurrent_trials=settings.max_concurrent_trials,
        time_budget_s=settings.time_budget_s,
        report_every=settings.report_every,
        max_estimators=settings.max_estimators,
        grace_reports=settings.grace_reports,
        seed=settings.seed,
        ray_address=settings.ray_address,
        ray_num_cpus=settings.ray_num_cpus,
        ray_keep_alive=settings.ray_keep_alive,
        reference_point=settings.reference_point,
    )


def build_app(settings: TrainerSettings | None = None) -> FastStream:
    """Bootstrap: build the broker and register the handlers with their dependencies."""
    settings = settings or TrainerSettings()
    broker = service_broker(SERVICE, settings)

    async def publish(event: Event) -> None:
        await publish_event(broker, event, service=SERVICE)

    tracker = MlflowTracker(settings.platform.mlflow_uri, settings.experiment)
    reputation = None
    if settings.use_reputation:
        from spamops_features.reputation import ReputationStore

        # The trainer's own Feast repo (registry + offline file); Redis is shared.
        reputation = ReputationStore.open(
            settings.platform.state_dir / "data" / "trainer" / "feast", settings.platform.redis
        )
    deps = TrainerDeps(
        tracker=tracker,
        publish=publish,
        search=search_config(settings),
        threshold=settings.threshold,
        max_val_fpr=settings.max_val_fpr,
        threshold_folds=settings.threshold_folds,
        reputation=reputation.historical if reputation else None,
        after_training=reputation.materialize if reputation else None,
    )
    drift = DriftDeps(
        tracker=tracker,
        publish=publish,
        feedback=partial(labelled_feedback, settings.platform),
        snapshots_dir=settings.platform.state_dir / "data" / "datasets",
        cooldown_s=settings.drift_cooldown_s,
    )
    subscribe_events(
        broker,
        topic=DATASETS_READY,
        event_cls=DatasetReady,
        handler=partial(on_dataset_ready, deps=deps),
        settings=settings,
        service=SERVICE,
        # A training holds its record for minutes: keep the group membership meanwhile.
        max_poll_interval_ms=settings.max_handler_minutes * 60_000,
    )
    subscribe_events(
        broker,
        topic=MONITORING_DRIFT,
        event_cls=DriftDetected,
        handler=partial(on_drift_detected, deps=drift),
        settings=settings,
        service=SERVICE,
    )
    return service_app(SERVICE, settings, broker)
