"""Batch scoring (issue 18): raw messages -> verdict rows, with the serving semantics.

The pure part of ``spamops score``: no Ray, no MLflow, no Kafka. Its
dependencies come in as arguments (``ScoringModel``: the version's fitted
feature pipeline, its threshold and a ``predict`` function; an optional
reputation lookup with the inference service's signature), so unit tests run it
directly; ``batch_job.py`` wires it to MLflow, Ray Data, parquet and Kafka.

Serving semantics, step by step as ``spamops_inference.handlers.classify_batch``:

* parse with ``parse_email`` under the inference service's default message
  limit (``MAX_MESSAGE_BYTES``, 10 MiB) and the parser's own default limits;
* features with the version's own pipeline, reputation from the lookup (the
  online store, as serving) or, without one, the unseen-domain defaults
  (``REPUTATION_DEFAULTS``, what ``transform`` does with None);
* P(spam) from the version's booster (the bridge's parity check holds it to
  the ONNX model Triton serves within 1e-6), clipped to [0, 1];
* ``spam`` when P >= the version's threshold (the trainer's, on the run's
  ModelTrained tag; 0.5 when the run has none, like inference).

Nothing is dropped: a message that cannot be parsed or scored gets a row with
``verdict`` None and the reason in ``error`` (the inference service's
dead-letter reasons: ``empty``, ``not-email``, ``too-large``,
``headers-too-large``, ``too-many-headers``; plus ``unreadable``,
``parse-failed`` and ``scoring-failed`` for surprises), and is counted.
"""

from __future__ import annotations

import json
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
from spamops_features.mail import MailParseError, ParsedEmail, message_key, parse_email
from spamops_features.pipeline import FeaturePipeline
from spamops_features.reputation import OnlineReputation
from spamops_schemas import EmailClassified

# The inference service's default SPAMOPS_INFERENCE_MAX_MESSAGE_BYTES.
MAX_MESSAGE_BYTES: Final = 10 * 2**20
BATCH_NOTE: Final = "batch"
PRODUCER: Final = "spamops-batch"

# Reputation of a row: from the online store, the defaults because none was asked
# for / reachable, or the defaults because the store failed during the lookup.
REP_ONLINE: Final = "online"
REP_DEFAULTS: Final = "defaults"
REP_DEGRADED: Final = "degraded"

# (sender domains, now, the emails' Dates) -> reputation; ReputationStore.online.
ReputationLookup = Callable[[Sequence[str], datetime, Sequence[datetime | None]], OnlineReputation]

# One output row per input message, in this schema (``features``: the handcrafted
# values as JSON, for the published verdicts; not written to the output file).
VERDICT_SCHEMA: Final = pa.schema(
    [
        pa.field("index", pa.int64(), nullable=False),
        pa.field("source_path", pa.string(), nullable=False),
        pa.field("source_name", pa.string(), nullable=False),
        pa.field("message_key", pa.string(), nullable=False),
        pa.field("verdict", pa.string(), nullable=True),  # spam | ham | None (error)
        pa.field("spam_probability", pa.float64(), nullable=True),
        pa.field("threshold", pa.float64(), nullable=False),
        pa.field("model_name", pa.string(), nullable=False),
        pa.field("model_version", pa.int64(), nullable=False),
        pa.field("error", pa.string(), nullable=True),  # reason, None when scored
        pa.field("error_detail", pa.string(), nullable=True),
        pa.field("reputation", pa.string(), nullable=True),  # online | defaults | degraded
        pa.field("label", pa.string(), nullable=True),  # a snapshot's label, else None
        pa.field("features", pa.string(), nullable=True),
    ]
)
OUTPUT_COLUMNS: Final = tuple(n for n in VERDICT_SCHEMA.names if n != "features")


@dataclass(frozen=True)
class ScoringModel:
    """One model version as batch scoring uses it."""

    model_name: str
    version: int
    threshold: float
    pipeline: FeaturePipeline
    predict: Callable[[np.ndarray], np.ndarray]  # float32 [n, inputs] -> P(spam) [n]


@dataclass(frozen=True)
class ModelArtifacts:
    """A version's files as bytes: picklable, so Ray ships them to every actor (or node)."""

    model_name: str
    version: int
    run_id: str
    threshold: float
    pipeline_files: dict[str, bytes]  # file name -> bytes of the feature pipeline directory
    booster: bytes  # the run's XGBoost model file (UBJSON)
    parity_max_abs_diff: float | None = None  # the bridge's ONNX vs XGBoost check
    aliases: tuple[str, ...] = ()


