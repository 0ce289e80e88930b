"""The milter's logic: a collected mail -> the gateway's answer -> what the MTA is told.

Pure functions on typed inputs, with the gateway behind a Protocol (``Gateway``)
so tests use a small fake; ``app.py`` wires them to libmilter (pymilter).

- ``CollectedMessage`` rebuilds the raw RFC 822 bytes from what the MTA hands
  over (header fields one by one, then body chunks): CRLF line ends, header
  fields in their order with their folding, the blank line, the body unchanged.
- ``decide`` turns the outcome (a ``Classification`` or ``Unchecked``) and the
  policy into a ``Decision``: accept, reject (550 5.7.1) or quarantine, and the
  ``X-Spam-*`` headers to add.
- Whatever goes wrong on the way to a verdict (gateway unreachable, timeout,
  504 without a verdict, 5xx, a refusal, an answer that cannot be read, a mail
  too large to send) ends as ``Unchecked``: the mail is accepted and tagged
  ``X-Spam-Verdict: unchecked``. The milter never loses mail.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final, Literal, Protocol

from spamops_milter.metrics import GATEWAY_SECONDS, MESSAGES, UNCHECKED_TOTAL
from spamops_milter.settings import Environment, Policy

logger = logging.getLogger(__name__)

HEADER_VERDICT = "X-Spam-Verdict"
HEADER_PROBABILITY = "X-Spam-Probability"
HEADER_MODEL = "X-Spam-Model"
# Headers the milter writes; copies that arrive with a mail are removed (a sender must
# not be able to pre-tag its own spam as ham).
OWN_HEADERS: tuple[str, ...] = (HEADER_VERDICT, HEADER_PROBABILITY, HEADER_MODEL)

UNCHECKED: Final = "unchecked"
Label = Literal["spam", "ham", "unchecked"]
UncheckedReason = Literal[
    "unreachable",  # connection refused, DNS, reset: no answer at all
    "timeout",  # no answer within gateway_timeout_s
    "no-verdict",  # 504: the gateway had no verdict in time
    "gateway-error",  # other 5xx
    "refused",  # 4xx: bad key, too large, rate limited, ...
    "bad-response",  # 200 whose body is not a verdict
    "too-large",  # not sent: larger than max_message_bytes
    "error",  # anything else (a bug): still accepted
]


@dataclass(frozen=True)
class Classification:
    """The gateway's verdict (the EmailClassified fields the milter uses)."""

    message_key: str
    verdict: Literal["spam", "ham"]
    spam_probability: float
    threshold: float
    model_name: str
    model_version: int
    environment: str


@dataclass(frozen=True)
class Unchecked:
    """No verdict: why, in a word (a metric label) and in a sentence (the log)."""

    reason: UncheckedReason
    detail: str = ""
    status: int | None = None  # the gateway's HTTP status, when it answered
    message_key: str | None = None


Outcome = Classification | Unchecked


class Gateway(Protocol):
    """Asks the platform for a verdict. Never raises for the gateway's failures:
    they are ``Unchecked`` outcomes (``judge`` still guards against a bug)."""

    def classify(self, raw: bytes, *, environment: Environment) -> Outcome: ...


def parse_classification(payload: Any) -> Classification:
    """The verdict in a 200 answer (EmailClassified JSON); ValueError if it is not one.

    Unknown fields are ignored, as for every event of the platform.
    """
    if not isinstance(payload, Mapping):
        raise ValueError(f"expected a JSON object, got {type(payload).__name__}")
    try:
        verdict = payload["verdict"]
        probability = float(payload["spam_probability"])
        threshold = float(payload["threshold"])
        version = payload["model_version"]
        result = Classification(
            message_key=str(payload["message_key"]),
            verdict=verdict,
            spam_probability=probability,
            threshold=threshold,
            model_name=str(payload["model_name"]),
            model_version=int(version),
            environment=str(payload.get("environment", "")),
        )
    except KeyError as exc:
        raise ValueError(f"missing field {exc.args[0]!r}") from None
    except (TypeError, ValueError) as exc:
        raise ValueError(f"bad field value: {exc}") from None
    if verdict not in ("spam", "ham"):
        raise ValueError(f"verdict must be spam or ham, not {verdict!r}")
    if not 0.0 <= probability <= 1.0 or math.isnan(probability):
        raise ValueError(f"spam_probability out of [0, 1]: {probability}")
    if isinstance(version, bool) or float(version) != int(version):
        raise ValueError(f"model_version must be an integer, not {version!r}")
    return result


