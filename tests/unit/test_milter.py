"""The milter's logic without an MTA: policy decisions, headers, the rebuilt message,
the gateway client's answers (httpx MockTransport) and failures -> unchecked."""

from __future__ import annotations

import email
import email.policy
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import REGISTRY
from spamops_milter.adapters import HttpGateway
from spamops_milter.handlers import (
    Action,
    Classification,
    CollectedMessage,
    Decision,
    MilterDeps,
    Outcome,
    Unchecked,
    classify,
    decide,
    header_line,
    judge,
    parse_classification,
    spam_headers,
)
from spamops_milter.settings import MilterSettings
from spamops_runtime.settings import PlatformSettings

SPAM = Classification("<k@x>", "spam", 0.99, 0.5, "spam-detector", 7, "production")
BORDERLINE = Classification("<k@x>", "spam", 0.6, 0.5, "spam-detector", 7, "production")
HAM = Classification("<k@x>", "ham", 0.02, 0.5, "spam-detector", 7, "production")
DOWN = Unchecked("unreachable", "ConnectError")


# --------------------------------------------------------------------------- policy


@pytest.mark.parametrize(
    ("outcome", "policy", "action", "label"),
    [
        (SPAM, "tag", Action.ACCEPT, "spam"),
        (HAM, "tag", Action.ACCEPT, "ham"),
        (DOWN, "tag", Action.ACCEPT, "unchecked"),
        (SPAM, "reject", Action.REJECT, "spam"),
        (BORDERLINE, "reject", Action.ACCEPT, "spam"),  # spam below the reject threshold
        (HAM, "reject", Action.ACCEPT, "ham"),
        (DOWN, "reject", Action.ACCEPT, "unchecked"),  # never lose mail
        (SPAM, "quarantine", Action.QUARANTINE, "spam"),
        (BORDERLINE, "quarantine", Action.ACCEPT, "spam"),
        (HAM, "quarantine", Action.ACCEPT, "ham"),
        (DOWN, "quarantine", Action.ACCEPT, "unchecked"),
    ],
)
def test_policy_decides_the_action(
    outcome: Outcome, policy: Any, action: Action, label: str
) -> None:
    decision = decide(outcome, policy=policy, reject_threshold=0.9)
    assert decision.action is action
    assert decision.label == label
    assert (decision.reply is not None) == (action is Action.REJECT)
    assert (decision.quarantine_reason is not None) == (action is Action.QUARANTINE)


def test_reject_threshold_is_inclusive_and_the_reply_is_550_5_7_1() -> None:
    at = Classification("<k@x>", "spam", 0.9, 0.5, "m", 1, "production")
    decision = decide(at, policy="reject", reject_threshold=0.9, reject_reply="No spam here")
    assert decision.action is Action.REJECT
    assert decision.reply is not None
    assert (decision.reply.code, decision.reply.xcode, decision.reply.text) == (
        "550",
        "5.7.1",
        "No spam here",
    )
    # A ham with a high probability (a model with a high threshold) is never rejected.
    odd_ham = Classification("<k@x>", "ham", 0.95, 0.97, "m", 1, "production")
    assert decide(odd_ham, policy="reject", reject_threshold=0.9).action is Action.ACCEPT


def test_quarantine_reason_names_the_probability_and_the_model() -> None:
    decision = decide(SPAM, policy="quarantine", reject_threshold=0.9)
    assert decision.quarantine_reason == "spamops: spam 0.9900 >= 0.9000 (spam-detector:7)"
    assert decision.headers == spam_headers(SPAM)  # quarantined mail is tagged too


def test_header_values() -> None:
    assert spam_headers(SPAM) == (
        ("X-Spam-Verdict", "spam"),
        ("X-Spam-Probability", "0.9900"),
        ("X-Spam-Model", "spam-detector:7"),
    )
    assert spam_headers(HAM)[:2] == (("X-Spam-Verdict", "ham"), ("X-Spam-Probability", "0.0200"))
    assert spam_headers(Unchecked("timeout")) == (("X-Spam-Verdict", "unchecked"),)


# --------------------------------------------------------------------------- the message

ORIGINAL = (
    b"From: Eve <eve@example.org>\r\n"
    b"To: alice@spamops.test\r\n"
    b"Subject: a folded\r\n\tsubject line\r\n"
    b"Message-ID: <m1@example.org>\r\n"
    b"X-Odd:no-space\r\n"
    b"\r\n"
    b"Hello\r\n\r\n.. dotted line and \xe9 latin-1\r\n"
)


def _collect_as_postfix_sends(raw: bytes, *, leading_space: bool) -> CollectedMessage:
    """Feed a message the way the MTA does: one header field at a time, then the body."""
    head, body = raw.split(b"\r\n\r\n", 1)
    fields: list[tuple[str, bytes]] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            name, value = fields[-1]
            fields[-1] = (name, value + b"\n" + line)  # Postfix joins folds with LF
        else:
            raw_name, raw_value = line.split(b":", 1)
            if not leading_space:
                raw_value = raw_value.lstrip(b" \t")
            fields.append((raw_name.decode(), raw_value))
    message = CollectedMessage(max_bytes=10_000, leading_space=leading_space)
    for name, value in fields:
        message.add_header(name, value)
    message.add_body(body[:7])
    message.add_body(body[7:])
    return message