def booster_predict(booster: Any) -> Callable[[np.ndarray], np.ndarray]:
    """P(spam) of an ``xgboost.Booster`` on a float32 feature matrix."""
    import xgboost as xgb

    def predict(x: np.ndarray) -> np.ndarray:
        matrix = xgb.DMatrix(np.ascontiguousarray(x, dtype=np.float32))
        return np.asarray(booster.predict(matrix), dtype=np.float64)

    return predict


def load_scoring_model(artifacts: ModelArtifacts, nthread: int | None = None) -> ScoringModel:
    """Load the pipeline and the booster from their bytes (once per Ray actor)."""
    import xgboost as xgb

    with tempfile.TemporaryDirectory(prefix="spamops-batch-") as tmp:
        for name, data in artifacts.pipeline_files.items():
            target = Path(tmp) / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
        pipeline = FeaturePipeline.load(tmp)
    booster = xgb.Booster()
    booster.load_model(bytearray(artifacts.booster))
    if nthread is not None:
        booster.set_param({"nthread": nthread})
    return ScoringModel(
        model_name=artifacts.model_name,
        version=artifacts.version,
        threshold=artifacts.threshold,
        pipeline=pipeline,
        predict=booster_predict(booster),
    )


def _row(item: Mapping[str, Any], model: ScoringModel, key: str, **values: Any) -> dict[str, Any]:
    label = item.get("label")
    return {
        "index": int(item["index"]),
        "source_path": str(item.get("source_path") or ""),
        "source_name": str(item.get("source_name") or ""),
        "message_key": key,
        "verdict": None,
        "spam_probability": None,
        "threshold": float(model.threshold),
        "model_name": model.model_name,
        "model_version": int(model.version),
        "error": None,
        "error_detail": None,
        "reputation": None,
        "label": None if label is None else str(label),
        "features": None,
        **values,
    }


def _error_row(
    item: Mapping[str, Any], model: ScoringModel, raw: bytes | None, reason: str, detail: str
) -> dict[str, Any]:
    key = message_key(raw, None) if raw is not None else f"unreadable:{item.get('index')}"
    return _row(item, model, key, error=reason, error_detail=detail[:500])


@dataclass
class _Parsed:
    item: Mapping[str, Any]
    email: ParsedEmail
    key: str


@dataclass
class _Scored:
    probabilities: np.ndarray
    x: np.ndarray
    reputation: str


def _score(
    parsed: Sequence[_Parsed],
    model: ScoringModel,
    reputation: ReputationLookup | None,
    now: datetime,
) -> _Scored:
    emails = [p.email for p in parsed]
    rep_values: np.ndarray | None = None
    rep_state = REP_DEFAULTS
    if reputation is not None:
        result = reputation([e.sender_domain for e in emails], now, [e.date for e in emails])
        rep_values = result.values
        rep_state = REP_DEGRADED if result.degraded else REP_ONLINE
    x = model.pipeline.transform(emails, rep_values)
    probabilities = np.asarray(model.predict(x), dtype=np.float64).reshape(-1)
    if probabilities.shape != (len(emails),):
        raise ValueError(f"{len(emails)} rows but {probabilities.shape} probabilities")
    return _Scored(np.clip(probabilities, 0.0, 1.0), x, rep_state)