# --------------------------------------------------------------------------- decisions


class Action(StrEnum):
    """What the MTA is told at the end of the message."""

    ACCEPT = "accept"
    REJECT = "reject"
    QUARANTINE = "quarantine"  # accepted, then held by the MTA (Postfix: hold queue)


@dataclass(frozen=True)
class Reply:
    """An SMTP reply for a rejected mail."""

    code: str = "550"
    xcode: str = "5.7.1"
    text: str = "Message rejected as spam"


@dataclass(frozen=True)
class Decision:
    """The milter's answer for one mail."""

    action: Action
    label: Label
    headers: tuple[tuple[str, str], ...]
    reply: Reply | None = None  # with REJECT
    quarantine_reason: str | None = None  # with QUARANTINE


def format_probability(probability: float) -> str:
    """``0.9731``: four decimals, enough to compare with a threshold by eye."""
    return f"{probability:.4f}"


def spam_headers(outcome: Outcome) -> tuple[tuple[str, str], ...]:
    """The X-Spam-* headers for an outcome (unchecked: the verdict header alone)."""
    if isinstance(outcome, Unchecked):
        return ((HEADER_VERDICT, UNCHECKED),)
    return (
        (HEADER_VERDICT, outcome.verdict),
        (HEADER_PROBABILITY, format_probability(outcome.spam_probability)),
        (HEADER_MODEL, f"{outcome.model_name}:{outcome.model_version}"),
    )


def decide(
    outcome: Outcome,
    *,
    policy: Policy,
    reject_threshold: float,
    reject_reply: str = Reply.text,
) -> Decision:
    """Policy: what happens to a mail with this outcome.

    - ``tag``: always accepted, with the headers;
    - ``reject``: spam with ``spam_probability >= reject_threshold`` is refused
      (550 5.7.1); everything else accepted and tagged;
    - ``quarantine``: the same spam is accepted, tagged and quarantined.
    Unchecked mail is always accepted (and tagged unchecked), whatever the policy.
    """
    headers = spam_headers(outcome)
    if isinstance(outcome, Unchecked):
        return Decision(Action.ACCEPT, UNCHECKED, headers)
    label: Label = outcome.verdict
    acts = outcome.verdict == "spam" and outcome.spam_probability >= reject_threshold
    if acts and policy == "reject":
        return Decision(Action.REJECT, label, headers, reply=Reply(text=reject_reply))
    if acts and policy == "quarantine":
        reason = (
            f"spamops: spam {format_probability(outcome.spam_probability)} >= "
            f"{format_probability(reject_threshold)} ({outcome.model_name}:{outcome.model_version})"
        )
        return Decision(Action.QUARANTINE, label, headers, quarantine_reason=reason)
    return Decision(Action.ACCEPT, label, headers)


# --------------------------------------------------------------------------- the message


def header_line(name: str, value: bytes, *, leading_space: bool) -> bytes:
    """One header field as it stood in the message, CRLF-terminated.

    With the milter protocol's HDR_LEADSPC option the MTA hands the value exactly
    as it followed the colon (leading space and folding included); without it the
    MTA has dropped the space after the colon, which is put back. Line ends inside
    a folded value are written CRLF, whatever the MTA used.
    """
    text = value.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    separator = b":" if leading_space else b": "
    return name.encode("ascii", "surrogateescape") + separator + text + b"\r\n"


