"""monitor: windows, PSI drift with real Evidently, cooldown, live quality, webhook, bad input."""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
from spamops_features.handcrafted import HANDCRAFTED_NAMES
from spamops_monitor.adapters import (
    PROTECTED_FILE,
    EvidentlyWorkspace,
    MlflowReports,
    ProfileStore,
    ProfileUnavailableError,
    ReportUpload,
    ReportWriter,
    WebhookNotifier,
    alert_payload,
    project_id,
    reference_frame,
)
from spamops_monitor.drift import (
    PROBABILITY,
    AlertGate,
    EvidentlyDrift,
    HistogramDrift,
    Observation,
    Profile,
    Window,
    Windows,
    column_scores,
    severity,
)
from spamops_monitor.handlers import (
    MonitorDeps,
    check_window,
    on_labeled,
    on_verdict,
    tick,
)
from spamops_monitor.quality import Joined, LiveQuality, QualityMetrics
from spamops_monitor.settings import MonitorSettings
from spamops_monitor.state import StateStore
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import DriftDetected, EmailClassified, EmailLabeled
from spamops_schemas.events import DriftWindow

MODEL = "spam-detector"
SHIFTED = (
    "body_length", "url_count", "uppercase_ratio", "received_hops", "date_hour",
    "log_size", "subject_length", "exclamation_count", "part_count", "html_ratio",
)  # fmt: skip


def sample(n: int, seed: int, shifted: bool = False) -> pd.DataFrame:
    """Synthetic handcrafted features + probability: a mix of continuous and discrete columns."""
    rng = np.random.default_rng(seed)
    data: dict[str, np.ndarray] = {}
    for i, name in enumerate(HANDCRAFTED_NAMES):
        shift = name in SHIFTED and shifted
        if i % 3 == 0:  # heavy-tailed continuous
            data[name] = rng.lognormal(3.0 + (1.0 if shift else 0.0), 1.0, n)
        elif i % 3 == 1:  # small counts
            data[name] = rng.poisson(4.0 if shift else 1.5, n).astype(float)
        else:  # ratio
            data[name] = rng.beta(2.0, 8.0 if not shift else 3.0, n)
    data[PROBABILITY] = rng.beta(0.5, 0.5, n)
    return pd.DataFrame(data)


def verdict(
    row: dict[str, float], key: str, version: int = 1, model: str = MODEL
) -> EmailClassified:
    p = float(row.pop(PROBABILITY, 0.5))
    return EmailClassified(
        producer="test", message_key=key, verdict="spam" if p >= 0.5 else "ham",
        spam_probability=p, threshold=0.5, model_name=model, model_version=version,
        environment="production", features=row, latency_ms=1.0,
    )  # fmt: skip


def floats(row: dict[Any, Any]) -> dict[str, float]:
    return {str(k): float(v) for k, v in row.items()}


def read_json(path: Path) -> Any:
    return json.loads(path.read_text())


def report_path(uri: str) -> Path:
    return Path(uri.removeprefix("file://"))


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class ListSink:
    def __init__(self) -> None:
        self.windows: list[Window] = []

    def submit(self, window: Window) -> None:
        self.windows.append(window)


class Recorder:
    def __init__(self) -> None:
        self.events: list[DriftDetected] = []

    def notify(self, event: DriftDetected) -> None:
        self.events.append(event)


def make_deps(
    tmp_path: Path,
    build: Any,
    clock: Clock,
    *,
    window: int = 300,
    reporter: Any = None,
    **overrides: Any,
) -> tuple[MonitorDeps, list[DriftDetected], ListSink, Recorder]:
    settings = MonitorSettings(
        platform=PlatformSettings(home=tmp_path), window_size=window, min_window_size=50,
        window_max_age_s=60, profile_retry_s=10, quality_min_labels=20, **overrides,
    )  # fmt: skip
    published: list[DriftDetected] = []
    sink, recorder = ListSink(), Recorder()

    async def publish(event: DriftDetected) -> None:
        published.append(event)

    deps = MonitorDeps(
        settings=settings,
        model_name=MODEL,
        windows=Windows(settings.window_size, settings.window_max_age_s, settings.min_window_size,
                        clock, max_versions=settings.max_versions),
        profiles=ProfileStore(build, tmp_path / "profiles", model_name=MODEL,
                              retry_s=settings.profile_retry_s, clock=clock,
                              max_versions=settings.max_versions),
        detector=HistogramDrift(threshold=0.1, share=settings.drift_share),
        reporter=reporter or EvidentlyDrift(threshold=0.1, share=settings.drift_share),
        quality=LiveQuality(settings.join_capacity, settings.quality_window,
                            StateStore(settings.state_path, join_capacity=settings.join_capacity,
                                       quality_window=settings.quality_window)),
        gate=AlertGate(settings.cooldown_s, tmp_path / "alerts.json", clock),
        reports=ReportWriter(tmp_path / "reports", keep=3),
        publish=publish,
        checks=sink,
        notifiers=[recorder],
        status_path=tmp_path / "live_quality.json",
        clock=clock,
    )  # fmt: skip
    return deps, published, sink, recorder


