"""Wiring of the monitor service: settings -> broker -> subscribers -> FastStream app."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

from faststream import FastStream
from spamops_runtime.kafka import RecordContext, publish_event, subscribe_events
from spamops_runtime.service import service_app, service_broker
from spamops_schemas import (
    DriftDetected,
    EmailClassified,
    EmailLabeled,
    ModelPromoted,
    ModelRegistered,
)
from spamops_schemas.topics import (
    EMAILS_FEEDBACK,
    EMAILS_VERDICTS,
    MODELS_PROMOTED,
    MODELS_REGISTERED,
)

from spamops_monitor.adapters import (
    EvidentlyWorkspace,
    MlflowProfiles,
    MlflowReports,
    ProfileStore,
    ReportWriter,
    WebhookNotifier,
)
from spamops_monitor.drift import AlertGate, EvidentlyDrift, HistogramDrift, Window, Windows
from spamops_monitor.handlers import (
    QUALITY_FILE,
    SERVICE,
    MonitorDeps,
    Notifier,
    WindowChecker,
    check_window,
    commit_floor,
    on_labeled,
    on_serving,
    on_verdict,
    settle,
    tick,
    write_status,
)
from spamops_monitor.quality import LiveQuality
from spamops_monitor.settings import MonitorSettings
from spamops_monitor.state import StateStore

logger = logging.getLogger(__name__)

TICK_S = 5.0


def build_app(settings: MonitorSettings | None = None) -> FastStream:
    """Bootstrap: build the broker and register the handlers with their dependencies."""
    settings = settings or MonitorSettings()
    broker = service_broker(SERVICE, settings)
    platform = settings.platform
    root = settings.monitor_dir
    mlflow = MlflowProfiles(
        platform.mlflow_uri, platform.model_name, max_rows=settings.reference_max_rows
    )
    notifiers: list[Notifier] = []
    webhook: WebhookNotifier | None = None
    if settings.webhook_url:
        webhook = WebhookNotifier(
            settings.webhook_url,
            timeout_s=settings.webhook_timeout_s,
            max_attempts=settings.webhook_max_attempts,
            backoff_s=settings.webhook_backoff_s,
            queue_size=settings.webhook_queue,
        )
        notifiers.append(webhook)

    workspace = (
        EvidentlyWorkspace(
            platform.evidently_workspace_dir, platform.evidently_ui, settings.ui_snapshots_keep
        )
        if settings.ui_snapshots
        else None
    )
    uploads = (
        MlflowReports(platform.mlflow_uri, queue_size=settings.mlflow_reports_queue)
        if settings.mlflow_reports
        else None
    )

    async def publish(event: DriftDetected) -> None:
        await publish_event(broker, event, service=SERVICE)

    deps_box: list[MonitorDeps] = []

    async def check(window: object) -> object:
        return await check_window(window, deps_box[0])  # type: ignore[arg-type]

    def skipped(window: Window) -> None:
        settle(window, deps_box[0], "skipped")

    checker = WindowChecker(check, settings.pending_windows, skipped)
    store = StateStore(
        settings.state_path, join_capacity=settings.join_capacity,
        quality_window=settings.quality_window, max_versions=settings.max_versions,
    )  # fmt: skip
    deps = MonitorDeps(
        settings=settings,
        model_name=platform.model_name,
        windows=Windows(
            settings.window_size, settings.window_max_age_s, settings.min_window_size,
            time.monotonic, max_parked=settings.pending_windows,
            max_versions=settings.max_versions, expire_s=settings.window_expire_s,
        ),
        profiles=ProfileStore(
            mlflow.build, root / "profiles", model_name=platform.model_name,
            retry_s=settings.profile_retry_s, max_versions=settings.max_versions,
        ),
        detector=HistogramDrift(threshold=settings.drift_threshold, share=settings.drift_share),
        reporter=EvidentlyDrift(
            method=settings.drift_method, threshold=settings.drift_threshold,
            share=settings.drift_share,
        ),
        quality=LiveQuality(settings.join_capacity, settings.quality_window, store),
        gate=AlertGate(settings.cooldown_s, root / "alerts.json", time.time),
        reports=ReportWriter(root / "reports", settings.reports_keep),
        publish=publish,
        checks=checker,
        notifiers=notifiers,
        workspace=workspace,
        uploads=uploads,
        status_path=root / QUALITY_FILE,
    )  # fmt: skip
    deps_box.append(deps)

    async def verdict(event: EmailClassified, record: RecordContext) -> None:
        await on_verdict(event, record.partition, record.offset, record.timestamp_ms, deps)

    async def labeled(event: EmailLabeled, record: RecordContext) -> None:
        await on_labeled(event, deps, partition=record.partition, offset=record.offset)

    def floor(topic: str, partition: int) -> int | None:
        return commit_floor(topic, partition, deps)

    # Commits stop at the first verdict of the oldest window not evaluated yet, and at
    # join writes not stored yet: a restart replays them (and skips what was counted).
    # No span per verdict: a verdict ends its trace here, and the span cost about a
    # third of the monitor's CPU (its logs keep the trace id).
    subscribe_events(
        broker, topic=EMAILS_VERDICTS, event_cls=EmailClassified, handler=verdict,
        settings=settings, service=SERVICE, batch_max_records=settings.batch_max_records,
        commit_floor=floor, record_spans=False,
        fetch_min_bytes=settings.fetch_min_bytes, fetch_max_wait_ms=settings.fetch_max_wait_ms,
    )  # fmt: skip
    # The label join is in the state store, shared by every monitor process using the same
    # state dir: a label joins its verdict whichever process read either (README: scaling).
    subscribe_events(
        broker, topic=EMAILS_FEEDBACK, event_cls=EmailLabeled, handler=labeled,
        settings=settings, service=SERVICE, group_id=f"{settings.group_id}-feedback",
        commit_floor=floor,
    )  # fmt: skip

    # Every instance follows every switch: a group of its own, from the latest offset
    # (the current aliases are read from MLflow at start).
    control_group = f"{settings.group_id}-control-{uuid.uuid4().hex[:8]}"

    async def registered(event: ModelRegistered, record: RecordContext) -> None:
        if event.model_name == platform.model_name:
            on_serving(event.alias or "staging", event.version, deps)

    async def promoted(event: ModelPromoted, record: RecordContext) -> None:
        if event.model_name == platform.model_name:
            on_serving(event.alias or "production", event.version, deps)

    for topic, cls, handler in (
        (MODELS_REGISTERED, ModelRegistered, registered),
        (MODELS_PROMOTED, ModelPromoted, promoted),
    ):
        subscribe_events(
            broker, topic=topic, event_cls=cls, handler=handler,  # type: ignore[arg-type]
            settings=settings, service=SERVICE, group_id=control_group,
            auto_offset_reset="latest",
        )  # fmt: skip

    app = service_app(SERVICE, settings, broker)
    background: list[asyncio.Task[None]] = []

    async def ticker() -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:
                tick(deps)
                write_status(deps)
            except Exception:
                logger.exception("monitor tick failed")

    @app.on_startup
    async def _serving_versions() -> None:
        """The serving versions as MLflow knows them now; their profiles built in the background."""
        try:
            aliases = await asyncio.to_thread(mlflow.aliases)
        except Exception:  # MLflow down: verdicts still build windows, profiles come later
            logger.warning("cannot read aliases from MLflow", exc_info=True)
            aliases = {}
        for alias, version in aliases.items():
            on_serving(alias, version, deps)
        background.append(asyncio.get_running_loop().create_task(ticker()))

    @app.on_shutdown
    async def _stop_background() -> None:
        for task in background:
            task.cancel()
        await checker.stop()
        write_status(deps, force=True)
        if webhook is not None:
            await webhook.close()
        if uploads is not None:
            await asyncio.to_thread(uploads.close)

    @app.after_shutdown
    async def _close_state() -> None:
        """After the consumers stopped: the last pending state stored, the file closed."""
        store.close()

    return app