@dataclass
class CollectedMessage:
    """One mail as the MTA hands it over, collected up to a size limit."""

    max_bytes: int
    leading_space: bool = True
    headers: list[tuple[str, bytes]] = field(default_factory=list)
    body_chunks: list[bytes] = field(default_factory=list)
    size: int = 0
    too_large: bool = False

    def add_header(self, name: str | bytes, value: str | bytes) -> None:
        """One header field (name without the colon, value as the MTA sends it)."""
        if isinstance(name, bytes):
            name = name.decode("ascii", "surrogateescape")
        if isinstance(value, str):
            value = value.encode("utf-8", "surrogateescape")
        self._grow(len(name) + len(value) + 4)
        if not self.too_large:
            self.headers.append((name, value))

    def add_body(self, chunk: bytes) -> None:
        """A chunk of the body (the MTA sends it with CRLF line ends)."""
        self._grow(len(chunk))
        if not self.too_large:
            self.body_chunks.append(chunk)

    def _grow(self, n: int) -> None:
        self.size += n
        if self.size > self.max_bytes and not self.too_large:
            # Stop holding it: the mail goes on unchecked, memory stays bounded.
            self.too_large = True
            self.headers.clear()
            self.body_chunks.clear()

    def own_header_counts(self) -> dict[str, int]:
        """How many of the milter's own X-Spam-* headers arrived with the mail, by name."""
        wanted = {name.lower(): name for name in OWN_HEADERS}
        counts: dict[str, int] = {}
        for name, _ in self.headers:
            own = wanted.get(name.lower())
            if own is not None:
                counts[own] = counts.get(own, 0) + 1
        return counts

    def raw(self) -> bytes:
        """The RFC 822 bytes: header fields, the blank line, the body."""
        head = b"".join(
            header_line(name, value, leading_space=self.leading_space)
            for name, value in self.headers
        )
        return head + b"\r\n" + b"".join(self.body_chunks)


# --------------------------------------------------------------------------- one mail


@dataclass(frozen=True)
class MilterDeps:
    """What ``judge`` needs: the gateway and the policy settings."""

    gateway: Gateway
    policy: Policy
    reject_threshold: float
    environment: Environment = "production"
    reject_reply: str = Reply.text


def classify(message: CollectedMessage, deps: MilterDeps) -> Outcome:
    """Ask the gateway about one mail; every failure is an ``Unchecked`` outcome."""
    if message.too_large:
        return Unchecked("too-large", f"{message.size} bytes > limit {message.max_bytes}: not sent")
    raw = message.raw()
    started = time.perf_counter()
    try:
        outcome = deps.gateway.classify(raw, environment=deps.environment)
    except Exception as exc:  # a bug in a client must not cost a mail
        logger.exception("gateway client failed")
        outcome = Unchecked("error", f"{type(exc).__name__}: {exc}")
    finally:
        GATEWAY_SECONDS.observe(time.perf_counter() - started)
    return outcome


def judge(message: CollectedMessage, deps: MilterDeps) -> Decision:
    """Classify one mail, decide, count and log it."""
    outcome = classify(message, deps)
    decision = decide(
        outcome,
        policy=deps.policy,
        reject_threshold=deps.reject_threshold,
        reject_reply=deps.reject_reply,
    )
    MESSAGES.labels(decision.label, decision.action.value).inc()
    if isinstance(outcome, Unchecked):
        UNCHECKED_TOTAL.labels(outcome.reason).inc()
        logger.warning(
            "mail accepted unchecked: %s",
            outcome.reason,
            extra={
                "reason": outcome.reason,
                "detail": outcome.detail,
                "gateway_status": outcome.status,
                "message_key": outcome.message_key,
                "size": message.size,
            },
        )
    else:
        logger.info(
            "mail judged",
            extra={
                "message_key": outcome.message_key,
                "verdict": outcome.verdict,
                "spam_probability": outcome.spam_probability,
                "model": f"{outcome.model_name}:{outcome.model_version}",
                "action": decision.action.value,
                "size": message.size,
            },
        )
    return decision