def test_the_message_is_rebuilt_byte_for_byte_with_leading_space() -> None:
    message = _collect_as_postfix_sends(ORIGINAL, leading_space=True)
    assert message.raw() == ORIGINAL


def test_without_leading_space_the_space_after_the_colon_is_put_back() -> None:
    message = _collect_as_postfix_sends(ORIGINAL, leading_space=False)
    rebuilt = message.raw()
    assert rebuilt == ORIGINAL.replace(b"X-Odd:no-space", b"X-Odd: no-space")
    parsed = email.message_from_bytes(rebuilt, policy=email.policy.default)
    assert parsed["Subject"] == "a folded\tsubject line"


def test_header_line_writes_crlf_inside_folded_values() -> None:
    assert header_line("Subject", b" a\n b", leading_space=True) == b"Subject: a\r\n b\r\n"
    assert header_line("Subject", b" a\r\n b", leading_space=True) == b"Subject: a\r\n b\r\n"
    assert header_line("Subject", b"a", leading_space=False) == b"Subject: a\r\n"


def test_own_headers_that_arrive_with_the_mail_are_counted_for_removal() -> None:
    message = CollectedMessage(max_bytes=1000)
    message.add_header("x-spam-verdict", b" ham")
    message.add_header("X-Spam-Verdict", b" ham")
    message.add_header("X-SPAM-MODEL", b" forged:1")
    message.add_header("X-Spam-Status", b" not ours")
    assert message.own_header_counts() == {"X-Spam-Verdict": 2, "X-Spam-Model": 1}


def test_a_mail_over_the_limit_is_not_held_and_not_sent() -> None:
    gateway = FakeGateway(SPAM)
    message = CollectedMessage(max_bytes=100)
    message.add_header("Subject", b" hi")
    message.add_body(b"x" * 200)
    message.add_body(b"y" * 200)
    assert message.too_large and message.size > 400
    assert message.body_chunks == [] and message.headers == []
    outcome = classify(message, MilterDeps(gateway, policy="reject", reject_threshold=0.5))
    assert isinstance(outcome, Unchecked) and outcome.reason == "too-large"
    assert gateway.calls == []


# --------------------------------------------------------------------------- judge + fakes


class FakeGateway:
    """A Gateway that answers a fixed outcome (or raises) and records what it was sent."""

    def __init__(self, outcome: Outcome | Exception) -> None:
        self.outcome = outcome
        self.calls: list[tuple[bytes, str]] = []

    def classify(self, raw: bytes, *, environment: Any) -> Outcome:
        self.calls.append((raw, environment))
        if isinstance(self.outcome, Exception):
            raise self.outcome
        return self.outcome


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_judge_asks_the_gateway_with_the_rebuilt_mail_and_counts_the_decision() -> None:
    gateway = FakeGateway(SPAM)
    deps = MilterDeps(gateway, policy="reject", reject_threshold=0.9, environment="staging")
    message = _collect_as_postfix_sends(ORIGINAL, leading_space=True)
    before = _sample("spamops_milter_messages_total", {"verdict": "spam", "action": "reject"})
    latency_before = _sample("spamops_milter_gateway_seconds_count", {})
    decision = judge(message, deps)
    assert decision.action is Action.REJECT
    assert gateway.calls == [(ORIGINAL, "staging")]
    after = _sample("spamops_milter_messages_total", {"verdict": "spam", "action": "reject"})
    assert after == before + 1
    assert _sample("spamops_milter_gateway_seconds_count", {}) == latency_before + 1


def test_a_gateway_client_that_raises_still_accepts_the_mail_unchecked() -> None:
    deps = MilterDeps(FakeGateway(RuntimeError("bug")), policy="reject", reject_threshold=0.0)
    before = _sample("spamops_milter_unchecked_total", {"reason": "error"})
    decision = judge(_collect_as_postfix_sends(ORIGINAL, leading_space=True), deps)
    assert decision == Decision(Action.ACCEPT, "unchecked", (("X-Spam-Verdict", "unchecked"),))
    assert _sample("spamops_milter_unchecked_total", {"reason": "error"}) == before + 1


# --------------------------------------------------------------------------- the HTTP client

VERDICT_JSON: dict[str, Any] = {
    "event_id": "e1",
    "message_key": "<m1@example.org>",
    "verdict": "spam",
    "spam_probability": 0.97,
    "threshold": 0.42,
    "model_name": "spam-detector",
    "model_version": 3,
    "environment": "production",
    "features": {"n_links": 3},  # ignored
}


