"""What the monitor does with each event: plain functions on typed events, deps passed in.

* EmailClassified -> the version's drift window (+ the live-quality join); a due
  window goes to the background checker, which scores it with PSI from histogram
  counts, runs the Evidently report when it alerts (or a periodic report is due) —
  files, a snapshot in the Evidently UI workspace, an MLflow upload queued in the
  background — and may publish DriftDetected(kind=data) linking the report.
* ``commit_floor`` tells the Kafka wiring how far it may commit: not past a verdict
  of a window not evaluated yet, nor past a join write not stored yet.
* EmailLabeled -> live quality of the verdict's version; a drop below the
  thresholds publishes DriftDetected(kind=performance).
* ModelRegistered / ModelPromoted -> which versions serve; their profiles are
  built ahead of their first verdicts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from spamops_runtime.metrics import labelled
from spamops_schemas import DriftDetected, EmailClassified, EmailLabeled
from spamops_schemas.events import DriftedFeature, DriftWindow
from spamops_schemas.topics import EMAILS_FEEDBACK, EMAILS_VERDICTS

from spamops_monitor.adapters import (
    EvidentlyWorkspace,
    MlflowReports,
    ProfileStore,
    ReportUpload,
    ReportWriter,
    report_files,
    report_metrics,
    write_json_atomically,
)
from spamops_monitor.drift import (
    AlertGate,
    DriftResult,
    EvidentlyDrift,
    HistogramDrift,
    Kind,
    Observation,
    Severity,
    Window,
    Windows,
    severity,
)
from spamops_monitor.metrics import (
    CHECK_SECONDS,
    DRIFT_EVENTS,
    DRIFT_SHARE,
    IGNORED,
    LABELS,
    LABELS_UNMATCHED,
    QUALITY,
    REPLAYED,
    REPORT_SECONDS,
    SUPPRESSED,
    VERDICTS,
    WINDOWS,
)
from spamops_monitor.quality import Joined, LiveQuality, QualityMetrics
from spamops_monitor.settings import MonitorSettings
from spamops_monitor.state import StateStore

logger = logging.getLogger(__name__)

SERVICE = "monitor"
QUALITY_FILE = "live_quality.json"  # read by `spamops status`


class Notifier(Protocol):
    """Where alerts go besides Kafka (the webhook)."""

    def notify(self, event: DriftDetected) -> None:
        """Queue an alert; must not wait."""


@dataclass(frozen=True)
class SavedReport:
    """A window's report: its local file (HTML, or the JSON summary without HTML) and its
    page in the Evidently UI ("" without a workspace snapshot)."""

    path: Path
    url: str = ""


class WindowSink(Protocol):
    """Takes closed windows for checking (in the background)."""

    def submit(self, window: Window) -> None:
        """Queue a window; must not wait."""


@dataclass
class MonitorDeps:
    """Everything the handlers need."""

    settings: MonitorSettings
    model_name: str
    windows: Windows
    profiles: ProfileStore
    detector: HistogramDrift
    reporter: EvidentlyDrift
    quality: LiveQuality
    gate: AlertGate
    reports: ReportWriter
    publish: Callable[[DriftDetected], Awaitable[None]]
    checks: WindowSink
    notifiers: list[Notifier] = field(default_factory=list)
    workspace: EvidentlyWorkspace | None = None  # the Evidently UI's workspace
    uploads: MlflowReports | None = None  # reports logged to MLflow in the background
    status_path: Path | None = None
    serving: dict[str, int] = field(default_factory=dict)
    clock: Callable[[], float] = time.monotonic
    publish_retry_s: float = 1.0
    _status_written: float = field(default=-math.inf, init=False)
    _waiting: set[int] = field(default_factory=set, init=False)
    _last_report: dict[int, float] = field(default_factory=dict, init=False)

    @property
    def store(self) -> StateStore:
        """The state that outlives a crash (coverage of the windows, the label join)."""
        return self.quality.store


# ------------------------------------------------------------------ verdicts
async def on_verdict(
    event: EmailClassified,
    partition: int,
    offset: int,
    timestamp_ms: int,
    deps: MonitorDeps,
    topic: str = EMAILS_VERDICTS,
) -> None:
    """One verdict: the live-quality join, then the version's drift window.

    A verdict replayed after a crash (the commit floor held it back) is skipped by the
    join when its effect is already stored, and by the windows when an evaluated window
    already counted it: each verdict is counted once.
    """
    if event.model_name != deps.model_name:
        IGNORED.labels("other-model").inc()
        return
    version = event.model_version
    labelled(VERDICTS, str(version)).inc()
    store = deps.store
    if offset > store.applied_offset(topic, partition):
        joined = deps.quality.verdict(event.message_key, event.model_name, version, event.verdict)
        store.mark_applied(topic, partition, offset)
        if joined is not None:
            await after_label(joined, deps)
    else:
        REPLAYED.labels("join").inc()
    if not event.features:
        IGNORED.labels("no-features").inc()
        return
    if offset <= store.covered_offset(event.model_name, version, partition):
        REPLAYED.labels("window").inc()
        return
    row = Observation(
        features=event.features,
        probability=event.spam_probability,
        partition=partition,
        offset=offset,
        timestamp_ms=timestamp_ms,
    )
    window = deps.windows.add(event.model_name, version, row)
    for evicted in deps.windows.evict_versions():
        settle(evicted, deps, "evicted")
    if deps.profiles.get(version) is None:
        # Unknown version or no profile yet: full windows are parked (bounded) and
        # checked once the profile exists (ProfileStore logs why).
        if version not in deps._waiting and window.due(
            deps.windows.clock(), deps.windows.max_age_s, deps.windows.min_size
        ):
            deps._waiting.add(version)
            logger.warning(
                "drift window full but no reference profile yet: kept until it is available",
                extra={"version": version, "size": len(window)},
            )
        dropped = deps.windows.park_if_full(event.model_name, version)
        if dropped is not None:
            settle(dropped, deps, "skipped")
        return
    deps._waiting.discard(version)
    for parked in deps.windows.take_parked(event.model_name, version):
        deps.checks.submit(parked)
    closed = deps.windows.take_if_due(event.model_name, version)
    if closed is not None:
        deps.checks.submit(closed)


def settle(window: Window, deps: MonitorDeps, result: str | None = None) -> None:
    """A window's verdicts are done with: recorded as covered (stored at the next flush,
    before any commit past them) and no longer holding the commit floor back. ``result``
    counts a window given up unevaluated (skipped, evicted, expired)."""
    deps.store.mark_covered(window.model_name, window.version, window.last_offsets)
    deps.windows.settle(window)
    if result is not None:
        WINDOWS.labels(str(window.version), result).inc()
        logger.warning(
            "drift window given up unchecked",
            extra={"version": window.version, "size": len(window), "result": result},
        )


def commit_floor(topic: str, partition: int, deps: MonitorDeps) -> int | None:
    """For the Kafka wiring, before each commit: the lowest offset of (topic, partition)
    whose effect is not durable yet, or None when everything handled is.

    The join's pending writes are stored first (one SQLite transaction). Verdicts in a
    window not evaluated yet (open, parked for a profile, queued for a check) are not
    durable: the floor is the first of them, so a restart replays those windows.
    """
    unflushed = None
    try:
        deps.store.flush()
    except sqlite3.Error:
        logger.exception("cannot store the monitor state: nothing committed past it")
        unflushed = deps.store.first_unflushed(topic, partition)
    window = deps.windows.floor(partition) if topic == EMAILS_VERDICTS else None
    floors = [o for o in (unflushed, window) if o is not None]
    return min(floors) if floors else None


async def check_window(window: Window, deps: MonitorDeps) -> DriftDetected | None:
    """PSI of a closed window against its version's profile (histogram counts, cheap);
    the Evidently report when the window raises an alert or a periodic report is due;
    DriftDetected on drift. The window is settled once its outcome is published."""
    profile = deps.profiles.get(window.version)
    if profile is None:  # cannot happen for windows the stream closed; be safe
        settle(window, deps, "skipped")
        return None
    started = time.perf_counter()
    settings = deps.settings
    try:
        result = deps.detector.check(profile, window)
    except Exception:
        logger.exception("drift check failed", extra={"version": window.version})
        settle(window, deps, "failed")
        return None
    CHECK_SECONDS.observe(time.perf_counter() - started)
    alert = result.drift and deps.gate.allows(deps.model_name, window.version, "data")
    now = deps.clock()
    periodic = now - deps._last_report.get(window.version, -math.inf) >= settings.report_interval_s
    report: SavedReport | None = None
    if alert or periodic:
        deps._last_report[window.version] = now
        report = await write_report(window, profile.frame, result, deps)
    DRIFT_SHARE.labels(str(window.version)).set(result.share)
    WINDOWS.labels(str(window.version), "drift" if result.drift else "no_drift").inc()
    logger.info(
        "drift window checked",
        extra={
            "version": window.version,
            "size": len(window),
            "drift_share": round(result.share, 4),
            "drift": result.drift,
            "drifted": [f.feature for f in result.drifted],
            "report": str(report.path) if report is not None else None,
            "report_url": report.url if report is not None else None,
        },
    )
    event = None
    if result.drift:
        level = severity(result.share, settings.severity_medium_share, settings.severity_high_share)
        delay = deps.publish_retry_s
        while True:  # Kafka unreachable: retried; the window holds the floor meanwhile
            try:
                event = await raise_drift(
                    deps,
                    window.version,
                    kind="data",
                    window=window.describe(),
                    share=result.share,
                    drifted=result.drifted,
                    report_uri=report.path.as_uri() if report is not None else "",
                    report_url=report.url if report is not None else "",
                    level=level,
                )
                break
            except Exception:
                logger.exception("cannot publish DriftDetected, retrying", extra={"in_s": delay})
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
    settle(window, deps)
    try:
        deps.store.flush()  # the coverage durable now, not only at the next commit
    except sqlite3.Error:
        logger.exception("cannot store the window's coverage (retried at the next flush)")
    return event


async def write_report(
    window: Window, reference: Any, result: DriftResult, deps: MonitorDeps
) -> SavedReport | None:
    """The Evidently report of one window, in a worker thread: HTML + JSON files, its
    snapshot in the Evidently UI workspace; then its MLflow upload is queued (a background
    thread: never waited for here, and MLflow being down costs only the upload)."""
    started = time.perf_counter()

    def run() -> SavedReport:
        evidently = deps.reporter.check(reference, window.frame())
        url = ""
        if deps.workspace is not None and evidently.report is not None:
            url = deps.workspace.add(window, evidently.report, drift=result.drift)
        path = deps.reports.save(
            window, result, drift=result.drift, evidently=evidently, report_url=url
        )
        return SavedReport(path, url)

    try:
        report = await asyncio.to_thread(run)
    except Exception:
        logger.exception("Evidently report failed", extra={"version": window.version})
        try:
            path = await asyncio.to_thread(deps.reports.save, window, result, drift=result.drift)
        except OSError:
            logger.exception("cannot write the drift summary")
            return None
        report = SavedReport(path)
    else:
        REPORT_SECONDS.observe(time.perf_counter() - started)
    if deps.uploads is not None:
        deps.uploads.submit(
            ReportUpload(
                window.model_name, window.version, report_files(report.path),
                report_metrics(result), time.time(),
            )
        )  # fmt: skip
    return report


async def raise_drift(
    deps: MonitorDeps,
    version: int,
    *,
    kind: Kind,
    window: DriftWindow,
    share: float,
    drifted: list[DriftedFeature],
    report_uri: str,
    level: Severity,
    report_url: str = "",
) -> DriftDetected | None:
    """Publish DriftDetected (and alert) unless one was raised within the cooldown."""
    if not deps.gate.allows(deps.model_name, version, kind):
        SUPPRESSED.labels(kind).inc()
        logger.info("drift within the cooldown: no new event", extra={"version": version})
        return None
    event = DriftDetected(
        producer=SERVICE,
        model_name=deps.model_name,
        model_version=version,
        kind=kind,
        window=window,
        drift_share=min(1.0, max(0.0, share)),
        drifted_features=drifted,
        report_uri=report_uri,
        report_url=report_url,
        severity=level,
    )
    await deps.publish(event)
    deps.gate.record(deps.model_name, version, kind)
    DRIFT_EVENTS.labels(kind).inc()
    logger.warning(
        "DriftDetected",
        extra={
            "version": version,
            "kind": kind,
            "severity": level,
            "drift_share": round(share, 4),
            "report": report_uri,
            "report_url": report_url,
        },
    )
    for notifier in deps.notifiers:
        notifier.notify(event)
    return event


# ------------------------------------------------------------------ labels
async def on_labeled(
    event: EmailLabeled,
    deps: MonitorDeps,
    *,
    partition: int | None = None,
    offset: int | None = None,
    topic: str = EMAILS_FEEDBACK,
) -> None:
    """One label: joined with its verdict (now, or when the verdict comes). A label read
    again after a restart whose effect is already stored is skipped."""
    if partition is not None and offset is not None:
        if offset <= deps.store.applied_offset(topic, partition):
            REPLAYED.labels("join").inc()
            return
        deps.store.mark_applied(topic, partition, offset)
    joined = deps.quality.label(event.message_key, event.label)
    if joined is None:
        LABELS_UNMATCHED.inc()
        return
    await after_label(joined, deps)


def _gauge(value: float | None) -> float:
    return math.nan if value is None else value


async def after_label(joined: Joined, deps: MonitorDeps) -> DriftDetected | None:
    """Update the gauges and the status file; raise a quality drop."""
    metrics = deps.quality.metrics(joined.model_name, joined.version)
    version = str(joined.version)
    LABELS.labels(version).set(metrics.labels)
    for name in ("precision", "recall", "f1", "false_positive_rate"):
        QUALITY.labels(version, name).set(_gauge(getattr(metrics, name)))
    write_status(deps)
    return await check_quality(joined.version, metrics, deps)


async def check_quality(
    version: int, metrics: QualityMetrics, deps: MonitorDeps
) -> DriftDetected | None:
    """DriftDetected(kind=performance) when F1 or the false-positive rate crossed its limit."""
    settings = deps.settings
    if metrics.labels < settings.quality_min_labels:
        return None
    checks = [
        ("f1", metrics.f1, settings.quality_min_f1, metrics.f1 is not None
         and metrics.f1 < settings.quality_min_f1),
        ("false_positive_rate", metrics.false_positive_rate, settings.quality_max_fpr,
         metrics.false_positive_rate is not None
         and metrics.false_positive_rate > settings.quality_max_fpr),
    ]  # fmt: skip
    failed = [
        DriftedFeature(feature=name, statistic=name, score=round(value or 0.0, 6), threshold=limit)
        for name, value, limit, bad in checks
        if bad
    ]
    if not failed or not deps.gate.allows(deps.model_name, version, "performance"):
        if failed:
            SUPPRESSED.labels("performance").inc()
        return None
    f1 = metrics.f1 if metrics.f1 is not None else 0.0
    level: Severity = "high" if f1 < settings.quality_min_f1 - 0.1 else "medium"
    report = await asyncio.to_thread(
        deps.reports.save_json,
        deps.model_name,
        version,
        "quality",
        {
            "model_name": deps.model_name,
            "model_version": version,
            "metrics": metrics.as_dict(),
            "limits": {"min_f1": settings.quality_min_f1, "max_fpr": settings.quality_max_fpr},
            "window_labels": settings.quality_window,
        },
    )
    return await raise_drift(
        deps,
        version,
        kind="performance",
        window=DriftWindow(size=metrics.labels),
        share=len(failed) / len(checks),
        drifted=failed,
        report_uri=report.as_uri(),
        level=level,
    )


def write_status(deps: MonitorDeps, *, force: bool = False) -> None:
    """``live_quality.json`` for ``spamops status`` (at most every status_interval_s)."""
    if deps.status_path is None:
        return
    now = deps.clock()
    if not force and now - deps._status_written < deps.settings.status_interval_s:
        return
    deps._status_written = now
    versions = {
        str(version): {
            **deps.quality.metrics(name, version).as_dict(),
            "labels_total": deps.quality.total_labels(name, version),
        }
        for name, version in deps.quality.versions()
        if name == deps.model_name
    }
    payload = {
        "model_name": deps.model_name,
        "updated_at": datetime.now(UTC).isoformat(),
        "window": deps.settings.quality_window,
        "serving": deps.serving,
        "versions": versions,
    }
    try:
        write_json_atomically(deps.status_path, payload)
    except OSError:
        logger.exception("cannot write the live-quality file")


# ------------------------------------------------------------------ models
def on_serving(alias: str, version: int, deps: MonitorDeps) -> None:
    """A version now serves under ``alias``: build its profile ahead of its verdicts."""
    deps.serving[alias] = version
    deps.profiles.get(version)
    write_status(deps, force=True)
    logger.info("serving version", extra={"alias": alias, "version": version})


# ------------------------------------------------------------------ background
class WindowChecker:
    """Checks closed windows one at a time in the background; a full queue skips the oldest."""

    def __init__(
        self,
        check: Callable[[Window], Awaitable[object]],
        pending: int,
        skipped: Callable[[Window], None] = lambda window: None,
    ) -> None:
        self.check = check
        self.skipped = skipped
        self.queue: asyncio.Queue[Window] = asyncio.Queue(pending)
        self.task: asyncio.Task[None] | None = None

    def submit(self, window: Window) -> None:
        """Queue a window (never waits)."""
        if self.task is None or self.task.done():
            self.task = asyncio.get_running_loop().create_task(self._run())
        if self.queue.full():
            skipped = self.queue.get_nowait()
            self.queue.task_done()
            logger.warning("drift checks behind: oldest window skipped")
            self.skipped(skipped)
        self.queue.put_nowait(window)

    async def _run(self) -> None:
        while True:
            window = await self.queue.get()
            try:
                await self.check(window)
            except Exception:
                logger.exception("drift check crashed")
            finally:
                self.queue.task_done()

    async def drain(self) -> None:
        """Wait until every queued window is checked (tests, shutdown)."""
        await self.queue.join()

    async def stop(self) -> None:
        """Stop the worker."""
        if self.task is not None:
            self.task.cancel()


def tick(deps: MonitorDeps) -> int:
    """Submit every due window whose profile is ready (time windows on an idle stream, a
    profile that appeared after its window filled), give up expired windows, and store
    the pending state. Returns how many windows were submitted."""
    submitted = 0
    for model_name, version in list(deps.windows.parked):
        if deps.profiles.get(version) is not None:
            for parked in deps.windows.take_parked(model_name, version):
                deps.checks.submit(parked)
                submitted += 1
    for model_name, version in list(deps.windows.open):
        if deps.profiles.get(version) is None:
            continue
        closed = deps.windows.take_if_due(model_name, version)
        if closed is not None:
            deps._waiting.discard(version)
            deps.checks.submit(closed)
            submitted += 1
    for expired in deps.windows.take_expired():
        settle(expired, deps, "expired")
    for version in [v for v in deps._last_report if v not in deps.profiles.profiles]:
        deps._last_report.pop(version, None)  # bounded like the profiles
    deps._waiting.intersection_update(v for _, v in [*deps.windows.open, *deps.windows.parked])
    deps.store.flush()
    return submitted
