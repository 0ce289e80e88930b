"""The milter behind a real Postfix: SMTP in, Maildir out (issue 16).

A private Postfix instance (``tests/integration/postfix.py``: its own config
directory, queue and maildirs in a temp dir, smtpd on a free port of 127.0.0.1,
``smtpd_milters = inet:127.0.0.1:<milter port>``, ``milter_default_action =
accept``, virtual delivery to Maildir) hands every mail to ``python -m
spamops_milter``, which asks a gateway. Mail is sent with smtplib and read back
from the maildir (or the hold queue, or smtplib's 550).

Which gateway (``SPAMOPS_IT_GATEWAY``):

- ``double`` (default): ``tests/integration/gateway_double.py``, a TEST DOUBLE of
  the gateway's HTTP contract that answers canned verdicts by a marker in the mail
  (no Kafka, no model). Also covers what only a double can stage: a slow answer
  and a 504.
- ``stack``: the real platform of the ``stack`` fixture (with
  ``SPAMOPS_IT_STACK=running``: the one ``spamops up`` started), whose gateway
  must be up with a production model: its URL is the milter's default
  (``SPAMOPS_MILTER_GATEWAY_URL`` overrides), its key ``<state>/secrets/gateway-api.key``.
  The same tests run; the mails are plain spam and plain ham that any sane model
  tells apart, and the reject/quarantine threshold is 0 (every spam verdict acts).
"""

from __future__ import annotations

import os
import smtplib
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from spamops_milter.settings import MilterSettings
from spamops_runtime.settings import PlatformSettings

from tests.integration import gateway_double as double_markers
from tests.integration.conftest import free_ports
from tests.integration.gateway_double import GatewayDouble
from tests.integration.postfix import PostfixInstance

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

GATEWAY_MODE = os.environ.get("SPAMOPS_IT_GATEWAY", "double")
SENDER = "eve@sender.example"


@dataclass
class GatewayTarget:
    """Where the milter sends its questions, and whether it is the test double."""

    url: str
    api_key_file: Path
    double: GatewayDouble | None  # None: the real gateway of the platform

    @property
    def reject_threshold(self) -> float:
        # The double's spam is 0.99 and its borderline spam 0.6: 0.9 tells them apart.
        # A real model's spam probability is unknown beforehand: every spam verdict acts.
        return 0.9 if self.double is not None else 0.0


@pytest.fixture(scope="module")
def gateway(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayTarget]:
    """The gateway under test: the test double (default) or the real platform's."""
    if GATEWAY_MODE == "stack":
        platform: PlatformSettings = request.getfixturevalue("stack")
        settings = MilterSettings(platform=platform)
        yield GatewayTarget(settings.gateway_base_url, settings.api_key_path, None)
        return
    if GATEWAY_MODE != "double":
        pytest.fail(f"SPAMOPS_IT_GATEWAY={GATEWAY_MODE!r}: use double or stack")
    key_file = tmp_path_factory.mktemp("gateway-double") / "gateway-api.key"
    key_file.write_text("double-key\n")
    double = GatewayDouble(api_key="double-key", slow_s=3.0).start()
    try:
        yield GatewayTarget(double.url, key_file, double)
    finally:
        double.stop()


def needs_double(target: GatewayTarget) -> GatewayDouble:
    if target.double is None:
        pytest.skip("stages a gateway failure: only with the gateway test double")
    return target.double


@pytest.fixture(scope="module")
def ports() -> dict[str, int]:
    smtp, milter = free_ports(2)
    return {"smtp": smtp, "milter": milter}


@pytest.fixture(scope="module")
def postfix(ports: dict[str, int]) -> Iterator[PostfixInstance]:
    """A private Postfix whose smtpd asks the milter on ``ports["milter"]``."""
    why_not = PostfixInstance.available()
    if why_not:
        pytest.skip(why_not)
    instance = PostfixInstance.create(ports["smtp"], ports["milter"])
    instance.start()
    try:
        yield instance
    finally:
        instance.remove()


@dataclass
class MilterProcess:
    process: subprocess.Popen[bytes]
    metrics_url: str
    log: Path

    def metric(self, name: str, **labels: str) -> float:
        text = httpx.get(self.metrics_url, timeout=5).text
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and all(
                    sample.labels.get(k) == v for k, v in labels.items()
                ):
                    return float(sample.value)
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


MilterFactory = Callable[..., MilterProcess]


