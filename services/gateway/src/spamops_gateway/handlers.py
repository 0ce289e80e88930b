"""The gateway's logic: a question over HTTP becomes an inbox record, its answer a verdict.

Plain async functions and small classes with their dependencies passed in
(``GatewayDeps``, typed as Protocols); ``app.py`` wires them to Kafka, Redis
and FastAPI (``api.py``). The gateway never calls Triton: it publishes the raw
email to ``emails.inbox`` and answers with the EmailClassified that inference
publishes on ``emails.verdicts``.

**The message key.** Every request gets a fresh key, ``gw-<uuid4>``, set as
the inbox record's key, which inference keeps as the verdict's
``message_key`` and its record key. Not the Message-ID: two requests for
mails with the same Message-ID (a resend, a test mail, a forged header) must
each get their own answer, and a key the caller cannot choose cannot collide
with another caller's. The prefix also tells the gateway which verdicts answer
one of its requests: only those are kept in Redis (the stream carries every
verdict of the platform, which is not the gateway's to cache). Labels
(``POST /v1/feedback``) name the same key.

**Reply routing with several instances.** Every instance reads all of
``emails.verdicts`` (and ``emails.inbox.dlq``) in consumer groups of its own,
``spamops-gateway-<instance id>``, starting at the latest offset the first
time. A verdict answers the instance's waiting request with that key, if any
(``PendingReplies``), and is written to Redis with a TTL, so
``GET /v1/verdicts/{key}`` works on any instance. The offsets are committed
only after that write (the platform's delivery rule), so an instance that was
down catches up on restart: the verdicts of requests accepted before it
stopped still land in Redis. While waiting ends in a timeout the instance asks
Redis once more (another instance may have stored the verdict) before
answering 504 with the key.

**A refused email.** Inference dead-letters what it cannot classify (a
message bomb, not an email, no model yet) on ``emails.inbox.dlq`` with the
reason in ``x-error-reason``; the waiting request is answered at once with that
reason instead of running into the timeout, and the refusal is kept in Redis
like a verdict (a later verdict for the key, after a redrive, replaces it).
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from spamops_schemas import EmailClassified, EmailLabeled

from spamops_gateway.metrics import OUTCOMES, PENDING

logger = logging.getLogger(__name__)

SERVICE = "gateway"
KEY_PREFIX = "gw-"
ENVIRONMENTS = ("production", "staging")
Environment = Literal["production", "staging"]


@dataclass(frozen=True)
class Refusal:
    """Inference dead-lettered the email: why (``x-error-reason``) and its message."""

    message_key: str
    reason: str
    message: str = ""


Outcome = EmailClassified | Refusal


class StoreUnavailableError(Exception):
    """The outcome store (Redis) cannot be reached right now."""


class InboxPublisher(Protocol):
    """Publishes a raw email to emails.inbox and returns once Kafka acknowledged it."""

    async def publish_email(
        self, raw: bytes, *, key: str, environment: str, correlation_id: str
    ) -> None: ...


class FeedbackPublisher(Protocol):
    """Publishes an EmailLabeled to emails.feedback."""

    async def publish_label(self, event: EmailLabeled) -> None: ...


class OutcomeStore(Protocol):
    """Verdicts and refusals by message key, kept for a while (Redis).

    Raises ``StoreUnavailableError`` while the store cannot be reached.
    """

    async def get(self, key: str) -> Outcome | None: ...

    async def put_verdicts(self, verdicts: Sequence[EmailClassified]) -> None: ...

    async def put_refusals(self, refusals: Sequence[Refusal]) -> None: ...

    async def ping(self) -> bool: ...


class Explainer(Protocol):
    """Why a verdict came out as it did (the deciding version's per-input contributions).

    Returns the JSON-ready explanation; raises LookupError when the mail or the version
    cannot be found, ``ExplainerUnavailableError`` while MLflow or Kafka is away.
    """

    async def explain(self, verdict: EmailClassified, *, top: int) -> dict[str, object]: ...


class ExplainerUnavailableError(Exception):
    """What an explanation needs (MLflow, Kafka) cannot be reached right now."""


class OverloadedError(Exception):
    """Too many requests wait for a verdict in this instance."""


class VerdictTimeoutError(Exception):
    """No verdict in time; the email was (or may yet be) published under ``key``."""

    def __init__(self, key: str) -> None:
        super().__init__(f"no verdict for {key} in time")
        self.key = key


def new_message_key() -> str:
    """A fresh message key of the gateway: ``gw-<uuid4>``."""
    return f"{KEY_PREFIX}{uuid.uuid4()}"


def is_gateway_key(key: str | None) -> bool:
    """Whether a message key was issued by the gateway (its verdict is cached)."""
    return key is not None and key.startswith(KEY_PREFIX)


def environment_of(header: str | None) -> Environment | None:
    """The ``X-Environment`` header as inference reads it; None when it is neither value."""
    value = (header or "production").strip().lower()
    if value == "production":
        return "production"
    if value == "staging":
        return "staging"
    return None


class PendingReplies:
    """The requests of this instance waiting for their verdict, by message key."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._waiting: dict[str, asyncio.Future[Outcome]] = {}

    def register(self, key: str) -> asyncio.Future[Outcome]:
        """A future the verdict (or refusal) of ``key`` will complete."""
        if len(self._waiting) >= self.capacity:
            raise OverloadedError(f"{len(self._waiting)} requests already wait for a verdict")
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self._waiting[key] = future
        PENDING.set(len(self._waiting))
        return future

    def resolve(self, outcome: Outcome) -> bool:
        """Answer the request waiting for this outcome's key; whether one was waiting."""
        future = self._waiting.get(outcome.message_key)
        if future is None or future.done():
            return False
        future.set_result(outcome)
        return True

    def discard(self, key: str) -> None:
        """Forget ``key`` (answered, timed out or cancelled)."""
        self._waiting.pop(key, None)
        PENDING.set(len(self._waiting))

    def __len__(self) -> int:
        return len(self._waiting)

    def __contains__(self, key: object) -> bool:
        return key in self._waiting


@dataclass
class GatewayDeps:
    """What the gateway needs from the outside world."""

    inbox: InboxPublisher
    feedback: FeedbackPublisher
    store: OutcomeStore
    pending: PendingReplies = field(default_factory=PendingReplies)
    verdict_timeout_s: float = 5.0
    publish_timeout_s: float = 10.0
    explainer: Explainer | None = None  # None: the explanation route answers 501


async def submit(
    raw: bytes, environment: Environment, deps: GatewayDeps, *, correlation_id: str
) -> str:
    """Publish ``raw`` under a fresh key; the key, once Kafka acknowledged the record.

    Raises TimeoutError when Kafka does not acknowledge within the publish
    timeout (the record may still arrive: the caller may resubmit, at least once).
    """
    key = new_message_key()
    await asyncio.wait_for(
        deps.inbox.publish_email(
            raw, key=key, environment=environment, correlation_id=correlation_id
        ),
        deps.publish_timeout_s,
    )
    return key


async def classify(
    raw: bytes, environment: Environment, deps: GatewayDeps, *, correlation_id: str
) -> Outcome:
    """Publish ``raw`` and wait for its verdict or refusal (publish and wait share the timeout).

    Raises ``VerdictTimeoutError`` with the key when neither came in time (the
    verdict is stored when it comes: GET it later), ``OverloadedError`` when too
    many requests wait already.
    """
    key = new_message_key()
    future = deps.pending.register(key)  # before publishing: the verdict may be quick
    began = time.monotonic()
    outcome: Outcome | None
    try:
        try:
            async with asyncio.timeout(deps.verdict_timeout_s):
                await deps.inbox.publish_email(
                    raw, key=key, environment=environment, correlation_id=correlation_id
                )
                outcome = await future
        except TimeoutError:
            outcome = await _stored_outcome(deps.store, key)
            if outcome is None:
                OUTCOMES.labels("timeout").inc()
                logger.warning(
                    "no verdict in time",
                    extra={"message_key": key, "waited_s": round(time.monotonic() - began, 3)},
                )
                raise VerdictTimeoutError(key) from None
    finally:
        deps.pending.discard(key)
    OUTCOMES.labels("refused" if isinstance(outcome, Refusal) else "verdict").inc()
    return outcome


async def _stored_outcome(store: OutcomeStore, key: str) -> Outcome | None:
    """The store's outcome of ``key``, None when absent or the store is away."""
    try:
        return await store.get(key)
    except StoreUnavailableError:
        return None


async def verdict(key: str, deps: GatewayDeps) -> Outcome | None:
    """The stored verdict (or refusal) of ``key``, None when unknown or expired."""
    return await deps.store.get(key)


async def label(
    key: str,
    value: Literal["spam", "ham"],
    deps: GatewayDeps,
    *,
    labelled_by: str,
    correlation_id: str,
) -> EmailLabeled:
    """Publish an EmailLabeled for ``key`` to emails.feedback; the event sent."""
    event = EmailLabeled(
        producer=SERVICE,
        message_key=key,
        label=value,
        labelled_by=labelled_by,
        correlation_id=correlation_id,
    )
    await asyncio.wait_for(deps.feedback.publish_label(event), deps.publish_timeout_s)
    return event


async def on_verdicts(verdicts: Sequence[EmailClassified], deps: GatewayDeps) -> None:
    """Verdicts read from emails.verdicts: answer waiting requests, store the gateway's.

    Returns once they are stored (the caller commits after): a store that is
    away raises, and the batch is read again.
    """
    ours = [v for v in verdicts if is_gateway_key(v.message_key)]
    for one in ours:  # first: a waiting request need not wait for Redis
        deps.pending.resolve(one)
    if ours:
        await deps.store.put_verdicts(ours)


async def on_refusals(refusals: Sequence[Refusal], deps: GatewayDeps) -> None:
    """Dead letters of the gateway's inbox records: answer waiting requests, store them."""
    ours = [r for r in refusals if is_gateway_key(r.message_key)]
    for one in ours:
        deps.pending.resolve(one)
    if ours:
        await deps.store.put_refusals(ours)


class RateLimiter:
    """A token bucket per API key: ``rate`` requests a second, ``burst`` at once."""

    def __init__(
        self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # name -> (tokens, at)

    def acquire(self, name: str) -> float:
        """Take a token for ``name``: 0 when allowed, else the seconds until one is there."""
        if self.rate <= 0:
            return 0.0
        now = self.clock()
        tokens, at = self._buckets.get(name, (float(self.burst), now))
        tokens = min(float(self.burst), tokens + (now - at) * self.rate)
        if tokens >= 1:
            self._buckets[name] = (tokens - 1, now)
            return 0.0
        self._buckets[name] = (tokens, now)
        return (1 - tokens) / self.rate


def retry_after(seconds: float) -> str:
    """A Retry-After header value: whole seconds, at least 1."""
    return str(max(1, math.ceil(seconds)))
