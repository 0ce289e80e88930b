"""The gateway on the real stack, through real HTTP: the client, the CLI, Kafka and Redis.

Kafka, Redis, MLflow, Triton, trainer (a tiny search), registry-bridge,
inference and the gateway run as processes of a stack of their own; one small
training gives a staging model, which classifies production requests while no
production model exists (inference says so in the verdict's note).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import httpx
import pytest
from spamops_cli import stack as local_stack
from spamops_cli.stack.secrets import gateway_key_file
from spamops_client import AsyncSpamopsClient, NotClassified, SpamopsClient, Unauthorized
from spamops_runtime.kafka import H_CORRELATION_ID
from spamops_runtime.replay import read_topic
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import EmailClassified, EmailLabeled, ModelRegistered, topic

from tests.integration.conftest import StackFactory, free_ports
from tests.integration.helpers import events_on, sample_email, send, spamops

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

ENV = {
    "SPAMOPS_TRAINER_NUM_SAMPLES": "2",
    "SPAMOPS_TRAINER_MAX_ESTIMATORS": "50",
    "SPAMOPS_TRAINER_GRACE_REPORTS": "1",
    "SPAMOPS_TRAINER_USE_REPUTATION": "false",
    "SPAMOPS_REGISTRY_BRIDGE_MIN_F1": "0.6",
    "SPAMOPS_REGISTRY_BRIDGE_MAX_FALSE_POSITIVE_RATE": "0.2",
    # A loaded 2-core machine (training beside it): patience, not a 504.
    "SPAMOPS_GATEWAY_VERDICT_TIMEOUT_S": "30",
}


@pytest.fixture(scope="module")
def gateway_stack(stack_factory: StackFactory) -> Iterator[PlatformSettings]:
    """The stack with trainer, registry-bridge, inference and the gateway."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        settings = stack_factory(
            components=[
                "kafka", "redis", "mlflow", "triton",
                "trainer", "registry-bridge", "inference", "gateway",
            ],
            name="gateway-stack",
        )  # fmt: skip
    yield settings
    local_stack.down(settings)


@pytest.fixture(scope="module")
def api_key(gateway_stack: PlatformSettings) -> str:
    """The key the stack generated on the gateway's first start (both roles)."""
    return gateway_key_file(gateway_stack).read_text().strip()