def reference_profile(version: int = 1) -> Profile:
    return Profile(MODEL, version, sample(3000, seed=1), "test")


async def feed(
    deps: MonitorDeps, frame: pd.DataFrame, prefix: str, version: int = 1, start: int = 0
) -> None:
    for i, row in enumerate(frame.to_dict("records"), start):
        await on_verdict(
            verdict(floats(row), f"{prefix}-{i}", version), 0, i, 1_700_000_000_000, deps
        )


# ------------------------------------------------------------------ windows
def test_window_closes_by_count_or_by_age_and_stays_bounded() -> None:
    clock = Clock()
    windows = Windows(size=5, max_age_s=60, min_size=3, clock=clock)
    row = Observation({"url_count": 1.0}, 0.2, partition=0, offset=7, timestamp_ms=1_000)
    for _ in range(4):
        windows.add(MODEL, 1, row)
    assert windows.take_if_due(MODEL, 1) is None  # 4 < 5 and young
    windows.add(MODEL, 1, row)
    full = windows.take_if_due(MODEL, 1)
    assert full is not None and len(full) == 5
    assert windows.take_if_due(MODEL, 1) is None  # a new window opens with the next verdict
    windows.add(MODEL, 2, row)
    windows.add(MODEL, 2, row)
    clock.now += 61
    assert windows.take_if_due(MODEL, 2) is None  # old but below min_size
    windows.add(MODEL, 2, row)
    aged = windows.take_if_due(MODEL, 2)
    assert aged is not None and len(aged) == 3
    bounded = Window(MODEL, 1, capacity=3, opened_at=0)
    for offset in range(7, 10):
        bounded.add(Observation({}, 0.1, offset % 2, offset, 1_000 + offset))
    with pytest.raises(ValueError, match="full"):  # fixed memory: closed or parked first
        bounded.add(Observation({}, 0.1, 0, 10, 1_010))
    described = bounded.describe()
    assert (described.size, described.first_offset, described.last_offset) == (3, 7, 9)
    assert bounded.first_offsets == {1: 7, 0: 8} and bounded.last_offsets == {1: 9, 0: 8}
    frame = bounded.frame()
    assert list(frame.columns) == [*HANDCRAFTED_NAMES, PROBABILITY]
    assert frame["url_count"].isna().all()


# ------------------------------------------------------------------ PSI drift (real Evidently)
def window_of(frame: pd.DataFrame, version: int = 1) -> Window:
    window = Window(MODEL, version, capacity=len(frame), opened_at=0)
    for i, row in enumerate(frame.to_dict("records")):
        p = row.pop(PROBABILITY)
        features = {k: v for k, v in floats(row).items() if not np.isnan(v)}
        window.add(Observation(features, float(p), partition=i % 3, offset=i, timestamp_ms=i))
    return window


def test_psi_no_false_alarm_on_same_distribution_and_drift_on_a_shift() -> None:
    detector = HistogramDrift(threshold=0.1, share=0.3)
    reference = reference_profile()
    for seed in (2, 3):
        same = detector.check(reference, window_of(sample(300, seed=seed)))
        assert not same.drift, same.drifted
        assert same.share < 0.15
        assert len(same.scores) == 25
    shifted = detector.check(reference, window_of(sample(300, seed=5, shifted=True)))
    assert shifted.drift
    assert {f.feature for f in shifted.drifted} == set(SHIFTED)
    assert all(f.statistic == "psi" and f.score > 0.1 == f.threshold for f in shifted.drifted)
    assert shifted.share == pytest.approx(10 / 25)