def _gateway(handler: Any, key: str | None = "secret") -> HttpGateway:
    return HttpGateway(
        "http://gateway.test",
        timeout_s=1.0,
        api_key=lambda: key,
        transport=httpx.MockTransport(handler),
    )


def test_the_client_posts_the_raw_mail_with_the_contract_headers() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=VERDICT_JSON)

    outcome = _gateway(handler).classify(ORIGINAL, environment="staging")
    assert outcome == Classification(
        "<m1@example.org>", "spam", 0.97, 0.42, "spam-detector", 3, "production"
    )
    (request,) = seen
    assert request.method == "POST" and request.url.path == "/v1/classify"
    assert request.content == ORIGINAL
    assert request.headers["content-type"] == "message/rfc822"
    assert request.headers["x-environment"] == "staging"
    assert request.headers["authorization"] == "Bearer secret"


def test_without_a_key_no_authorization_header_is_sent() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json=VERDICT_JSON)

    _gateway(handler, key=None).classify(b"x", environment="production")
    assert "authorization" not in seen[0].headers


def _problem(status: int, **extra: Any) -> httpx.Response:
    body = {"type": "about:blank", "title": "T", "status": status, "detail": "D", **extra}
    return httpx.Response(
        status, content=json.dumps(body), headers={"content-type": "application/problem+json"}
    )


@pytest.mark.parametrize(
    ("response", "reason"),
    [
        (_problem(504, message_key="<m1@example.org>"), "no-verdict"),
        (_problem(500), "gateway-error"),
        (_problem(503), "gateway-error"),
        (_problem(401), "refused"),
        (_problem(413), "refused"),
        (_problem(429), "refused"),
        (httpx.Response(502, text="<html>bad gateway</html>"), "gateway-error"),
        (httpx.Response(200, text="not json"), "bad-response"),
        (httpx.Response(200, json={"verdict": "spam"}), "bad-response"),
        (httpx.Response(200, json={**VERDICT_JSON, "verdict": "maybe"}), "bad-response"),
        (httpx.Response(200, json={**VERDICT_JSON, "spam_probability": 1.5}), "bad-response"),
        (httpx.Response(200, json=[1, 2]), "bad-response"),
    ],
)
def test_gateway_errors_become_unchecked(response: httpx.Response, reason: str) -> None:
    outcome = _gateway(lambda request: response).classify(b"x", environment="production")
    assert isinstance(outcome, Unchecked)
    assert outcome.reason == reason
    if response.status_code != 200:
        assert outcome.status == response.status_code
    if response.status_code == 504:
        assert outcome.message_key == "<m1@example.org>"
        assert outcome.detail == "T: D"


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (httpx.ConnectError("refused"), "unreachable"),
        (httpx.RemoteProtocolError("reset"), "unreachable"),
        (httpx.ReadTimeout("slow"), "timeout"),
        (httpx.ConnectTimeout("slow"), "timeout"),
    ],
)
def test_transport_failures_become_unchecked(error: Exception, reason: str) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise error

    outcome = _gateway(handler).classify(b"x", environment="production")
    assert isinstance(outcome, Unchecked) and outcome.reason == reason


def test_a_closed_port_is_unreachable() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    gateway = HttpGateway(f"http://127.0.0.1:{port}", timeout_s=2.0, api_key=lambda: None)
    outcome = gateway.classify(b"x", environment="production")
    assert isinstance(outcome, Unchecked) and outcome.reason == "unreachable"


def test_parse_classification_accepts_integral_versions_only() -> None:
    assert parse_classification({**VERDICT_JSON, "model_version": 3.0}).model_version == 3
    with pytest.raises(ValueError, match="model_version"):
        parse_classification({**VERDICT_JSON, "model_version": 3.5})
    with pytest.raises(ValueError, match="missing field 'threshold'"):
        parse_classification({k: v for k, v in VERDICT_JSON.items() if k != "threshold"})


# --------------------------------------------------------------------------- settings


def test_settings_defaults_and_the_key_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in ("SPAMOPS_MILTER_PORT", "SPAMOPS_HOST", "SPAMOPS_MILTER_GATEWAY_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("SPAMOPS_MILTER_POLICY", "reject")
    monkeypatch.setenv("SPAMOPS_MILTER_API_KEY", "from-variable")
    settings = MilterSettings(platform=PlatformSettings(home=tmp_path))
    assert settings.policy == "reject"
    assert settings.socket_spec == "inet:8890@127.0.0.1"
    assert settings.gateway_base_url == "http://127.0.0.1:8080"
    assert settings.metrics_listen_port == 9106
    assert settings.api_key_path == tmp_path.resolve() / "secrets" / "gateway-api.key"
    assert settings.read_api_key() == "from-variable"  # no file yet
    settings.api_key_path.parent.mkdir(parents=True)
    settings.api_key_path.write_text("from-file\n")
    assert settings.read_api_key() == "from-file"  # the file wins, read when asked
    monkeypatch.setenv("SPAMOPS_MILTER_POLICY", "drop")
    with pytest.raises(ValueError, match="policy"):
        MilterSettings()