@pytest.fixture(scope="module")
def model(gateway_stack: PlatformSettings) -> ModelRegistered:
    """One small training: version 1, alias staging."""
    result = spamops(
        gateway_stack, "ingest", "--groups", "easy-ham-2,spam-1", "--wait-trained",
        "--timeout-minutes", "15",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    [(registered, _)] = asyncio.run(
        events_on(gateway_stack, "models.registered", lambda e: isinstance(e, ModelRegistered))
    )
    assert isinstance(registered, ModelRegistered)
    return registered


def test_without_a_key_it_is_401(gateway_stack: PlatformSettings) -> None:
    response = httpx.post(
        f"{gateway_stack.gateway_http}/v1/classify",
        content=sample_email(1, spam=False),
        headers={"Content-Type": "message/rfc822"},
        timeout=10,
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"
    with (
        SpamopsClient(gateway_stack.gateway_http, "spk_not-a-key") as client,
        pytest.raises(Unauthorized),
    ):
        client.verdict("gw-1")
    ready = httpx.get(f"{gateway_stack.gateway_http}/readyz", timeout=10)
    assert ready.status_code == 200, ready.text


def test_a_refused_email_is_answered_with_inference_s_reason(
    gateway_stack: PlatformSettings, api_key: str
) -> None:
    """Parsing comes before any model: a binary blob is dead-lettered as not-email."""
    with SpamopsClient(gateway_stack.gateway_http, api_key) as client:
        began = time.monotonic()
        with pytest.raises(NotClassified) as refused:
            client.classify(bytes(range(256)) * 8)
        assert time.monotonic() - began < 25  # the dead letter, not the timeout (30 s)
    assert refused.value.status == 422 and refused.value.reason == "not-email"
    assert (refused.value.message_key or "").startswith("gw-")


def test_classify_ham_and_spam_through_the_client(
    gateway_stack: PlatformSettings, api_key: str, model: ModelRegistered
) -> None:
    mails = [(sample_email(i, spam=i % 2 == 0, id_prefix="gw"), i % 2 == 0) for i in range(8)]

    async def classify_all() -> list[EmailClassified]:
        async with AsyncSpamopsClient(gateway_stack.gateway_http, api_key) as client:
            return list(await asyncio.gather(*(client.classify(raw) for raw, _ in mails)))

    verdicts = asyncio.run(classify_all())
    assert len({v.message_key for v in verdicts}) == len(mails)
    for verdict in verdicts:
        assert verdict.message_key.startswith("gw-")
        assert (verdict.environment, verdict.model_version) == ("production", model.version)
    spam_p = [v.spam_probability for v, (_, spam) in zip(verdicts, mails, strict=True) if spam]
    ham_p = [v.spam_probability for v, (_, spam) in zip(verdicts, mails, strict=True) if not spam]
    assert min(spam_p) > max(ham_p), (spam_p, ham_p)  # a tiny model, but obvious mail
    right = sum((v.verdict == "spam") == spam for v, (_, spam) in zip(verdicts, mails, strict=True))
    assert right >= 6

    # The same verdict is what inference published on emails.verdicts, with the key.
    key = verdicts[0].message_key
    [(on_kafka, _)] = asyncio.run(
        events_on(
            gateway_stack,
            "emails.verdicts",
            lambda e: isinstance(e, EmailClassified) and e.message_key == key,
        )
    )
    assert on_kafka == verdicts[0]

    # Why: the deciding version's contributions, over HTTP (issue 20).
    explained = httpx.get(
        f"{gateway_stack.gateway_http}/v1/verdicts/{key}/explanation",
        params={"top": 5},
        headers={"Authorization": f"Bearer {api_key}"},
        timeout=120,  # the first one downloads the version and opens the Feast store
    )
    assert explained.status_code == 200, explained.text
    why = explained.json()
    assert why["model_version"] == model.version and len(why["contributions"]) == 5
    assert why["recomputed_probability"] == pytest.approx(verdicts[0].spam_probability, abs=1e-3)


def test_staging_the_inbox_record_and_the_cli(
    gateway_stack: PlatformSettings, api_key: str, model: ModelRegistered, tmp_path
) -> None:
    raw = sample_email(42, spam=True, id_prefix="gw-cli")
    path = tmp_path / "mail.eml"
    path.write_bytes(raw)
    result = spamops(gateway_stack, "classify", str(path), "--environment", "staging", "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    verdict = EmailClassified.model_validate_json(result.stdout)
    assert verdict.environment == "staging"

    async def inbox_record() -> tuple[bytes, dict[str, str]]:
        async for record in read_topic(gateway_stack, "emails.inbox", idle_timeout_s=2):
            if record.key == verdict.message_key:
                return record.value, dict(record.headers)
        raise AssertionError("the inbox record is not there")

    value, headers = asyncio.run(inbox_record())
    assert value == raw
    assert headers["x-environment"] == "staging"
    assert headers[H_CORRELATION_ID]


def test_submit_then_get_and_label(
    gateway_stack: PlatformSettings, api_key: str, model: ModelRegistered
) -> None:
    with SpamopsClient(gateway_stack.gateway_http, api_key) as client:
        key = client.submit(sample_email(7, spam=False, id_prefix="gw-async"))
        deadline = time.monotonic() + 60
        verdict = client.verdict(key)
        while verdict is None:
            assert time.monotonic() < deadline, "no verdict for a submitted email"
            time.sleep(0.5)
            verdict = client.verdict(key)
        assert verdict.message_key == key
        event_id = client.label(key, "ham", labelled_by="it-test")

    [(label, _)] = asyncio.run(
        events_on(
            gateway_stack,
            "emails.feedback",
            lambda e: isinstance(e, EmailLabeled) and e.message_key == key,
        )
    )
    assert isinstance(label, EmailLabeled)
    assert (str(label.event_id), label.label, label.labelled_by) == (event_id, "ham", "it-test")


def test_a_restarted_gateway_catches_up_on_verdicts_it_missed(
    gateway_stack: PlatformSettings, api_key: str, model: ModelRegistered
) -> None:
    """Its consumer group commits only stored verdicts: what came while it was down is read,
    on every partition of emails.verdicts (also those no verdict had reached before)."""
    from spamops_cli.lookup import partition_of

    partitions = list(range(topic("emails.verdicts").partitions))
    keys: dict[int, str] = {}  # one key per verdict partition (verdicts are keyed by it)
    while len(keys) < len(partitions):
        key = f"gw-{uuid.uuid4()}"  # as if accepted just before the gateway went down
        keys.setdefault(partition_of(key, partitions), key)
    local_stack.stop(gateway_stack, ["gateway"])
    mails = [(key, sample_email(9, spam=True)) for key in keys.values()]
    asyncio.run(send(gateway_stack, "emails.inbox", mails))
    asyncio.run(
        events_on(
            gateway_stack,
            "emails.verdicts",
            lambda e: isinstance(e, EmailClassified) and e.message_key == mails[-1][0],
        )
    )
    local_stack.up(gateway_stack, components=["gateway"])
    with SpamopsClient(gateway_stack.gateway_http, api_key) as client:
        deadline = time.monotonic() + 30
        missing = set(keys.values())
        while missing:
            assert time.monotonic() < deadline, f"not caught up: {sorted(missing)}"
            missing = {key for key in missing if client.verdict(key) is None}
            time.sleep(0.2)


def test_postfix_through_the_milter_and_the_real_gateway(
    gateway_stack: PlatformSettings, model: ModelRegistered
) -> None:
    """A real Postfix hands mail to the milter the stack starts, which asks this gateway.

    The milter runs as `spamops up` starts it (its port, the gateway's URL and key from
    the platform settings); the other milter tests stage gateway failures with a double.
    """
    from tests.integration.postfix import PostfixInstance
    from tests.integration.test_milter_postfix import mail, new_marker
    from tests.integration.test_milter_postfix import send as smtp_send

    why_not = PostfixInstance.available()
    if why_not:
        pytest.fail(why_not)  # bootstrap installs Postfix: its absence is a defect here
    local_stack.up(gateway_stack, components=["milter"])
    (smtp_port,) = free_ports(1)
    postfix = PostfixInstance.create(smtp_port, gateway_stack.milter_port)
    postfix.start()
    try:
        markers = {kind: new_marker() for kind in ("spam", "ham")}
        for kind, marker in markers.items():
            smtp_send(postfix, mail(kind, marker, subject=f"{kind} through the platform"))
        got = {kind: postfix.wait_for_mail("alice", marker) for kind, marker in markers.items()}
    finally:
        postfix.remove()
        local_stack.stop(gateway_stack, ["milter"])
    for message in got.values():
        assert message.get_all("X-Spam-Verdict") in (["spam"], ["ham"])  # not "unchecked"
        assert message["X-Spam-Model"] == f"{model.model_name}:{model.version}"
    assert float(str(got["spam"]["X-Spam-Probability"])) > float(
        str(got["ham"]["X-Spam-Probability"])
    )