def test_column_scores_reads_value_drift_metrics_only() -> None:
    report = {
        "metrics": [
            {"config": {"type": "evidently:metric_v2:DriftedColumnsCount"}, "value": {"count": 1}},
            {"config": {"type": "evidently:metric_v2:ValueDrift", "column": "a"}, "value": 0.3},
            {"config": {"type": "evidently:metric_v2:ValueDrift", "column": "b"}, "value": "nan"},
        ]
    }
    assert column_scores(report) == {"a": 0.3, "b": 0.0}
    assert [severity(s, 0.45, 0.6) for s in (0.3, 0.5, 0.7)] == ["low", "medium", "high"]


def test_reference_frame_repeats_probabilities_and_caps_rows() -> None:
    features = np.arange(10 * 24, dtype=float).reshape(10, 24)
    frame = reference_frame(features, np.array([0.1, 0.9]), max_rows=100)
    assert frame[PROBABILITY].tolist() == [0.1, 0.9] * 5
    assert len(reference_frame(features, None, max_rows=4)) == 4


# ------------------------------------------------------------------ handler flow
class CountingReporter(EvidentlyDrift):
    """The real Evidently report, counted."""

    def __init__(self) -> None:
        super().__init__(threshold=0.1, share=0.3)
        self.runs = 0

    def check(self, reference: pd.DataFrame, current: pd.DataFrame) -> Any:
        self.runs += 1
        return super().check(reference, current)


async def test_one_shift_gives_one_drift_event_and_evidently_runs_only_when_needed(
    tmp_path: Path,
) -> None:
    clock = Clock()
    reporter = CountingReporter()
    deps, published, sink, recorder = make_deps(
        tmp_path, lambda v: reference_profile(v), clock, reporter=reporter
    )
    assert await deps.profiles.wait(1) is not None
    await feed(deps, sample(300, seed=7), "same")
    await feed(deps, sample(900, seed=8, shifted=True), "shift", start=300)
    assert len(sink.windows) == 4
    results = [await check_window(w, deps) for w in sink.windows]
    assert results[0] is None  # the same-distribution window: no alarm
    events = [r for r in results if r is not None]
    assert len(events) == 1 and published == events and recorder.events == events  # cooldown
    event = events[0]
    assert event.kind == "data" and event.model_version == 1 and event.model_name == MODEL
    assert event.window.size == 300 and event.window.first_offset == 300
    assert {f.feature for f in event.drifted_features} == set(SHIFTED)
    assert event.severity == "low" and event.drift_share == pytest.approx(0.4)
    # Evidently ran twice for 4 windows: the first periodic report and the alert's report;
    # the two drifted windows within the cooldown only got the cheap PSI.
    assert reporter.runs == 2
    html = report_path(event.report_uri)
    assert html.suffix == ".html" and html.is_file() and html.stem.endswith("-drift")
    summary = read_json(html.with_suffix(".json"))
    assert summary["drift"] is True and summary["scores"]["body_length"] > 0.1
    # the stream's PSI and the report's Evidently PSI are the same numbers
    assert summary["evidently_scores"] == pytest.approx(summary["scores"], abs=1e-9)
    assert len(list(html.parent.glob("*.json"))) == 2
    clock.now += deps.settings.report_interval_s  # a periodic report is due again
    assert await check_window(sink.windows[0], deps) is None and reporter.runs == 3
    # After the cooldown the same shift is reported again; the cooldown survives a restart.
    again = AlertGate(deps.settings.cooldown_s, tmp_path / "alerts.json", clock)
    assert not again.allows(MODEL, 1, "data") and again.allows(MODEL, 2, "data")
    clock.now += deps.settings.cooldown_s
    assert await check_window(sink.windows[-1], deps) is not None and reporter.runs == 4


class UploadSink:
    """Records what the monitor hands to its MLflow uploader (the real one is a thread)."""

    def __init__(self) -> None:
        self.uploads: list[ReportUpload] = []

    def submit(self, upload: ReportUpload) -> None:
        self.uploads.append(upload)