@pytest.fixture
def start_milter(
    ports: dict[str, int], gateway: GatewayTarget, tmp_path: Path
) -> Iterator[MilterFactory]:
    """``start_milter(policy=..., **SPAMOPS_MILTER_* overrides)``: the milter on the port
    Postfix asks, ready (its readiness gauge is 1); stopped at the end of the test."""
    started: list[MilterProcess] = []

    def start(policy: str = "tag", **overrides: str) -> MilterProcess:
        (metrics_port,) = free_ports(1)
        env = {
            **os.environ,
            "SPAMOPS_HOME": str(tmp_path / "home"),
            "SPAMOPS_HOST": "127.0.0.1",
            "SPAMOPS_MILTER_PORT": str(ports["milter"]),
            "SPAMOPS_MILTER_METRICS_PORT": str(metrics_port),
            "SPAMOPS_MILTER_GATEWAY_URL": gateway.url,
            "SPAMOPS_MILTER_API_KEY_FILE": str(gateway.api_key_file),
            "SPAMOPS_MILTER_POLICY": policy,
            "SPAMOPS_MILTER_REJECT_THRESHOLD": str(gateway.reject_threshold),
            **{f"SPAMOPS_MILTER_{k.upper()}": v for k, v in overrides.items()},
        }
        log = tmp_path / f"milter-{len(started)}.log"
        with log.open("wb") as out:
            process = subprocess.Popen(
                [sys.executable, "-m", "spamops_milter"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        milter = MilterProcess(process, f"http://127.0.0.1:{metrics_port}/metrics", log)
        started.append(milter)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if process.poll() is not None:
                pytest.fail(f"milter exited ({process.returncode}):\n{log.read_text()}")
            try:
                if milter.metric("spamops_service_ready", service="milter") == 1.0:
                    return milter
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        pytest.fail(f"milter not ready in 60 s:\n{log.read_text()}")

    try:
        yield start
    finally:
        for milter in started:
            milter.stop()


# --------------------------------------------------------------------------- mails

SPAM_TEXT = (
    "CONGRATULATIONS!!! You have been selected to receive a FREE $1,000,000 CASH PRIZE!\r\n"
    "Click here now to claim your money: http://win-cash-now.example/claim?id=8812\r\n"
    "Limited time offer. Act NOW! 100% FREE, no risk. Viagra, cheap meds, casino bonus.\r\n"
    "To be removed from our mailing list reply with REMOVE in the subject.\r\n"
)
HAM_TEXT = (
    "Hi Alice,\r\n\r\n"
    "Attached are my notes from Tuesday's meeting about the build server. The nightly\r\n"
    "job still fails on the integration step; I think the fixture cleanup is racing\r\n"
    "the next run. Could you have a look before Friday?\r\n\r\nThanks,\r\nBob\r\n"
)


def mail(kind: str, marker: str, *, subject: str, extra_headers: str = "") -> bytes:
    """A complete RFC 822 message (Date and Message-ID included, so Postfix adds neither)."""
    text = SPAM_TEXT if kind == "spam" else HAM_TEXT
    headers = (
        f"From: Eve <{SENDER}>\r\n"
        "To: Alice <alice@spamops.test>\r\n"
        f"Subject: {subject}\r\n"
        "\tfolded onto a second line\r\n"
        "Date: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{marker}@sender.example>\r\n"
        "MIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n"
        f"{extra_headers}"
    )
    return (headers + "\r\n" + text + f"\r\nref {marker}\r\n").encode()


def send(postfix: PostfixInstance, message: bytes, to: str = "alice") -> None:
    with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=60) as smtp:
        smtp.sendmail(SENDER, [postfix.address(to)], message)


def new_marker(double_marker: str = "") -> str:
    """A unique token to find the mail again (plus the double's verdict marker)."""
    token = f"m{uuid.uuid4().hex[:16]}"
    return f"{token}-{double_marker}" if double_marker else token


# --------------------------------------------------------------------------- tests


def test_tag_policy_delivers_spam_and_ham_with_headers(
    postfix: PostfixInstance, gateway: GatewayTarget, start_milter: MilterFactory
) -> None:
    milter = start_milter("tag")
    spam_marker = new_marker(double_markers.SPAM)
    ham_marker = new_marker(double_markers.HAM)
    # A sender's own X-Spam-Verdict must not survive: the milter deletes it.
    spam = mail("spam", spam_marker, subject="You WON", extra_headers="X-Spam-Verdict: ham\r\n")
    ham = mail("ham", ham_marker, subject="Notes from Tuesday")
    send(postfix, spam)
    send(postfix, ham)

    got_spam = postfix.wait_for_mail("alice", spam_marker)
    got_ham = postfix.wait_for_mail("alice", ham_marker)
    assert got_spam.get_all("X-Spam-Verdict") == ["spam"]
    assert got_ham.get_all("X-Spam-Verdict") == ["ham"]
    for got in (got_spam, got_ham):
        probability = float(str(got["X-Spam-Probability"]))
        assert 0.0 <= probability <= 1.0
        name, _, version = str(got["X-Spam-Model"]).partition(":")
        assert name and version.isdigit()
    assert float(str(got_spam["X-Spam-Probability"])) > float(str(got_ham["X-Spam-Probability"]))
    assert milter.metric("spamops_milter_messages_total", verdict="spam", action="accept") == 1
    assert milter.metric("spamops_milter_messages_total", verdict="ham", action="accept") == 1
    assert milter.metric("spamops_milter_gateway_seconds_count") == 2

    if gateway.double is not None:
        # What the gateway received is the mail as submitted over SMTP, byte for byte
        # (CRLF, the folded Subject, the forged header the milter removed afterwards).
        (request,) = gateway.double.requests_with(spam_marker)
        assert request.body == spam
        assert request.headers["Content-Type"] == "message/rfc822"
        assert request.headers["X-Environment"] == "production"
        assert request.headers["Authorization"] == "Bearer double-key"
        assert got_spam["X-Spam-Probability"] == "0.9900"
        assert got_spam["X-Spam-Model"] == "spam-detector:7"


def test_gateway_unreachable_mail_is_delivered_unchecked(
    postfix: PostfixInstance, start_milter: MilterFactory
) -> None:
    (closed,) = free_ports(1)  # nothing listens there
    milter = start_milter("reject", gateway_url=f"http://127.0.0.1:{closed}")
    marker = new_marker(double_markers.SPAM)
    send(postfix, mail("spam", marker, subject="You WON"))
    got = postfix.wait_for_mail("alice", marker)
    assert got.get_all("X-Spam-Verdict") == ["unchecked"]
    assert got["X-Spam-Probability"] is None and got["X-Spam-Model"] is None
    assert milter.metric("spamops_milter_unchecked_total", reason="unreachable") == 1
    assert milter.metric("spamops_milter_messages_total", verdict="unchecked", action="accept") == 1


def test_gateway_timeout_and_no_verdict_are_delivered_unchecked(
    postfix: PostfixInstance, gateway: GatewayTarget, start_milter: MilterFactory
) -> None:
    needs_double(gateway)  # the double answers SLOW after 3 s, 504 on demand
    milter = start_milter("reject", gateway_timeout_s="1")
    slow = new_marker(double_markers.SLOW)
    no_verdict = new_marker(double_markers.NO_VERDICT)
    broken = new_marker(double_markers.BROKEN)
    for marker in (slow, no_verdict, broken):
        send(postfix, mail("spam", marker, subject="You WON"))
    for marker in (slow, no_verdict, broken):
        assert postfix.wait_for_mail("alice", marker).get_all("X-Spam-Verdict") == ["unchecked"]
    assert milter.metric("spamops_milter_unchecked_total", reason="timeout") == 1
    assert milter.metric("spamops_milter_unchecked_total", reason="no-verdict") == 1
    assert milter.metric("spamops_milter_unchecked_total", reason="gateway-error") == 1


def test_reject_policy_refuses_spam_with_550(
    postfix: PostfixInstance, gateway: GatewayTarget, start_milter: MilterFactory
) -> None:
    milter = start_milter("reject")
    spam_marker = new_marker(double_markers.SPAM)
    ham_marker = new_marker(double_markers.HAM)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        send(postfix, mail("spam", spam_marker, subject="You WON"))
    assert refused.value.smtp_code == 550
    assert b"5.7.1" in refused.value.smtp_error
    assert b"rejected as spam" in refused.value.smtp_error
    send(postfix, mail("ham", ham_marker, subject="Notes from Tuesday"))
    assert postfix.wait_for_mail("alice", ham_marker).get_all("X-Spam-Verdict") == ["ham"]
    assert not any(spam_marker.encode() in p.read_bytes() for p in postfix.delivered("alice"))
    assert milter.metric("spamops_milter_messages_total", verdict="spam", action="reject") == 1
    if gateway.double is not None:
        # Spam below the reject threshold is accepted and tagged.
        borderline = new_marker(double_markers.BORDERLINE)
        send(postfix, mail("spam", borderline, subject="Maybe"))
        got = postfix.wait_for_mail("alice", borderline)
        assert got.get_all("X-Spam-Verdict") == ["spam"]
        assert got["X-Spam-Probability"] == "0.6000"


def test_quarantine_policy_holds_spam_and_delivers_ham(
    postfix: PostfixInstance, start_milter: MilterFactory
) -> None:
    milter = start_milter("quarantine")
    spam_marker = new_marker(double_markers.SPAM)
    ham_marker = new_marker(double_markers.HAM)
    send(postfix, mail("spam", spam_marker, subject="You WON"))
    send(postfix, mail("ham", ham_marker, subject="Notes from Tuesday"))
    assert postfix.wait_for_mail("alice", ham_marker).get_all("X-Spam-Verdict") == ["ham"]
    deadline = time.monotonic() + 30
    held: list[Path] = []
    while time.monotonic() < deadline and not held:
        held = [p for p in postfix.held() if spam_marker.encode() in p.read_bytes()]
        time.sleep(0.1)
    assert held, f"spam not in the hold queue\n{postfix.log_tail()}"
    queued = held[0].read_bytes()
    assert b"X-Spam-Verdict: spam" in queued  # held tagged, as it will be delivered if released
    # Postfix logs the hold (not the milter's reason text, which the milter logs itself).
    assert "milter triggers HOLD action" in postfix.log_tail(200)
    assert not any(spam_marker.encode() in p.read_bytes() for p in postfix.delivered("alice"))
    assert milter.metric("spamops_milter_messages_total", verdict="spam", action="quarantine") == 1


def test_mail_flows_when_the_milter_itself_is_down(postfix: PostfixInstance) -> None:
    # No milter on the port: Postfix's milter_default_action = accept delivers untagged.
    marker = new_marker(double_markers.SPAM)
    send(postfix, mail("spam", marker, subject="You WON"))
    got = postfix.wait_for_mail("alice", marker)
    assert got["X-Spam-Verdict"] is None
