"""The monitor's outside world: MLflow (reference profiles, aliases, the reports' monitoring
runs), report and status files under the state directory, the Evidently UI workspace, and
the alert webhook (httpx)."""

from __future__ import annotations

import asyncio
import json
import logging
import queue
import tempfile
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
from spamops_runtime.model_registry import serving_aliases
from spamops_schemas import DriftDetected
from spamops_schemas.registry import (
    MONITORING_EXPERIMENT,
    MONITORING_REPORTS_ARTIFACT,
    MONITORING_RUN_NAME,
    PARITY_ARTIFACT,
    PIPELINE_ARTIFACT,
    RUN_TAG_MONITORED_MODEL,
    RUN_TAG_MONITORED_VERSION,
    TAG_RUN,
)

from spamops_monitor.drift import (
    DRIFT_COLUMNS,
    PROBABILITY,
    DriftResult,
    Profile,
    Window,
    prune_reports,
)
from spamops_monitor.metrics import PROFILE_UNAVAILABLE, REPORT_UPLOADS, UI_SNAPSHOTS, WEBHOOK

logger = logging.getLogger(__name__)


class ProfileUnavailableError(Exception):
    """No reference profile for a version (yet): ``reason`` says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


# ------------------------------------------------------------------ profiles
def reference_frame(
    features: np.ndarray, probabilities: np.ndarray | None, *, max_rows: int, seed: int = 0
) -> pd.DataFrame:
    """Handcrafted features (columns in HANDCRAFTED_NAMES order) and spam probabilities.

    The probabilities (the test split's, from the parity sample) are repeated
    cyclically to the feature rows' count, so their proportions stay the same.
    """
    names = [c for c in DRIFT_COLUMNS if c != PROBABILITY]
    frame = pd.DataFrame(np.asarray(features, dtype=np.float64), columns=names)
    if probabilities is not None and len(probabilities):
        frame[PROBABILITY] = np.resize(np.asarray(probabilities, dtype=np.float64), len(frame))
    if len(frame) > max_rows:
        frame = frame.sample(n=max_rows, random_state=seed).reset_index(drop=True)
    return frame


class MlflowProfiles:
    """Builds a version's reference profile from what its training run logged.

    Features: the handcrafted values of the TRAIN split of the run's snapshot
    (params ``dataset_uri`` / ``dataset_sha256``); when that file cannot be read
    here, the test split's model inputs in ``parity/test_sample.npz`` (through the
    run's ``feature_pipeline``). Spam probabilities: that sample's ``p``.
    """

    def __init__(self, tracking_uri: str, model_name: str, *, max_rows: int) -> None:
        import mlflow

        self._mlflow = mlflow
        self._client = mlflow.MlflowClient(tracking_uri=tracking_uri)
        self.tracking_uri = tracking_uri
        self.model_name = model_name
        self.max_rows = max_rows

    def aliases(self) -> dict[str, int]:
        """alias -> version (staging, production: those that exist)."""
        return serving_aliases(self.tracking_uri, self.model_name)

    def _run_id(self, version: int) -> str:
        from mlflow.exceptions import MlflowException

        try:
            mv = self._client.get_model_version(self.model_name, str(version))
        except MlflowException as exc:
            raise ProfileUnavailableError(
                "unknown-version", f"{self.model_name} v{version} is not in MLflow: {exc}"
            ) from exc
        run_id = (mv.tags or {}).get(TAG_RUN) or mv.run_id
        if not run_id:
            raise ProfileUnavailableError("no-run", f"{self.model_name} v{version} has no run")
        return str(run_id)

    def _download(self, run_id: str, path: str, dst: str) -> Path | None:
        from mlflow.exceptions import MlflowException

        try:
            local = self._mlflow.artifacts.download_artifacts(
                run_id=run_id, artifact_path=path, dst_path=dst, tracking_uri=self.tracking_uri
            )
        except (MlflowException, OSError):
            return None
        return Path(local)

    def build(self, version: int) -> Profile:
        """The profile of ``version`` (ProfileUnavailableError when it cannot be built)."""
        from spamops_features.pipeline import FeaturePipeline

        run_id = self._run_id(version)
        params = self._client.get_run(run_id).data.params
        with tempfile.TemporaryDirectory() as tmp:
            parity = self._download(run_id, PARITY_ARTIFACT, tmp)
            x = p = None
            if parity is not None:
                with np.load(parity, allow_pickle=False) as sample:
                    x, p = sample["x"], sample["p"]
            features, source = self._snapshot_features(params), "snapshot:train"
            if features is None and x is not None:
                directory = self._download(run_id, PIPELINE_ARTIFACT, tmp)
                if directory is not None:
                    pipeline = FeaturePipeline.load(directory, verify=False)
                    rows = pipeline.handcrafted_from_matrix(np.asarray(x))
                    features = np.array([[r[n] for n in DRIFT_COLUMNS[:-1]] for r in rows])
                    source = "parity:test"
        if features is None or len(features) == 0:
            raise ProfileUnavailableError(
                "no-reference-data",
                f"run {run_id} of v{version}: neither its snapshot nor its parity sample "
                "and feature pipeline could be read",
            )
        frame = reference_frame(features, p, max_rows=self.max_rows)
        return Profile(self.model_name, version, frame, source)

    @staticmethod
    def _snapshot_features(params: dict[str, str]) -> np.ndarray | None:
        from spamops_features.handcrafted import handcrafted_matrix, prepare
        from spamops_features.mail import MailParseError, parse_email
        from spamops_features.snapshot_io import SnapshotError, load_snapshot

        uri = params.get("dataset_uri")
        if not uri:
            return None
        try:
            snapshot = load_snapshot(uri, params.get("dataset_sha256") or None)
        except SnapshotError as exc:
            logger.warning("reference snapshot unavailable", extra={"uri": uri, "error": str(exc)})
            return None
        emails = []
        for raw in snapshot.loc[snapshot["split"] == "train", "raw"]:
            try:
                emails.append(parse_email(bytes(raw)))
            except MailParseError:
                continue
        if not emails:
            return None
        return handcrafted_matrix(emails, [prepare(e) for e in emails])


class ProfileStore:
    """Reference profiles per version: memory, then disk cache, then a background build.

    ``get`` never blocks: a missing profile is built in a worker thread, retried
    every ``retry_s`` while it fails; until then the caller keeps its window.
    """

    def __init__(
        self,
        build: Callable[[int], Profile],
        cache_dir: Path | None,
        *,
        model_name: str,
        retry_s: float,
        clock: Callable[[], float] = time.monotonic,
        max_versions: int = 8,
    ) -> None:
        self.build = build
        self.max_versions = max_versions
        self.cache_dir = cache_dir
        self.model_name = model_name
        self.retry_s = retry_s
        self.clock = clock
        self.profiles: OrderedDict[int, Profile] = OrderedDict()  # least recently used first
        self.loading: dict[int, asyncio.Task[None]] = {}
        self.failed_at: dict[int, float] = {}
        self.reasons: dict[int, str] = {}

    def _cache_path(self, version: int) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / self.model_name / f"v{version}.parquet"

    def _read_cache(self, version: int) -> Profile | None:
        path = self._cache_path(version)
        if path is None or not path.is_file():
            return None
        try:
            frame = pd.read_parquet(path)
            meta = json.loads(path.with_suffix(".json").read_text())
        except (OSError, ValueError) as exc:
            logger.warning("unreadable profile cache", extra={"path": str(path), "error": str(exc)})
            return None
        return Profile(self.model_name, version, frame, str(meta.get("source", "cache")))

    def _write_cache(self, profile: Profile) -> None:
        path = self._cache_path(profile.version)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".parquet.tmp")
        profile.frame.to_parquet(tmp, index=False)
        tmp.replace(path)
        meta = {
            "model_name": profile.model_name,
            "version": profile.version,
            "source": profile.source,
            "rows": len(profile.frame),
            "columns": list(profile.frame.columns),
            "built_at": datetime.now(UTC).isoformat(),
        }
        path.with_suffix(".json").write_text(json.dumps(meta, indent=1))

    def _load(self, version: int) -> Profile:
        cached = self._read_cache(version)
        if cached is not None:
            return cached
        profile = self.build(version)
        self._write_cache(profile)
        return profile

    async def _run(self, version: int) -> None:
        try:
            profile = await asyncio.to_thread(self._load, version)
        except ProfileUnavailableError as exc:
            self._failed(version, exc.reason, str(exc))
        except Exception as exc:  # MLflow down, a broken artifact: retried later
            self._failed(version, "error", f"{type(exc).__name__}: {exc}")
        else:
            self.profiles[version] = profile
            while len(self.profiles) > self.max_versions:
                self.profiles.popitem(last=False)  # rebuilt from the disk cache if needed
            self.failed_at.pop(version, None)
            had_failed = self.reasons.pop(version, None)
            logger.info(
                "reference profile ready" + (": monitoring resumes" if had_failed else ""),
                extra={"version": version, "rows": len(profile.frame), "source": profile.source},
            )
        finally:
            self.loading.pop(version, None)

    def _failed(self, version: int, reason: str, message: str) -> None:
        PROFILE_UNAVAILABLE.labels(reason).inc()
        self.failed_at[version] = self.clock()
        for stale in list(self.failed_at)[: -4 * self.max_versions]:  # bounded
            self.failed_at.pop(stale, None)
            self.reasons.pop(stale, None)
        if self.reasons.get(version) != reason:  # one log line per version and reason
            logger.warning(
                "no reference profile: keeping the newest verdicts of this version "
                "until it is available",
                extra={"version": version, "reason": reason, "error": message[:500]},
            )
        self.reasons[version] = reason

    def get(self, version: int) -> Profile | None:
        """The profile if ready; otherwise start (or wait for) its build and return None."""
        profile = self.profiles.get(version)
        if profile is not None:
            self.profiles.move_to_end(version)
            return profile
        if version in self.loading:
            return None
        failed = self.failed_at.get(version)
        if failed is not None and self.clock() - failed < self.retry_s:
            return None
        self.loading[version] = asyncio.get_running_loop().create_task(self._run(version))
        return None

    async def wait(self, version: int) -> Profile | None:
        """Build (or wait for) the profile now: for start-up and tests."""
        if self.get(version) is None and version in self.loading:
            await asyncio.shield(self.loading[version])
        return self.profiles.get(version)


# ------------------------------------------------------------------ files
class ReportWriter:
    """Each check as HTML (Evidently) and JSON under ``<monitor>/reports/<model>/v<version>/``."""

    def __init__(self, root: Path, keep: int) -> None:
        self.root = root
        self.keep = keep

    def save(
        self,
        window: Window,
        result: DriftResult,
        *,
        drift: bool,
        evidently: DriftResult | None = None,
        report_url: str = "",
    ) -> Path:
        """Write the report pair: the Evidently HTML (when ``evidently`` has a report) and a
        JSON summary with the stream's scores (``result``), Evidently's and the report's page
        in the Evidently UI (``report_url``). Returns the HTML path, or the JSON path without
        HTML. Keeps the newest ``keep`` (+ drifts)."""
        directory = self.root / window.model_name / f"v{window.version}"
        directory.mkdir(parents=True, exist_ok=True)
        stem = datetime.now(UTC).strftime("%Y%m%dT%H%M%S_%f") + ("-drift" if drift else "")
        html = directory / f"{stem}.html"
        snapshot = evidently.report if evidently is not None else None
        if snapshot is not None:
            snapshot.save_html(str(html))
        summary = {
            "model_name": window.model_name,
            "model_version": window.version,
            "window": json.loads(window.describe().model_dump_json()),
            "method": result.method,
            "threshold": result.threshold,
            "drift_share": result.share,
            "drift": result.drift,
            "scores": result.scores,
            "drifted_features": [f.model_dump() for f in result.drifted],
            "evidently_scores": evidently.scores if evidently is not None else None,
            "report_url": report_url,
            "evidently": snapshot.dict() if snapshot is not None else None,
        }
        path = directory / f"{stem}.json"
        path.write_text(json.dumps(summary, indent=1, default=str))
        prune_reports(directory, self.keep)
        return html if snapshot is not None else path

    def save_json(self, model_name: str, version: int, name: str, payload: Any) -> Path:
        """A JSON-only report (quality drops)."""
        directory = self.root / model_name / f"v{version}"
        directory.mkdir(parents=True, exist_ok=True)
        stem = datetime.now(UTC).strftime("%Y%m%dT%H%M%S_%f") + f"-{name}-drift"
        path = directory / f"{stem}.json"
        path.write_text(json.dumps(payload, indent=1, default=str))
        return path


def report_files(path: Path) -> list[Path]:
    """The files of a report ``ReportWriter.save`` returned: HTML + JSON, or the JSON."""
    return [path, path.with_suffix(".json")] if path.suffix == ".html" else [path]


# ------------------------------------------------------------------ Evidently UI
PROJECT_NAMESPACE = uuid.UUID("6f0d1c8e-5b7a-4f43-9a51-2f7f3c1d9e20")  # spamops' own
PROTECTED_FILE = "spamops-drift-snapshots.txt"  # per project: snapshots a DriftDetected links


def project_id(model_name: str) -> uuid.UUID:
    """The Evidently project of a model: the same id in every monitor process (uuid5), so
    two processes sharing a workspace never create two projects for one model."""
    return uuid.uuid5(PROJECT_NAMESPACE, f"spamops/{model_name}")


class EvidentlyWorkspace:
    """Adds each report's snapshot to a local Evidently workspace (``evidently ui`` serves it).

    One project per model name; a snapshot per report, named after the version and window.
    Keeps the newest ``keep`` snapshots per project, and always those of a drift (their ids
    are listed in ``PROTECTED_FILE`` in the project's directory: DriftDetected links them).
    ``add`` never raises: a failure is logged and gives no link.
    """

    def __init__(self, path: Path, ui_url: str, keep: int) -> None:
        self.path = path
        self.ui_url = ui_url.rstrip("/")
        self.keep = keep
        self._workspace: Any = None
        self._projects: set[str] = set()

    def _open(self) -> Any:
        if self._workspace is None:
            from evidently.ui.workspace import Workspace

            self.path.mkdir(parents=True, exist_ok=True)
            self._workspace = Workspace(str(self.path))
        return self._workspace

    def project(self, model_name: str) -> str:
        """The model's project id (created on first use)."""
        from evidently.sdk.models import ProjectModel

        pid = str(project_id(model_name))
        if pid not in self._projects:
            workspace = self._open()
            if workspace.get_project(pid) is None:
                workspace.add_project(
                    ProjectModel(
                        id=pid,
                        name=model_name,
                        description=f"spamops monitor: drift reports of {model_name}, one "
                        "snapshot per checked window of a serving version",
                    )
                )
            self._projects.add(pid)
        return pid

    def url(self, project: str, snapshot: str) -> str:
        """The snapshot's page in the Evidently UI."""
        return f"{self.ui_url}/projects/{project}/reports/{snapshot}"

    def add(self, window: Window, snapshot: Any, *, drift: bool) -> str:
        """Add ``snapshot`` (an Evidently 0.7 Snapshot) of ``window``; its UI URL, or ""."""
        started = time.perf_counter()
        try:
            pid = self.project(window.model_name)
            described = window.describe()
            when = (described.end or datetime.now(UTC)).strftime("%Y-%m-%d %H:%M:%SZ")
            name = f"v{window.version} {when} {len(window)} verdicts" + (" drift" if drift else "")
            ref = self._open().add_run(pid, snapshot, name=name)
            snapshot_id = str(ref.id)
            directory = self.path / pid
            if drift:
                with (directory / PROTECTED_FILE).open("a") as handle:
                    handle.write(snapshot_id + "\n")
        except Exception:
            UI_SNAPSHOTS.labels("failed").inc()
            logger.warning(
                "cannot add the report to the Evidently workspace (the files are kept)",
                extra={"workspace": str(self.path), "version": window.version},
                exc_info=True,
            )
            return ""
        UI_SNAPSHOTS.labels("added").inc()
        try:
            self._prune(pid, directory)
        except Exception:  # e.g. another monitor process pruned the same snapshot first
            logger.warning("cannot prune the Evidently workspace", exc_info=True)
        logger.debug("snapshot added", extra={"s": round(time.perf_counter() - started, 3)})
        return self.url(pid, snapshot_id)

    def _prune(self, pid: str, directory: Path) -> None:
        protected_file = directory / PROTECTED_FILE
        protected = set(protected_file.read_text().split()) if protected_file.is_file() else set()
        # Evidently's snapshot ids are UUIDv7: sorted by id is sorted by time.
        ids = sorted(str(i) for i in self._open().list_runs(pid))
        prunable = [i for i in ids if i not in protected]
        for old in prunable[: max(0, len(prunable) - self.keep)]:
            self._open().delete_run(pid, old)


# ------------------------------------------------------------------ MLflow reports
@dataclass(frozen=True)
class ReportUpload:
    """One report for the MLflow monitoring run of its version."""

    model_name: str
    version: int
    files: list[Path]
    metrics: dict[str, float]
    at: float  # Unix seconds of the check: the metrics' step


class MlflowReports:
    """Logs reports to MLflow from a daemon thread: ``submit`` never waits.

    Per model version one run, ``monitoring-v<version>`` in the experiment
    ``spamops-monitoring`` (created on first use, ended at once so it is never left
    RUNNING; MLflow accepts artifacts and metrics on a finished run). Each report's files
    go under ``drift_reports/``, its drift share and scores are metrics. When MLflow is
    slow or down an upload fails after the client's own retries: it is logged and
    dropped, the local files stay; a full queue drops the oldest report.
    """

    def __init__(self, tracking_uri: str, *, queue_size: int = 20, client: Any = None) -> None:
        self.tracking_uri = tracking_uri
        self._client = client
        self._queue: queue.Queue[ReportUpload] = queue.Queue(queue_size)
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._runs: dict[tuple[str, int], str] = {}
        self._experiment: str | None = None

    @property
    def client(self) -> Any:
        """The MlflowClient (made on first use, in the worker thread)."""
        if self._client is None:
            import mlflow

            self._client = mlflow.MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def submit(self, upload: ReportUpload) -> None:
        """Queue a report (the oldest is dropped, and logged, when the queue is full)."""
        with self._lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._drain, name="mlflow-reports", daemon=True
                )
                self._thread.start()
            while True:
                try:
                    self._queue.put_nowait(upload)
                    return
                except queue.Full:
                    try:
                        dropped = self._queue.get_nowait()
                    except queue.Empty:
                        continue
                    self._queue.task_done()
                    REPORT_UPLOADS.labels("dropped").inc()
                    logger.warning(
                        "MLflow report uploads behind: oldest report not logged (kept locally)",
                        extra={
                            "version": dropped.version,
                            "files": [str(f) for f in dropped.files],
                        },
                    )

    def _drain(self) -> None:
        while True:
            upload = self._queue.get()
            try:
                self.upload(upload)
            except Exception as exc:  # MLflow down, a pruned file: the local copy is kept
                REPORT_UPLOADS.labels("failed").inc()
                logger.warning(
                    "cannot log the report to MLflow (kept locally)",
                    extra={
                        "version": upload.version,
                        "files": [str(f) for f in upload.files],
                        "error": f"{type(exc).__name__}: {exc}"[:500],
                    },
                )
            finally:
                self._queue.task_done()

    def run_id(self, model_name: str, version: int) -> str:
        """The monitoring run of ``model_name`` v``version`` (found by its tags, or created)."""
        key = (model_name, version)
        run_id = self._runs.get(key)
        if run_id is not None:
            return run_id
        client = self.client
        if self._experiment is None:
            experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
            if experiment is None:
                from mlflow.exceptions import MlflowException

                try:
                    self._experiment = client.create_experiment(
                        MONITORING_EXPERIMENT, tags={"spamops.owner": "monitor"}
                    )
                except MlflowException:  # another monitor process created it first
                    experiment = client.get_experiment_by_name(MONITORING_EXPERIMENT)
                    if experiment is None:
                        raise
            if experiment is not None:
                self._experiment = experiment.experiment_id
        found = client.search_runs(
            [self._experiment],
            filter_string=f"tags.`{RUN_TAG_MONITORED_MODEL}` = '{model_name}' "
            f"and tags.`{RUN_TAG_MONITORED_VERSION}` = '{version}'",
            order_by=["attributes.start_time ASC"],
            max_results=1,
        )
        if found:
            run_id = str(found[0].info.run_id)
        else:
            run = client.create_run(
                self._experiment,
                run_name=MONITORING_RUN_NAME.format(version=version),
                tags={RUN_TAG_MONITORED_MODEL: model_name, RUN_TAG_MONITORED_VERSION: str(version)},
            )
            run_id = str(run.info.run_id)
            client.set_terminated(run_id, "FINISHED")
        self._runs[key] = run_id
        return run_id

    def upload(self, upload: ReportUpload) -> str:
        """Log one report now (in the caller's thread); returns the run id."""
        from mlflow.entities import Metric

        run_id = self.run_id(upload.model_name, upload.version)
        for path in upload.files:
            self.client.log_artifact(run_id, str(path), MONITORING_REPORTS_ARTIFACT)
        step, timestamp = int(upload.at), int(upload.at * 1000)
        metrics = [
            Metric(key, float(value), timestamp, step)
            for key, value in upload.metrics.items()
            if np.isfinite(value)
        ]
        if metrics:
            self.client.log_batch(run_id, metrics=metrics)
        REPORT_UPLOADS.labels("logged").inc()
        return run_id

    def close(self, wait_s: float = 5.0) -> None:
        """Give queued reports ``wait_s`` to go out (the daemon thread dies with the process)."""
        deadline = time.monotonic() + wait_s
        while self._queue.unfinished_tasks and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._queue.unfinished_tasks:
            logger.warning(
                "reports not logged to MLflow at shutdown (kept locally)",
                extra={"queued": self._queue.unfinished_tasks},
            )


def report_metrics(result: DriftResult) -> dict[str, float]:
    """What a monitoring run records per check: the drift share, the drifted-column count
    and each column's score (``psi.<column>``)."""
    metrics = {"drift_share": result.share, "drifted_columns": float(len(result.drifted))}
    metrics.update({f"{result.method}.{c}": s for c, s in result.scores.items()})
    return metrics


def write_json_atomically(path: Path, payload: Any) -> None:
    """Write ``payload`` to ``path`` so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=1, sort_keys=True, default=str))
    tmp.replace(path)


# ------------------------------------------------------------------ webhook
def alert_payload(event: DriftDetected) -> dict[str, Any]:
    """The JSON POSTed per DriftDetected: a Slack-compatible ``text`` and the fields."""
    features = ", ".join(f"{f.feature} {f.statistic}={f.score:.3f}" for f in event.drifted_features)
    what = "data drift" if event.kind == "data" else "quality drop"
    link = event.report_url or event.report_uri  # the browsable page first
    text = (
        f":warning: spamops {what} ({event.severity}) on {event.model_name} "
        f"v{event.model_version}: drift share {event.drift_share:.2f} over "
        f"{event.window.size} verdicts"
        + (f"; {features}" if features else "")
        + (f". Report: {link}" if link else "")
    )
    return {
        "text": text,
        "event_id": str(event.event_id),
        "event_type": event.event_type,
        "kind": event.kind,
        "model_name": event.model_name,
        "model_version": event.model_version,
        "severity": event.severity,
        "drift_share": event.drift_share,
        "drifted_features": [f.model_dump() for f in event.drifted_features],
        "window": json.loads(event.window.model_dump_json()),
        "report_uri": event.report_uri,
        "report_url": event.report_url,
        "occurred_at": event.occurred_at.isoformat(),
        "correlation_id": event.correlation_id,
    }


@dataclass
class WebhookNotifier:
    """POSTs alerts from a background task with retries; ``notify`` never waits."""

    url: str
    timeout_s: float = 5.0
    max_attempts: int = 6
    backoff_s: float = 1.0
    max_backoff_s: float = 60.0
    queue_size: int = 1000
    transport: httpx.AsyncBaseTransport | None = None
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    _queue: asyncio.Queue[dict[str, Any]] | None = field(default=None, init=False)
    _worker: asyncio.Task[None] | None = field(default=None, init=False)
    _client: httpx.AsyncClient | None = field(default=None, init=False)

    def notify(self, event: DriftDetected) -> None:
        """Queue an alert (dropped, and logged, when the queue is full)."""
        if self._queue is None:
            self._queue = asyncio.Queue(self.queue_size)
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        try:
            self._queue.put_nowait(alert_payload(event))
        except asyncio.QueueFull:
            WEBHOOK.labels("dropped").inc()
            logger.error("webhook queue full: alert dropped", extra={"event_id": event.event_id})

    async def _drain(self) -> None:
        assert self._queue is not None
        while True:
            payload = await self._queue.get()
            try:
                await self.deliver(payload)
            except Exception:  # never let one alert stop the worker
                logger.exception("webhook delivery crashed")
            finally:
                self._queue.task_done()

    async def deliver(self, payload: dict[str, Any]) -> bool:
        """POST with retries (doubling backoff); True when a 2xx answer came."""
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout_s, transport=self.transport)
        delay = self.backoff_s
        for attempt in range(1, self.max_attempts + 1):
            try:
                response = await self._client.post(self.url, json=payload)
                if response.is_success:
                    WEBHOOK.labels("delivered").inc()
                    logger.info(
                        "alert delivered",
                        extra={"event_id": payload.get("event_id"), "attempt": attempt},
                    )
                    return True
                problem = f"HTTP {response.status_code}"
                # A client error does not get better by retrying (but 408 / 429 may).
                retryable = response.status_code >= 500 or response.status_code in (408, 429)
            except httpx.HTTPError as exc:
                problem, retryable = f"{type(exc).__name__}: {exc}", True
            if not retryable or attempt >= self.max_attempts:
                break
            WEBHOOK.labels("retried").inc()
            logger.warning(
                "alert delivery failed, retrying",
                extra={"error": problem, "attempt": attempt, "retry_in_s": delay},
            )
            await self.sleep(delay)
            delay = min(delay * 2, self.max_backoff_s)
        WEBHOOK.labels("failed").inc()
        logger.error(
            "alert not delivered", extra={"event_id": payload.get("event_id"), "error": problem}
        )
        return False

    async def close(self, wait_s: float = 5.0) -> None:
        """Give queued alerts ``wait_s`` to go out, then stop."""
        if self._queue is not None and self._worker is not None and not self._worker.done():
            try:
                await asyncio.wait_for(self._queue.join(), wait_s)
            except TimeoutError:
                logger.warning(
                    "alerts still queued at shutdown", extra={"queued": self._queue.qsize()}
                )
        if self._worker is not None:
            self._worker.cancel()
        if self._client is not None:
            await self._client.aclose()
