"""The monitor's outside world: MLflow (reference profiles, aliases), report and status
files under the state directory, and the alert webhook (httpx)."""

from __future__ import annotations

import asyncio
import json
import logging
import tempfile
import time
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
from spamops_schemas.registry import PARITY_ARTIFACT, PIPELINE_ARTIFACT, TAG_RUN

from spamops_monitor.drift import (
    DRIFT_COLUMNS,
    PROBABILITY,
    DriftResult,
    Profile,
    Window,
    prune_reports,
)
from spamops_monitor.metrics import PROFILE_UNAVAILABLE, WEBHOOK

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
    ) -> Path:
        """Write the report pair: the Evidently HTML (when ``evidently`` has a report) and a
        JSON summary with the stream's scores (``result``) and Evidently's. Returns the HTML
        path, or the JSON path without HTML. Keeps the newest ``keep`` (+ drifts)."""
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
    text = (
        f":warning: spamops {what} ({event.severity}) on {event.model_name} "
        f"v{event.model_version}: drift share {event.drift_share:.2f} over "
        f"{event.window.size} verdicts"
        + (f"; {features}" if features else "")
        + (f". Report: {event.report_uri}" if event.report_uri else "")
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