async def test_a_drift_report_links_its_evidently_ui_snapshot_and_is_queued_for_mlflow(
    tmp_path: Path,
) -> None:
    clock = Clock()
    deps, published, sink, recorder = make_deps(tmp_path, lambda v: reference_profile(v), clock)
    deps.workspace = EvidentlyWorkspace(tmp_path / "evidently", "http://ui.test:8050/", keep=1)
    uploads = UploadSink()
    deps.uploads = uploads  # type: ignore[assignment]
    assert await deps.profiles.wait(1) is not None
    await feed(deps, sample(300, seed=7), "same")
    await feed(deps, sample(300, seed=8, shifted=True), "shift", start=300)
    assert await check_window(sink.windows[0], deps) is None  # periodic report, no drift
    event = await check_window(sink.windows[1], deps)
    assert event is not None and published == [event] and recorder.events == [event]
    project = str(project_id(MODEL))
    prefix = f"http://ui.test:8050/projects/{project}/reports/"
    assert event.report_url.startswith(prefix)
    snapshot_id = event.report_url.removeprefix(prefix)
    snapshots = tmp_path / "evidently" / project / "snapshots"
    assert (snapshots / f"{snapshot_id}.json").is_file()
    assert (tmp_path / "evidently" / project / PROTECTED_FILE).read_text().split() == [snapshot_id]
    summary = read_json(report_path(event.report_uri).with_suffix(".json"))
    assert summary["report_url"] == event.report_url
    assert event.report_url in alert_payload(event)["text"]
    # Both reports queued for MLflow: HTML + JSON, the drift share and each column's PSI.
    assert [u.version for u in uploads.uploads] == [1, 1]
    last = uploads.uploads[-1]
    assert [p.suffix for p in last.files] == [".html", ".json"]
    assert last.files[0] == report_path(event.report_uri)
    assert last.metrics["drift_share"] == pytest.approx(event.drift_share)
    assert last.metrics["psi.body_length"] > 0.1 and len(last.metrics) == 2 + 25
    # keep=1: the periodic snapshot is pruned by the next periodic one, the drift's stays.
    clock.now += deps.settings.report_interval_s
    assert await check_window(sink.windows[0], deps) is None
    assert await check_window(sink.windows[0], deps) is None  # within the interval: no report
    kept = sorted(p.stem for p in snapshots.glob("*.json"))
    assert len(kept) == 2 and snapshot_id in kept
    # A workspace that cannot be written costs the link, not the report or the event.
    (tmp_path / "a-file").write_text("not a directory")
    deps.workspace = EvidentlyWorkspace(tmp_path / "a-file" / "evidently", "http://u", keep=1)
    clock.now += deps.settings.cooldown_s
    again = await check_window(sink.windows[1], deps)
    assert again is not None and again.report_url == "" and report_path(again.report_uri).is_file()


class FailingClient:
    """An MLflow client whose server is away (as MlflowClient raises after its retries)."""

    def __init__(self, gate: threading.Event | None = None) -> None:
        self.gate = gate
        self.calls = 0
        self.entered = threading.Event()

    def get_experiment_by_name(self, name: str) -> Any:
        self.calls += 1
        self.entered.set()
        if self.gate is not None:
            self.gate.wait(10)
        raise ConnectionError("MLflow is down")


def test_mlflow_uploads_never_block_and_a_failure_only_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gate = threading.Event()
    client = FailingClient(gate)
    reports = MlflowReports("http://mlflow.test", queue_size=2, client=client)
    html = tmp_path / "r.html"
    html.write_text("<html/>")
    upload = ReportUpload(MODEL, 3, [html], {"drift_share": 0.5}, 1_700_000_000.0)
    with caplog.at_level(logging.WARNING):
        reports.submit(upload)
        assert client.entered.wait(10)  # in flight, blocked on MLflow
        started = time.perf_counter()
        for _ in range(4):  # two queue, two are dropped (the oldest first)
            reports.submit(upload)
        assert time.perf_counter() - started < 1.0  # submit never waits for MLflow
        gate.set()
        reports.close(wait_s=10)
    assert html.is_file()  # the local report stays
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count("cannot log the report to MLflow (kept locally)") == 3
    assert (
        messages.count("MLflow report uploads behind: oldest report not logged (kept locally)") == 2
    )
    assert client.calls == 3


