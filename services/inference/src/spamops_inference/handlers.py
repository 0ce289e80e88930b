"""The inference stream's logic: a batch of raw inbox records -> verdicts and dead letters.

Plain async functions with their dependencies passed in (``InferenceDeps``);
``app.py`` wires them to Kafka. One batch uses the serving models of one
instant (``ModelCatalog.snapshot``), so features and model always match.

Routing: header ``x-environment: staging`` -> the staging model; absent or
``production`` -> production. When no production model exists yet, production
requests are classified by staging and the verdict says so in ``note``; when
no model exists at all, the records are dead-lettered with reason ``no-model``
(nothing is lost: the dead-letter topic keeps them for a replay).

Every record is parsed before any model is looked up, within the parser limits
of the settings: a message bomb is dead-lettered with the parser's reason
(``too-large``, ``headers-too-large``, ``too-many-headers``, ``not-email``,
``empty``) whether or not a model is serving, and the rest of the batch goes on.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

import numpy as np
from spamops_features.mail import MailParseError, ParsedEmail, message_key, parse_email
from spamops_features.reputation import OnlineReputation
from spamops_schemas import EmailClassified, EmailLabeled, InboxRecordRef

from spamops_inference.adapters import (
    AmbiguousKeyError,
    ModelNotServedError,
    RecentSenders,
    TritonUnavailableError,
)
from spamops_inference.ledger import AppliedLabels, MemoryAppliedLabels
from spamops_inference.metrics import (
    END_TO_END_SECONDS,
    LABELS_REFUSED,
    MESSAGES_IN,
    REPUTATION_DEGRADED,
    TRITON_RETRIES,
    TRITON_SECONDS,
    VERDICTS,
)
from spamops_inference.serving import PRODUCTION, STAGING, ModelCatalog, ServingModel
from spamops_inference.settings import InferenceSettings

logger = logging.getLogger(__name__)

SERVICE = "inference"
ENVIRONMENT_HEADER = "x-environment"
NO_PRODUCTION_NOTE = "no production model yet: classified by the staging model"


class Scorer(Protocol):
    """Scores feature rows with a pinned model version (Triton)."""

    async def score(self, model: str, version: int, x: np.ndarray) -> np.ndarray: ...


# (sender domains, now, the emails' Dates): days since first seen at min(now, Date).
ReputationLookup = Callable[[Sequence[str], datetime, Sequence[datetime | None]], OnlineReputation]
ReputationPush = Callable[[str, str, datetime], object]


@dataclass(frozen=True)
class InboxRecord:
    """One raw inbox record."""

    topic: str
    partition: int
    offset: int
    key: str | None
    value: bytes
    headers: dict[str, str]
    timestamp_ms: int


# A dead letter must fit the dead-letter topic: a longer value is cut and these say so.
H_DEAD_LETTER_TRUNCATED = "x-dead-letter-truncated"  # the original value's length in bytes
H_DEAD_LETTER_SHA256 = "x-dead-letter-sha256"  # sha256 of the original value
H_DEAD_LETTER_HEADERS_DROPPED = "x-dead-letter-headers-dropped"  # original headers left out
# What dead_letter adds (error headers, the message cut at 2,000 characters) plus record overhead.
DEAD_LETTER_OVERHEAD = 8 * 1024


def fit_dead_letter(record: InboxRecord, max_bytes: int) -> tuple[bytes, dict[str, str]]:
    """The value and headers of ``record``'s dead letter, at most ``max_bytes`` in all.

    Unchanged when they fit (the normal case: the inbox topic's limit is below
    the dead-letter topic's). Otherwise the original headers are left out if they
    alone do not fit, and the value is cut, with its original length and sha256
    in headers, so a refused message bomb cannot make its own dead letter fail
    (and the batch be redelivered forever).
    """
    headers = dict(record.headers)
    room = max_bytes - DEAD_LETTER_OVERHEAD - len((record.key or "").encode())
    header_bytes = sum(len(k.encode()) + len(v.encode()) for k, v in headers.items())
    if header_bytes > room // 2:
        headers = {H_DEAD_LETTER_HEADERS_DROPPED: str(len(headers))}
        header_bytes = 0
    room = max(0, room - header_bytes - 256)  # 256: the headers added here
    if len(record.value) <= room:
        return record.value, headers
    headers[H_DEAD_LETTER_TRUNCATED] = str(len(record.value))
    headers[H_DEAD_LETTER_SHA256] = hashlib.sha256(record.value).hexdigest()
    return record.value[:room], headers


@dataclass(frozen=True)
class Refused:
    """A record that gets a dead letter instead of a verdict."""

    record: InboxRecord
    reason: str
    message: str


@dataclass
class BatchResult:
    """What one batch produced, in input order for the verdicts."""

    verdicts: list[tuple[InboxRecord, EmailClassified]] = field(default_factory=list)
    refused: list[Refused] = field(default_factory=list)


@dataclass
class InferenceDeps:
    """What the stream needs from the outside world."""

    catalog: ModelCatalog
    scorer: Scorer
    settings: InferenceSettings
    reputation: ReputationLookup | None = None
    push_label: ReputationPush | None = None
    applied_labels: AppliedLabels = field(default_factory=MemoryAppliedLabels)
    senders: RecentSenders = field(default_factory=RecentSenders)
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep
    # Reads the aliases from MLflow again (a ModelRegistered/ModelPromoted may still be
    # on its way while records for the new model already arrive); at most every
    # ``refresh_every_s`` seconds.
    refresh: Callable[[], Awaitable[None]] | None = None
    refresh_every_s: float = 5.0
    last_refresh: float = float("-inf")


@dataclass(frozen=True)
class _Parsed:
    record: InboxRecord
    email: ParsedEmail
    environment: str
    key: str


def _parse(record: InboxRecord, settings: InferenceSettings) -> _Parsed | Refused:
    if not record.value:
        return Refused(record, "empty", "the record has no bytes")
    if len(record.value) > settings.max_message_bytes:
        return Refused(
            record,
            "too-large",
            f"{len(record.value)} bytes > limit {settings.max_message_bytes}",
        )
    environment = (record.headers.get(ENVIRONMENT_HEADER) or PRODUCTION).strip().lower()
    if environment not in (STAGING, PRODUCTION):
        return Refused(record, "bad-environment", f"x-environment {environment!r}")
    try:
        email = parse_email(
            record.value,
            max_bytes=settings.max_message_bytes,
            max_header_bytes=settings.max_header_bytes,
            max_headers=settings.max_headers,
            max_lines=settings.max_lines,
            max_parts=settings.max_mime_parts,
            max_depth=settings.max_mime_depth,
            max_text_chars=settings.max_text_chars,
        )
    except MailParseError as exc:
        return Refused(record, exc.reason, str(exc))
    return _Parsed(record, email, environment, record.key or message_key(record.value, email))


async def _score(deps: InferenceDeps, model: ServingModel, x: np.ndarray) -> np.ndarray:
    """Triton scores; while Triton is unreachable, wait and retry (the batch stays uncommitted)."""
    pause = 0.2
    while True:
        began = time.perf_counter()
        try:
            scores = await deps.scorer.score(model.triton_model, model.version, x)
        except ModelNotServedError:
            # The catalogue is stale (a switch whose event is still on its way, or a
            # rollback that unloaded this version): read the aliases again, then let the
            # wiring retry the batch with them instead of asking for this version forever.
            if deps.refresh is not None:
                now = time.monotonic()
                if now - deps.last_refresh >= deps.refresh_every_s:
                    deps.last_refresh = now
                    await deps.refresh()
            raise
        except TritonUnavailableError as exc:
            TRITON_RETRIES.inc()
            logger.warning(
                "triton unreachable, retrying",
                extra={"retry_in_s": pause, "triton_model": model.triton_model, "error": str(exc)},
            )
            await deps.sleep(pause)
            pause = min(pause * 2, deps.settings.triton_retry_max_s)
            continue
        TRITON_SECONDS.observe(time.perf_counter() - began)
        return scores


def _reputation(deps: InferenceDeps, emails: Sequence[ParsedEmail]) -> np.ndarray | None:
    if deps.reputation is None:
        return None
    # Each email is looked up at min(now, its plausible Date), as the trainer does
    # (reputation.reputation_times): a replayed mail is not years old at serving.
    result = deps.reputation(
        [e.sender_domain for e in emails], datetime.now(UTC), [e.date for e in emails]
    )
    if result.degraded:
        REPUTATION_DEGRADED.inc()
    return result.values


async def classify_batch(records: Sequence[InboxRecord], deps: InferenceDeps) -> BatchResult:
    """Verdicts for the parsable, routable records; dead letters (with reasons) for the rest."""
    MESSAGES_IN.inc(len(records))
    result = BatchResult()
    models = deps.catalog.snapshot()
    by_environment: dict[str, list[_Parsed]] = {PRODUCTION: [], STAGING: []}
    for record in records:
        parsed = _parse(record, deps.settings)
        if isinstance(parsed, Refused):
            result.refused.append(parsed)
        else:
            by_environment[parsed.environment].append(parsed)
    missing = (by_environment[PRODUCTION] and not models) or (
        by_environment[STAGING] and STAGING not in models
    )
    if missing and deps.refresh is not None:
        now = time.monotonic()
        if now - deps.last_refresh >= deps.refresh_every_s:
            deps.last_refresh = now
            await deps.refresh()
            models = deps.catalog.snapshot()
    verdicts: dict[int, tuple[InboxRecord, EmailClassified]] = {}
    for environment, items in by_environment.items():
        if not items:
            continue
        model, note = models.get(environment), ""
        if model is None and environment == PRODUCTION and STAGING in models:
            model, note = models[STAGING], NO_PRODUCTION_NOTE
        if model is None:
            result.refused += [
                Refused(p.record, "no-model", f"no {environment} model is registered yet")
                for p in items
            ]
            continue
        emails = [p.email for p in items]
        reputation = _reputation(deps, emails)
        x = model.pipeline.transform(emails, reputation)
        probabilities = await _score(deps, model, x)
        shadow_model = models.get(STAGING) if deps.settings.shadow else None
        shadow: np.ndarray | None = None
        if shadow_model is not None and environment == PRODUCTION and shadow_model != model:
            x_shadow = shadow_model.pipeline.transform(emails, reputation)
            shadow = await _score(deps, shadow_model, x_shadow)
        shadow_version = shadow_model.version if shadow is not None and shadow_model else None
        features = model.pipeline.handcrafted_from_matrix(x)
        now_ms = deps.clock() * 1000
        clipped = np.clip(probabilities, 0.0, 1.0).tolist()
        labels: Counter[str] = Counter()
        for i, item in enumerate(items):
            p = float(clipped[i])
            latency = max(0.0, now_ms - item.record.timestamp_ms)
            verdict = EmailClassified(
                producer=SERVICE,
                message_key=item.key,
                verdict="spam" if p >= model.threshold else "ham",
                spam_probability=p,
                threshold=model.threshold,
                model_name=model.model_name,
                model_version=model.version,
                environment=environment,  # type: ignore[arg-type]
                features=features[i],
                latency_ms=latency,
                shadow_probability=float(shadow[i]) if shadow is not None else None,
                shadow_version=shadow_version,
                note=note,
                inbox_partition=item.record.partition,
                inbox_offset=item.record.offset,
            )
            labels[verdict.verdict] += 1
            END_TO_END_SECONDS.observe(latency / 1000)
            deps.senders.remember(
                item.key,
                InboxRecordRef(item.record.partition, item.record.offset),
                item.email.sender_domain,
            )
            verdicts[id(item.record)] = (item.record, verdict)
        for label, count in labels.items():
            VERDICTS.labels(label, str(model.version), environment).inc(count)
    result.verdicts = [verdicts[id(r)] for r in records if id(r) in verdicts]
    return result


async def on_email_labeled(event: EmailLabeled, deps: InferenceDeps) -> None:
    """EmailLabeled -> the sender's reputation in Feast (online and offline)."""
    if deps.push_label is None:
        return
    try:
        domain = event.sender_domain or deps.senders.domain(event.message_key, event.inbox_record)
    except AmbiguousKeyError as exc:
        LABELS_REFUSED.labels("ambiguous-key").inc()
        logger.warning(
            f"label refused: {exc}; it names no inbox record (copy inbox_partition and "
            "inbox_offset from the verdict): reputation unchanged",
            extra={"message_key": event.message_key},
        )
        return
    if not domain:
        logger.warning(
            "label for a message whose sender is unknown here: reputation unchanged",
            extra={"message_key": event.message_key},
        )
        return
    label_id = str(event.event_id)
    if await asyncio.to_thread(deps.applied_labels.applied, label_id):
        logger.info("label already applied: not counted twice", extra={"label_id": label_id})
        return
    await asyncio.to_thread(deps.push_label, domain, event.label, event.occurred_at)
    # Marked after the push: only a crash between these two lines can count a label twice.
    await asyncio.to_thread(deps.applied_labels.mark, label_id)