def score_rows(
    items: Sequence[Mapping[str, Any]],
    model: ScoringModel,
    *,
    reputation: ReputationLookup | None = None,
    now: datetime | None = None,
    max_message_bytes: int = MAX_MESSAGE_BYTES,
) -> list[dict[str, Any]]:
    """One verdict row (``VERDICT_SCHEMA``) per input item, in input order.

    ``items``: mappings with ``index``, ``raw`` (bytes, None if unreadable),
    ``source_path``, ``source_name`` and optionally ``label``. ``reputation``:
    the online lookup (None: the unseen-domain defaults); ``now``: the instant
    the reputation is read at (one for the whole job).
    """
    now = now or datetime.now(UTC)
    out: dict[int, dict[str, Any]] = {}
    parsed: list[_Parsed] = []
    for position, item in enumerate(items):
        raw = item.get("raw")
        if raw is None:
            out[position] = _error_row(item, model, None, "unreadable", "no bytes were read")
            continue
        raw = bytes(raw)
        try:
            email = parse_email(raw, max_bytes=max_message_bytes)
        except MailParseError as exc:
            out[position] = _error_row(item, model, raw, exc.reason, str(exc))
            continue
        except Exception as exc:  # parse_email promises not to; a job must not stop for it
            out[position] = _error_row(item, model, raw, "parse-failed", repr(exc))
            continue
        parsed.append(_Parsed(item, email, message_key(raw, email)))
    positions = [i for i in range(len(items)) if i not in out]
    groups: list[tuple[list[int], list[_Parsed]]] = [(positions, parsed)] if parsed else []
    while groups:
        where, batch = groups.pop()
        try:
            scored = _score(batch, model, reputation, now)
        except Exception as exc:
            if len(batch) > 1:  # find the one that fails: score the rest without it
                groups += [([w], [p]) for w, p in zip(where, batch, strict=True)]
                continue
            item = batch[0].item
            out[where[0]] = _row(
                item, model, batch[0].key, error="scoring-failed", error_detail=repr(exc)[:500]
            )
            continue
        features = model.pipeline.handcrafted_from_matrix(scored.x)
        for i, (w, p) in enumerate(zip(where, batch, strict=True)):
            probability = float(scored.probabilities[i])
            out[w] = _row(
                p.item,
                model,
                p.key,
                verdict="spam" if probability >= model.threshold else "ham",
                spam_probability=probability,
                reputation=scored.reputation,
                features=json.dumps(features[i]),
            )
    return [out[i] for i in range(len(items))]


def rows_table(rows: Sequence[Mapping[str, Any]]) -> pa.Table:
    """Verdict rows as an Arrow table of ``VERDICT_SCHEMA``."""
    return pa.Table.from_pylist([dict(r) for r in rows], schema=VERDICT_SCHEMA)


@dataclass
class Summary:
    """What one job produced."""

    messages: int = 0
    spam: int = 0
    ham: int = 0
    errors: int = 0
    errors_by_reason: dict[str, int] = field(default_factory=dict)
    reputation: dict[str, int] = field(default_factory=dict)  # rows per reputation state

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "messages": self.messages,
            "spam": self.spam,
            "ham": self.ham,
            "errors": self.errors,
            "errors_by_reason": dict(self.errors_by_reason),
            "reputation_rows": dict(self.reputation),
        }


def summarize(table: pa.Table) -> Summary:
    """Counts of verdicts, errors (by reason) and reputation states of a verdict table."""
    verdicts = Counter(table.column("verdict").to_pylist())
    reasons = Counter(r for r in table.column("error").to_pylist() if r is not None)
    reputation = Counter(r for r in table.column("reputation").to_pylist() if r is not None)
    return Summary(
        messages=table.num_rows,
        spam=verdicts.get("spam", 0),
        ham=verdicts.get("ham", 0),
        errors=sum(reasons.values()),
        errors_by_reason=dict(sorted(reasons.items())),
        reputation=dict(sorted(reputation.items())),
    )


def verdict_events(
    table: pa.Table,
    *,
    environment: str = "production",
    note: str = BATCH_NOTE,
    correlation_id: str | None = None,
) -> list[EmailClassified]:
    """EmailClassified events of the scored rows (errors have none), marked as batch verdicts.

    ``producer`` is ``spamops-batch`` and ``note`` says ``batch``, so a reader of
    emails.verdicts tells them from the stream's; ``latency_ms`` is 0 (there is
    no inbox record); one ``correlation_id`` for the whole job.
    """
    extra: dict[str, Any] = {} if correlation_id is None else {"correlation_id": correlation_id}
    events = []
    for row in table.to_pylist():
        if row["verdict"] is None:
            continue
        events.append(
            EmailClassified(
                producer=PRODUCER,
                message_key=row["message_key"],
                verdict=row["verdict"],
                spam_probability=row["spam_probability"],
                threshold=row["threshold"],
                model_name=row["model_name"],
                model_version=row["model_version"],
                environment=environment,  # type: ignore[arg-type]
                features=json.loads(row["features"]) if row["features"] else {},
                latency_ms=0.0,
                note=note,
                **extra,
            )
        )
    return events