def test_histogram_psi_equals_evidentlys_psi_on_the_same_window() -> None:
    """Same bins, same semantics: Sturges bins over the combined range for columns with
    more than 20 distinct reference values, per value otherwise, Evidently's zero fill;
    NaN (a feature missing from a verdict) dropped; values beyond the reference range."""
    profile = reference_profile()
    evidently = EvidentlyDrift(threshold=0.1, share=0.3)
    same = sample(500, seed=21)
    same.loc[::7, "url_count"] = np.nan  # some verdicts without this feature
    shifted = sample(250, seed=22, shifted=True)
    shifted.loc[:20, "body_length"] = shifted["body_length"].max() * 50  # beyond the reference
    shifted.loc[:5, PROBABILITY] = 0.0
    for frame in (same, shifted):
        window = window_of(frame)
        ours = HistogramDrift(threshold=0.1, share=0.3).check(profile, window)
        theirs = evidently.check(profile.frame, window.frame())
        assert set(ours.scores) == set(theirs.scores) and len(ours.scores) == 25
        assert ours.scores == pytest.approx(theirs.scores, abs=1e-9, rel=1e-9)
        assert ours.drifted == theirs.drifted and ours.drift == theirs.drift
    assert ours.drift  # the shifted window


async def test_unknown_version_keeps_its_window_until_the_profile_appears(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    clock = Clock()
    available: set[int] = set()

    def build(version: int) -> Profile:
        if version not in available:
            raise ProfileUnavailableError("unknown-version", f"v{version} is not in MLflow")
        return reference_profile(version)

    deps, published, sink, _ = make_deps(tmp_path, build, clock, window=100)
    caplog.set_level(logging.WARNING)
    await feed(deps, sample(250, seed=9, shifted=True), "early", version=7)
    await asyncio.sleep(0.05)  # the background build fails
    assert deps.profiles.reasons == {7: "unknown-version"}
    await feed(deps, sample(50, seed=10, shifted=True), "more", version=7)
    assert sink.windows == []  # nothing checked, nothing crashed
    # Three full windows wait for the profile (bounded by max_parked), none is lost.
    assert [len(w) for w in deps.windows.parked[(MODEL, 7)]] == [100, 100, 100]
    assert sum("no reference profile: keeping" in r.message for r in caplog.records) == 1
    assert sum("window full but no reference" in r.message for r in caplog.records) == 1
    available.add(7)
    assert tick(deps) == 0  # within profile_retry_s: no new attempt yet
    clock.now += 11
    assert await deps.profiles.wait(7) is not None
    assert tick(deps) == 3  # monitoring resumes without a new verdict, every window checked
    event = await check_window(sink.windows[0], deps)
    assert event is not None and event.model_version == 7 and published == [event]
    assert (tmp_path / "profiles" / MODEL / "v7.parquet").is_file()  # cached per version


async def test_other_models_and_verdicts_without_features_are_not_drift_checked(
    tmp_path: Path,
) -> None:
    deps, _, sink, _ = make_deps(tmp_path, lambda v: reference_profile(v), Clock(), window=10)
    await deps.profiles.wait(1)
    await feed(deps, sample(20, seed=11), "other", version=1)
    assert len(sink.windows) == 2
    rows = sample(20, seed=12).to_dict("records")
    for i, row in enumerate(rows):
        await on_verdict(verdict(floats(row), f"o-{i}", model="someone-else"), 0, i, 0, deps)
        empty = verdict({PROBABILITY: 0.9}, f"e-{i}")
        await on_verdict(empty, 0, 100 + i, 0, deps)
    assert len(sink.windows) == 2
    await on_labeled(EmailLabeled(producer="t", message_key="e-0", label="spam"), deps)
    assert deps.quality.metrics(MODEL, 1).tp == 1  # still joined for live quality


# ------------------------------------------------------------------ live quality
def test_quality_metrics_math() -> None:
    m = QualityMetrics(labels=100, tp=40, fp=5, tn=45, fn=10)
    assert m.precision == pytest.approx(40 / 45)
    assert m.recall == pytest.approx(0.8)
    assert m.f1 == pytest.approx(80 / 95)
    assert m.false_positive_rate == pytest.approx(0.1)
    empty = QualityMetrics(labels=0, tp=0, fp=0, tn=0, fn=0)
    assert empty.as_dict()["f1"] is None and empty.precision is None


def test_join_in_either_order_bounded_and_windowed() -> None:
    quality = LiveQuality(capacity=3, window=4)
    assert quality.verdict("a", MODEL, 1, "spam") is None
    joined = quality.label("a", "spam")
    assert joined is not None and joined.predicted_spam and joined.actual_spam
    assert quality.label("b", "ham") is None  # label first
    joined = quality.verdict("b", MODEL, 1, "spam")
    assert joined is not None and not joined.actual_spam  # a false positive
    assert quality.label("a", "spam") is None  # a repeated label is not counted twice
    for key in "cdefg":
        quality.verdict(key, MODEL, 2, "ham")
    quality.store.flush()  # the join is bounded when stored
    assert quality.label("c", "ham") is None  # forgotten: only the newest 3 verdicts are kept
    for key in "efg":
        quality.label(key, "spam")
    m2 = quality.metrics(MODEL, 2)
    assert (m2.labels, m2.fn) == (3, 3)
    assert quality.metrics(MODEL, 1).as_dict() | {} == {
        "labels": 2, "tp": 1, "fp": 1, "tn": 0, "fn": 0, "precision": 0.5, "recall": 1.0,
        "f1": pytest.approx(2 / 3), "false_positive_rate": 1.0,
    }  # fmt: skip


async def test_quality_drop_raises_one_performance_event_and_writes_status(
    tmp_path: Path,
) -> None:
    deps, published, _, _ = make_deps(
        tmp_path, lambda v: reference_profile(v), Clock(), status_interval_s=0
    )
    for i in range(40):
        predicted = "spam" if i % 2 == 0 else "ham"
        await on_verdict(verdict({PROBABILITY: 0.9 if predicted == "spam" else 0.1}, f"k{i}"),
                         0, i, 0, deps)  # fmt: skip
    for i in range(40):  # the model is right on the first 20 labels, then wrong half the time
        actual = ("spam" if i % 2 == 0 else "ham") if i < 20 or i % 4 < 2 else (
            "ham" if i % 2 == 0 else "spam")  # fmt: skip
        await on_labeled(EmailLabeled(producer="t", message_key=f"k{i}", label=actual), deps)
    assert len(published) == 1  # first crossing only (cooldown)
    event = published[0]
    assert event.kind == "performance" and event.model_version == 1
    drifted = {f.feature: f for f in event.drifted_features}
    assert drifted and set(drifted) <= {"f1", "false_positive_rate"}
    fpr = drifted.get("false_positive_rate")
    assert fpr is None or fpr.score > fpr.threshold == 0.05
    report = read_json(report_path(event.report_uri))
    assert report["metrics"]["labels"] >= 20
    status = read_json(tmp_path / "live_quality.json")
    assert status["model_name"] == MODEL
    v1 = status["versions"]["1"]
    assert v1["labels"] == v1["labels_total"] >= 20 and 0 <= v1["f1"] <= 1


# ------------------------------------------------------------------ webhook
def drift_event() -> DriftDetected:
    return DriftDetected(
        producer="t", model_name=MODEL, model_version=3, window=DriftWindow(size=500),
        drift_share=0.42, report_uri="file:///tmp/r.html", severity="low",
    )  # fmt: skip


async def test_webhook_retries_with_backoff_until_delivered() -> None:
    calls: list[dict[str, Any]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(json.loads(request.content))
        if len(calls) == 1:
            return httpx.Response(503)
        if len(calls) == 2:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(200)

    delays: list[float] = []

    async def sleep(s: float) -> None:
        delays.append(s)

    hook = WebhookNotifier("http://hooks.test/x", transport=httpx.MockTransport(answer),
                           backoff_s=1.0, max_attempts=5, sleep=sleep)  # fmt: skip
    assert await hook.deliver(alert_payload(drift_event()))
    assert len(calls) == 3 and delays == [1.0, 2.0]
    assert "spam-detector v3" in calls[0]["text"] and calls[0]["drift_share"] == 0.42
    await hook.close()


async def test_webhook_gives_up_on_client_errors_and_never_blocks_the_caller() -> None:
    release = asyncio.Event()
    seen: list[int] = []

    async def slow(request: httpx.Request) -> httpx.Response:
        seen.append(1)
        await release.wait()
        return httpx.Response(400)

    class Transport(httpx.AsyncBaseTransport):
        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            return await slow(request)

    hook = WebhookNotifier("http://hooks.test/x", transport=Transport(), max_attempts=5)
    hook.notify(drift_event())  # returns at once although the endpoint hangs
    hook.notify(drift_event())
    await asyncio.sleep(0.05)
    assert seen == [1]
    release.set()
    await hook.close(wait_s=2)
    assert seen == [1, 1]  # 400: one attempt each, no retries


# ------------------------------------------------------------------ state that outlives a crash
class NoReport(EvidentlyDrift):
    """No Evidently (slow) where the report is not the point."""

    def check(self, reference: pd.DataFrame, current: pd.DataFrame) -> Any:
        raise RuntimeError("no report in this test")


class FakeWiring:
    """What spamops_runtime.kafka does with a commit floor: handle a batch of a partition's
    records, ask the floor, commit min(end of batch, floor)."""

    def __init__(self, topic: str, floor: Any) -> None:
        self.topic = topic
        self.floor = floor
        self.committed: dict[int, int] = {}

    def commit(self, ends: dict[int, int]) -> None:
        for partition, end in ends.items():
            floor = self.floor(self.topic, partition)
            self.committed[partition] = end if floor is None else min(end, floor)


async def run_life(
    deps: MonitorDeps,
    sink: ListSink,
    records: list[tuple[int, int, EmailClassified]],
    wiring: FakeWiring,
    evaluated: list[Window],
    *,
    kill_after: int | None = None,
    batch: int = 40,
) -> None:
    """Feed ``records`` from the committed offsets in batches; every other batch the
    checker catches up. ``kill_after``: stop dead (no flush, no commit) after that many."""
    todo = [r for r in records if r[1] >= wiring.committed.get(r[0], 0)]
    handled = 0
    for start in range(0, len(todo), batch):
        ends: dict[int, int] = {}
        for partition, offset, event in todo[start : start + batch]:
            await on_verdict(event, partition, offset, 0, deps)
            ends[partition] = offset + 1
            handled += 1
            if handled == kill_after:
                return  # kill -9: the in-memory windows and unflushed writes are gone
        if (start // batch) % 2:
            while sink.windows:
                window = sink.windows.pop(0)
                await check_window(window, deps)
                evaluated.append(window)
        wiring.commit(ends)


async def test_after_a_kill_mid_window_the_windows_cover_every_verdict_exactly_once(
    tmp_path: Path,
) -> None:
    from spamops_monitor.handlers import commit_floor

    frame = sample(2 * 260, seed=31)
    records = [
        (i % 2, i // 2, verdict(floats(row), f"k{i}"))
        for i, row in enumerate(frame.to_dict("records"))
    ]  # two partitions, 260 verdicts each, interleaved
    evaluated: list[Window] = []
    first, _, sink1, _ = make_deps(
        tmp_path, lambda v: reference_profile(v), Clock(), window=50, reporter=NoReport()
    )
    await first.profiles.wait(1)
    wiring = FakeWiring("emails.verdicts", lambda t, p: commit_floor(t, p, first))
    await run_life(first, sink1, records, wiring, evaluated, kill_after=365)
    assert sink1.windows and first.windows.open  # windows were lost mid-flight
    assert all(wiring.committed[p] < 260 for p in (0, 1))

    second, _, sink2, _ = make_deps(
        tmp_path, lambda v: reference_profile(v), Clock(), window=50, reporter=NoReport()
    )
    await second.profiles.wait(1)
    wiring.floor = lambda t, p: commit_floor(t, p, second)
    await run_life(second, sink2, records, wiring, evaluated)
    for window in sink2.windows:
        await check_window(window, second)
        evaluated.append(window)
    [still_open] = second.windows.open.values()
    counted: dict[int, list[int]] = {0: [], 1: []}
    for window in [*evaluated, still_open]:
        for partition, first_offset in window.first_offsets.items():
            counted[partition] += range(first_offset, window.last_offsets[partition] + 1)
    assert sum(len(w) for w in [*evaluated, still_open]) == 520
    assert sorted(counted[0]) == list(range(260)) == sorted(counted[1])  # once each
    assert wiring.committed == {p: still_open.first_offsets[p] for p in (0, 1)}


async def test_the_label_join_survives_a_crash_without_double_counting(tmp_path: Path) -> None:
    deps, _, _, _ = make_deps(tmp_path, lambda v: reference_profile(v), Clock(), window=50)
    for i in range(30):
        await on_verdict(verdict({PROBABILITY: 0.9}, f"k{i}"), 0, i, 0, deps)
    for i in range(10):
        label = EmailLabeled(producer="t", message_key=f"k{i}", label="spam")
        await on_labeled(label, deps, partition=3, offset=i)
    # the wiring asks the floor before committing labels 0..9: the join is stored first
    from spamops_monitor.handlers import commit_floor

    assert commit_floor("emails.feedback", 3, deps) is None
    for i in range(10, 15):  # handled, not stored, not committed: lost with the process
        label = EmailLabeled(producer="t", message_key=f"k{i}", label="spam")
        await on_labeled(label, deps, partition=3, offset=i)

    again, _, _, _ = make_deps(tmp_path, lambda v: reference_profile(v), Clock(), window=50)
    # Kafka redelivers labels from offset 5 (say the commit of 10 never happened) to 19
    for i in range(5, 20):
        label = EmailLabeled(producer="t", message_key=f"k{i}", label="spam")
        await on_labeled(label, again, partition=3, offset=i)
    metrics = again.quality.metrics(MODEL, 1)
    assert (metrics.labels, metrics.tp) == (20, 20)  # 0..19 once each, verdicts from life 1
    assert again.quality.total_labels(MODEL, 1) == 20


async def test_two_monitor_processes_share_one_label_join(tmp_path: Path) -> None:
    """Two instances may read a key's verdict and its label (different consumer groups,
    partitions assigned independently): the join is in the shared state store."""
    one, _, _, _ = make_deps(tmp_path, lambda v: reference_profile(v), Clock())
    two, _, _, _ = make_deps(tmp_path, lambda v: reference_profile(v), Clock())
    await on_verdict(verdict({PROBABILITY: 0.9}, "a"), 0, 0, 0, one)
    await on_labeled(EmailLabeled(producer="t", message_key="b", label="ham"), one)
    one.store.flush()  # before the commit of either record
    await on_labeled(EmailLabeled(producer="t", message_key="a", label="spam"), two)
    await on_verdict(verdict({PROBABILITY: 0.9}, "b"), 1, 0, 0, two)
    two.store.flush()
    metrics = one.quality.metrics(MODEL, 1)
    assert (metrics.labels, metrics.tp, metrics.fp) == (2, 1, 1)


def test_verdicts_and_labels_are_keyed_alike_and_co_partitioned() -> None:
    from spamops_schemas.topics import EMAILS_FEEDBACK, EMAILS_VERDICTS, topic

    verdicts, labels = topic(EMAILS_VERDICTS), topic(EMAILS_FEEDBACK)
    assert verdicts.key == labels.key == "message_key"
    assert verdicts.partitions == labels.partitions


def test_memory_levels_off_with_many_versions(tmp_path: Path) -> None:
    clock = Clock()
    windows = Windows(size=10, max_age_s=0, min_size=10, clock=clock, max_versions=3)
    row = Observation({"url_count": 1.0}, 0.2, partition=0, offset=0, timestamp_ms=0)
    evicted = []
    for version in range(1, 50):
        for _ in range(25):
            windows.add(MODEL, version, row)
            windows.park_if_full(MODEL, version)
        evicted += windows.evict_versions()
    assert len({*windows.open, *windows.parked}) == 3
    assert len(windows.unsettled) == len(evicted) + sum(
        1 for _ in [*windows.open.values(), *(w for q in windows.parked.values() for w in q)]
    )
    for window in evicted:
        windows.settle(window)
    assert len(windows.unsettled) <= 3 * (1 + windows.max_parked)
    profiles = ProfileStore(
        lambda v: reference_profile(v), None, model_name=MODEL, retry_s=0, max_versions=2
    )

    async def load() -> None:
        for version in range(1, 6):
            await profiles.wait(version)

    asyncio.run(load())
    assert list(profiles.profiles) == [4, 5]


def test_a_label_before_its_verdict_joins_after_a_flush_and_from_another_instance(
    tmp_path: Path,
) -> None:
    # The per-verdict early-label lookup is skipped while the database holds none;
    # a label stored since (by this instance's flush or by another) must still join.
    path = tmp_path / "state.sqlite"
    one = LiveQuality(100, 50, StateStore(path, join_capacity=100, quality_window=50))
    other = LiveQuality(100, 50, StateStore(path, join_capacity=100, quality_window=50))
    assert one.verdict("a", "m", 1, "ham") is None  # no early label anywhere yet
    one.store.flush()
    assert one.label("b", "spam") is None  # label first, kept
    one.store.flush()
    assert one.verdict("b", "m", 1, "spam") == Joined("m", 1, True, True)
    assert other.label("c", "ham") is None  # another instance, same state dir
    other.store.flush()
    assert one.verdict("x", "m", 1, "ham") is None
    one.store.flush()  # the next flush interval reads the database again
    assert one.verdict("c", "m", 1, "spam") == Joined("m", 1, True, False)
