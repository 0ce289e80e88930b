"""The gateway's HTTP API and logic with small fakes of its ports (Kafka, Redis), and the client.

The fakes implement the same Protocols as the adapters (``InboxPublisher``,
``FeedbackPublisher``, ``OutcomeStore``); inference is played by the test: a
published email gets its verdict (or dead letter) through the same
``on_verdicts``/``on_refusals`` the Kafka consumers call.
"""

from __future__ import annotations

import asyncio
import base64
import json
import stat
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
from spamops_client import (
    AsyncSpamopsClient,
    Forbidden,
    NotClassified,
    RateLimited,
    SpamopsClient,
    SpamopsError,
    Unauthorized,
    VerdictTimeout,
)
from spamops_gateway.api import PROBLEM_JSON, create_api
from spamops_gateway.app import decode_refusals, decode_verdicts
from spamops_gateway.handlers import (
    GatewayDeps,
    Outcome,
    PendingReplies,
    RateLimiter,
    Refusal,
    StoreUnavailableError,
    environment_of,
    on_refusals,
    on_verdicts,
)
from spamops_gateway.settings import GatewaySettings
from spamops_runtime.api_keys import KeyRing, add_key, hash_key, load_keys
from spamops_runtime.kafka import H_ERROR_MESSAGE, H_ERROR_REASON, RecordContext
from spamops_schemas import EmailClassified, EmailLabeled

MAIL = (
    b"From: colleague@example.com\r\nTo: you@example.org\r\nSubject: notes\r\n"
    b"Message-ID: <same@example.com>\r\n\r\nHi, the notes. Regards\r\n"
)


def verdict_for(key: str, environment: str = "production", p: float = 0.93) -> EmailClassified:
    return EmailClassified(
        producer="inference",
        message_key=key,
        verdict="spam" if p >= 0.5 else "ham",
        spam_probability=p,
        threshold=0.5,
        model_name="spam-detector",
        model_version=3,
        environment=environment,  # type: ignore[arg-type]
        features={"n_links": 2.0},
        latency_ms=12.5,
    )


# ------------------------------------------------------------------ fakes
class FakeInbox:
    """InboxPublisher: records what is published; ``then`` plays inference's answer."""

    def __init__(self) -> None:
        self.published: list[dict[str, Any]] = []
        self.then: Callable[[str, str], Any] | None = None
        self.error: Exception | None = None
        self.tasks: set[asyncio.Future[Any]] = set()

    async def publish_email(
        self, raw: bytes, *, key: str, environment: str, correlation_id: str
    ) -> None:
        if self.error is not None:
            raise self.error
        self.published.append(
            {"raw": raw, "key": key, "environment": environment, "correlation_id": correlation_id}
        )
        if self.then is not None:
            # Later, like a verdict read from Kafka: not inside the publish call.
            asyncio.get_running_loop().call_later(0.01, self._answer, key, environment)

    def _answer(self, key: str, environment: str) -> None:
        assert self.then is not None
        task = asyncio.ensure_future(self.then(key, environment))
        self.tasks.add(task)  # held until done (the loop keeps only weak references)
        task.add_done_callback(self.tasks.discard)


class FakeFeedback:
    """FeedbackPublisher: keeps the events."""

    def __init__(self) -> None:
        self.events: list[EmailLabeled] = []

    async def publish_label(self, event: EmailLabeled) -> None:
        self.events.append(event)


class FakeStore:
    """OutcomeStore in a dict, with Redis's semantics (a refusal never replaces a verdict)."""

    def __init__(self) -> None:
        self.items: dict[str, Outcome] = {}
        self.available = True

    def _check(self) -> None:
        if not self.available:
            raise StoreUnavailableError("connection refused")

    async def get(self, key: str) -> Outcome | None:
        self._check()
        return self.items.get(key)

    async def put_verdicts(self, verdicts: Sequence[EmailClassified]) -> None:
        self._check()
        for v in verdicts:
            self.items[v.message_key] = v

    async def put_refusals(self, refusals: Sequence[Refusal]) -> None:
        self._check()
        for r in refusals:
            self.items.setdefault(r.message_key, r)

    async def ping(self) -> bool:
        return self.available


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Gateway:
    """One gateway instance under test: its deps, fakes, keys and an HTTP client."""

    def __init__(
        self,
        keys_file: Path,
        *,
        store: FakeStore | None = None,
        timeout_s: float = 2.0,
        max_email_bytes: int = 10 * 2**20,
        rate: float = 0.0,
        burst: int = 10,
        capacity: int = 100,
    ) -> None:
        self.inbox = FakeInbox()
        self.feedback = FakeFeedback()
        self.store = store or FakeStore()
        self.clock = Clock()
        self.deps = GatewayDeps(
            inbox=self.inbox,
            feedback=self.feedback,
            store=self.store,
            pending=PendingReplies(capacity),
            verdict_timeout_s=timeout_s,
            publish_timeout_s=timeout_s,
        )
        self.ready = {"kafka_producer": True, "kafka_consumers": True, "redis": True}

        async def readiness() -> dict[str, bool]:
            return dict(self.ready)

        self.api = create_api(
            self.deps,
            keys=KeyRing(keys_file),
            limiter=RateLimiter(rate, burst, clock=self.clock),
            max_email_bytes=max_email_bytes,
            readiness=readiness,
        )

    def http(self, key: str | None = None) -> httpx.AsyncClient:
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.api), base_url="http://gw", headers=headers
        )

    def answer_with_verdict(self, p: float = 0.93) -> None:
        async def answer(key: str, environment: str) -> None:
            await on_verdicts([verdict_for(key, environment, p)], self.deps)

        self.inbox.then = answer

    def answer_with_dead_letter(self, reason: str) -> None:
        async def answer(key: str, environment: str) -> None:
            await on_refusals([Refusal(key, reason, "inference says no")], self.deps)

        self.inbox.then = answer


@pytest.fixture
def keys_file(tmp_path: Path) -> Path:
    return tmp_path / "secrets" / "gateway-keys.json"


@pytest.fixture
def both(keys_file: Path) -> str:
    return add_key(keys_file, "both", ["classify", "label"])


@pytest.fixture
def classify_only(keys_file: Path) -> str:
    return add_key(keys_file, "classifier", ["classify"])


@pytest.fixture
def label_only(keys_file: Path) -> str:
    return add_key(keys_file, "labeller", ["label"])


def rfc822(env: str | None = None) -> dict[str, str]:
    headers = {"Content-Type": "message/rfc822"}
    if env is not None:
        headers["X-Environment"] = env
    return headers


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == PROBLEM_JSON
    problem: dict[str, Any] = response.json()
    assert problem["status"] == status
    assert problem["title"] and problem["detail"] and problem["type"]
    return problem


# ------------------------------------------------------------------ 200, 202, 404
async def test_classify_answers_with_the_verdict_inference_publishes(
    keys_file: Path, both: str
) -> None:
    gw = Gateway(keys_file)
    gw.answer_with_verdict(0.93)
    async with gw.http(both) as http:
        response = await http.post(
            "/v1/classify",
            content=MAIL,
            headers={**rfc822("Staging"), "X-Correlation-ID": "req-42"},
        )
    assert response.status_code == 200, response.text
    body = EmailClassified.model_validate(response.json())
    [published] = gw.inbox.published
    assert published["raw"] == MAIL
    assert body.message_key == published["key"] and body.message_key.startswith("gw-")
    assert (body.verdict, body.environment, published["environment"]) == (
        "spam",
        "staging",
        "staging",
    )
    assert published["correlation_id"] == "req-42"
    assert response.headers["x-correlation-id"] == "req-42"
    assert gw.store.items[body.message_key] == body  # stored for GET too
    assert len(gw.deps.pending) == 0


async def test_two_requests_for_one_message_id_get_their_own_answers(
    keys_file: Path, both: str
) -> None:
    gw = Gateway(keys_file)
    probabilities = iter([0.1, 0.9])

    async def answer(key: str, environment: str) -> None:
        await on_verdicts([verdict_for(key, environment, next(probabilities))], gw.deps)

    gw.inbox.then = answer
    async with gw.http(both) as http:
        first, second = await asyncio.gather(
            http.post("/v1/classify", content=MAIL, headers=rfc822()),
            http.post("/v1/classify", content=MAIL, headers=rfc822()),
        )
    keys = {first.json()["message_key"], second.json()["message_key"]}
    assert len(keys) == 2
    assert {first.json()["verdict"], second.json()["verdict"]} == {"ham", "spam"}


async def test_classify_takes_json_with_base64(keys_file: Path, both: str) -> None:
    gw = Gateway(keys_file)
    gw.answer_with_verdict(0.1)
    async with gw.http(both) as http:
        response = await http.post(
            "/v1/classify", json={"raw_base64": base64.b64encode(MAIL).decode()}
        )
    assert response.status_code == 200, response.text
    assert response.json()["verdict"] == "ham"
    assert gw.inbox.published[0]["raw"] == MAIL
    assert gw.inbox.published[0]["environment"] == "production"  # the default


async def test_submit_answers_202_and_the_verdict_is_there_later(
    keys_file: Path, classify_only: str
) -> None:
    gw = Gateway(keys_file)
    async with gw.http(classify_only) as http:
        accepted = await http.post("/v1/emails", content=MAIL, headers=rfc822())
        assert accepted.status_code == 202, accepted.text
        key = accepted.json()["message_key"]
        assert accepted.headers["location"] == f"/v1/verdicts/{key}"
        assert_problem(await http.get(f"/v1/verdicts/{key}"), 404)  # not classified yet
        verdict = verdict_for(key)
        await on_verdicts([verdict], gw.deps)  # inference answers, any instance
        got = await http.get(f"/v1/verdicts/{key}")
        assert got.status_code == 200
        assert EmailClassified.model_validate(got.json()) == verdict
        assert_problem(await http.get("/v1/verdicts/gw-unknown"), 404)


async def test_only_the_gateways_verdicts_are_stored(keys_file: Path) -> None:
    gw = Gateway(keys_file)
    await on_verdicts([verdict_for("<stream@example.com>"), verdict_for("gw-1")], gw.deps)
    assert set(gw.store.items) == {"gw-1"}


# ------------------------------------------------------------------ 401, 403, 429
async def test_no_key_or_an_unknown_key_is_401(keys_file: Path, both: str) -> None:
    gw = Gateway(keys_file)
    async with gw.http() as http:
        problem = assert_problem(await http.post("/v1/classify", content=MAIL), 401)
        assert "API key" in problem["detail"]
        response = await http.post(
            "/v1/classify", content=MAIL, headers={"Authorization": "Bearer spk_nope"}
        )
        assert_problem(response, 401)
        assert response.headers["www-authenticate"].startswith("Bearer")
        assert_problem(await http.get("/v1/verdicts/x"), 401)
    assert gw.inbox.published == []


async def test_the_x_api_key_header_works_too(keys_file: Path, both: str) -> None:
    gw = Gateway(keys_file)
    async with gw.http() as http:
        response = await http.get("/v1/verdicts/gw-x", headers={"X-API-Key": both})
    assert_problem(response, 404)  # authenticated: the verdict is just not there


async def test_a_key_without_the_role_is_403(
    keys_file: Path, classify_only: str, label_only: str
) -> None:
    gw = Gateway(keys_file)
    async with gw.http(label_only) as http:
        assert_problem(await http.post("/v1/classify", content=MAIL, headers=rfc822()), 403)
        assert_problem(await http.post("/v1/emails", content=MAIL, headers=rfc822()), 403)
    async with gw.http(classify_only) as http:
        response = await http.post("/v1/feedback", json={"message_key": "gw-1", "label": "spam"})
        assert_problem(response, 403)
    assert gw.inbox.published == [] and gw.feedback.events == []


async def test_the_rate_limit_is_per_key_with_retry_after(
    keys_file: Path, both: str, classify_only: str
) -> None:
    gw = Gateway(keys_file, rate=2.0, burst=2)
    async with gw.http(both) as http:
        for _ in range(2):
            assert_problem(await http.get("/v1/verdicts/gw-x"), 404)
        limited = await http.get("/v1/verdicts/gw-x")
        assert_problem(limited, 429)
        assert limited.headers["retry-after"] == "1"
        # Another key has its own bucket.
        other = await http.get(
            "/v1/verdicts/gw-x", headers={"Authorization": f"Bearer {classify_only}"}
        )
        assert_problem(other, 404)
        gw.clock.now += 0.5  # one token back at 2/s
        assert_problem(await http.get("/v1/verdicts/gw-x"), 404)
        assert_problem(await http.get("/v1/verdicts/gw-x"), 429)


def test_the_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    clock = Clock()
    limiter = RateLimiter(rate=10.0, burst=3, clock=clock)
    assert [limiter.acquire("k") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert limiter.acquire("k") == pytest.approx(0.1)
    clock.now += 10  # long idle: still only the burst
    assert [limiter.acquire("k") for _ in range(4)][-1] > 0
    assert RateLimiter(rate=0, burst=1).acquire("k") == 0.0  # off


# ------------------------------------------------------------------ 413, 415, 422
async def test_too_large_is_413_declared_or_streamed_or_decoded(keys_file: Path, both: str) -> None:
    gw = Gateway(keys_file, max_email_bytes=1000)
    big = b"Subject: x\r\n\r\n" + b"a" * 2000

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted while read
        for i in range(0, len(big), 100):
            yield big[i : i + 100]

    async with gw.http(both) as http:
        assert_problem(await http.post("/v1/classify", content=big, headers=rfc822()), 413)
        assert_problem(await http.post("/v1/emails", content=chunks(), headers=rfc822()), 413)
        encoded = {"raw_base64": base64.b64encode(big).decode()}
        assert_problem(await http.post("/v1/classify", json=encoded), 413)
        ok = await http.post("/v1/emails", content=big[:900], headers=rfc822())
        assert ok.status_code == 202
    assert len(gw.inbox.published) == 1


def test_the_email_limit_is_the_inference_services() -> None:
    from spamops_inference.settings import InferenceSettings

    assert GatewaySettings().max_email_bytes == InferenceSettings().max_message_bytes


async def test_another_media_type_is_415(keys_file: Path, both: str) -> None:
    gw = Gateway(keys_file)
    async with gw.http(both) as http:
        response = await http.post(
            "/v1/classify", content=MAIL, headers={"Content-Type": "text/plain"}
        )
        assert_problem(response, 415)
        assert_problem(await http.post("/v1/emails", content=MAIL), 415)  # none at all
        response = await http.post(
            "/v1/feedback", content=b"message_key=x", headers={"Content-Type": "text/plain"}
        )
        assert_problem(response, 415)


async def test_invalid_requests_are_422(keys_file: Path, both: str) -> None:
    gw = Gateway(keys_file)
    async with gw.http(both) as http:
        problem = assert_problem(
            await http.post("/v1/classify", content=MAIL, headers=rfc822("canary")), 422
        )
        assert "X-Environment" in problem["detail"]
        assert_problem(await http.post("/v1/classify", json={"raw": "x"}), 422)
        assert_problem(await http.post("/v1/classify", json={"raw_base64": "***"}), 422)
        assert_problem(await http.post("/v1/classify", content=b"  \r\n", headers=rfc822()), 422)
        response = await http.post("/v1/feedback", json={"message_key": "gw-1", "label": "maybe"})
        problem = assert_problem(response, 422)
        assert problem["errors"][0]["loc"] == ["label"]
        broken = await http.post(
            "/v1/feedback", content=b"{", headers={"Content-Type": "application/json"}
        )
        assert_problem(broken, 422)
    assert gw.inbox.published == [] and gw.feedback.events == []


def test_environment_header_values() -> None:
    assert environment_of(None) == "production"
    assert environment_of(" Staging ") == "staging"
    assert environment_of("") == "production"
    assert environment_of("prod") is None


# ------------------------------------------------------------------ 504, dead letters
async def test_no_verdict_in_time_is_504_with_the_key_to_ask_later(
    keys_file: Path, both: str
) -> None:
    gw = Gateway(keys_file, timeout_s=0.2)
    async with gw.http(both) as http:
        response = await http.post("/v1/classify", content=MAIL, headers=rfc822())
        problem = assert_problem(response, 504)
        key = problem["message_key"]
        assert key == gw.inbox.published[0]["key"]
        assert response.headers["location"] == f"/v1/verdicts/{key}"
        assert len(gw.deps.pending) == 0
        await on_verdicts([verdict_for(key)], gw.deps)  # the verdict comes late
        later = await http.get(f"/v1/verdicts/{key}")
    assert later.status_code == 200 and later.json()["message_key"] == key


async def test_a_dead_lettered_email_is_422_with_the_reason_at_once(
    keys_file: Path, both: str
) -> None:
    gw = Gateway(keys_file, timeout_s=30)  # answered long before the timeout
    gw.answer_with_dead_letter("not-email")
    async with gw.http(both) as http:
        began = asyncio.get_running_loop().time()
        response = await http.post("/v1/classify", content=MAIL, headers=rfc822())
        assert asyncio.get_running_loop().time() - began < 5
        problem = assert_problem(response, 422)
        assert problem["reason"] == "not-email"
        assert problem["message_key"] == gw.inbox.published[0]["key"]
        # Kept like a verdict: GET says the same.
        again = assert_problem(await http.get(f"/v1/verdicts/{problem['message_key']}"), 422)
        assert again["reason"] == "not-email"


async def test_no_model_yet_is_503_not_a_bad_email(keys_file: Path, both: str) -> None:
    gw = Gateway(keys_file)
    gw.answer_with_dead_letter("no-model")
    async with gw.http(both) as http:
        response = await http.post("/v1/classify", content=MAIL, headers=rfc822())
    assert assert_problem(response, 503)["reason"] == "no-model"
    assert response.headers["retry-after"]


async def test_a_redriven_emails_verdict_replaces_its_refusal_not_the_reverse(
    keys_file: Path,
) -> None:
    gw = Gateway(keys_file)
    await on_refusals([Refusal("gw-1", "no-model")], gw.deps)
    await on_verdicts([verdict_for("gw-1")], gw.deps)
    await on_refusals([Refusal("gw-1", "no-model")], gw.deps)
    assert isinstance(gw.store.items["gw-1"], EmailClassified)


async def test_kafka_unreachable_is_503(keys_file: Path, both: str) -> None:
    gw = Gateway(keys_file)
    gw.inbox.error = ConnectionError("no broker")
    async with gw.http(both) as http:
        assert_problem(await http.post("/v1/classify", content=MAIL, headers=rfc822()), 503)
        assert_problem(await http.post("/v1/emails", content=MAIL, headers=rfc822()), 503)


async def test_too_many_waiting_requests_is_503(keys_file: Path, both: str) -> None:
    gw = Gateway(keys_file, timeout_s=0.5, capacity=1)
    async with gw.http(both) as http:
        first = asyncio.create_task(http.post("/v1/classify", content=MAIL, headers=rfc822()))
        await asyncio.sleep(0.1)
        response = await http.post("/v1/classify", content=MAIL, headers=rfc822())
        assert assert_problem(response, 503)["type"].endswith("overloaded")
        assert_problem(await first, 504)


# ------------------------------------------------------------------ several instances
async def test_each_instance_answers_its_own_requests(keys_file: Path, both: str) -> None:
    """Two instances, one Redis: every verdict goes to both (their own consumer groups)."""
    store = FakeStore()
    a, b = Gateway(keys_file, store=store), Gateway(keys_file, store=store)

    async def to_both(key: str, environment: str) -> None:
        for gw in (a, b):
            await on_verdicts([verdict_for(key, environment)], gw.deps)

    a.inbox.then = b.inbox.then = to_both
    async with a.http(both) as http_a, b.http(both) as http_b:
        ra, rb = await asyncio.gather(
            http_a.post("/v1/classify", content=MAIL, headers=rfc822()),
            http_b.post("/v1/classify", content=MAIL, headers=rfc822()),
        )
        assert ra.json()["message_key"] == a.inbox.published[0]["key"]
        assert rb.json()["message_key"] == b.inbox.published[0]["key"]
        # Any instance answers GET for any key.
        assert (await http_b.get(f"/v1/verdicts/{ra.json()['message_key']}")).status_code == 200


async def test_a_verdict_another_instance_stored_answers_at_the_timeout(
    keys_file: Path, both: str
) -> None:
    """This instance missed the verdict (e.g. restarted, lagging): Redis has it."""
    store = FakeStore()
    a, b = Gateway(keys_file, store=store, timeout_s=0.3), Gateway(keys_file, store=store)

    async def only_b(key: str, environment: str) -> None:
        await on_verdicts([verdict_for(key, environment)], b.deps)

    a.inbox.then = only_b
    async with a.http(both) as http:
        response = await http.post("/v1/classify", content=MAIL, headers=rfc822())
    assert response.status_code == 200
    assert response.json()["message_key"] == a.inbox.published[0]["key"]


async def test_a_store_that_is_away_fails_the_batch_so_it_is_read_again(
    keys_file: Path,
) -> None:
    gw = Gateway(keys_file)
    gw.store.available = False
    with pytest.raises(StoreUnavailableError):
        await on_verdicts([verdict_for("gw-1")], gw.deps)
    gw.store.available = True
    await on_verdicts([verdict_for("gw-1")], gw.deps)
    assert "gw-1" in gw.store.items


async def test_get_with_the_store_away_is_503(keys_file: Path, both: str) -> None:
    gw = Gateway(keys_file)
    gw.store.available = False
    async with gw.http(both) as http:
        assert_problem(await http.get("/v1/verdicts/gw-1"), 503)


# ------------------------------------------------------------------ feedback
async def test_feedback_publishes_email_labeled(keys_file: Path, both: str) -> None:
    gw = Gateway(keys_file)
    async with gw.http(both) as http:
        response = await http.post(
            "/v1/feedback",
            json={"message_key": "gw-7", "label": "spam"},
            headers={"X-Correlation-ID": "c-1"},
        )
        assert response.status_code == 202, response.text
        named = await http.post(
            "/v1/feedback", json={"message_key": "gw-8", "label": "ham", "labelled_by": "alice"}
        )
        assert named.status_code == 202
    first, second = gw.feedback.events
    assert (first.message_key, first.label, first.labelled_by) == ("gw-7", "spam", "both")
    assert first.correlation_id == "c-1" and first.producer == "gateway"
    assert response.json() == {"message_key": "gw-7", "event_id": str(first.event_id)}
    assert (second.label, second.labelled_by) == ("ham", "alice")


# ------------------------------------------------------------------ operations
async def test_health_readiness_metrics_and_openapi(keys_file: Path, both: str) -> None:
    gw = Gateway(keys_file)
    async with gw.http() as http:
        assert (await http.get("/healthz")).json() == {"status": "ok"}
        assert (await http.get("/readyz")).status_code == 200
        gw.ready["redis"] = False
        not_ready = await http.get("/readyz")
        assert not_ready.status_code == 503 and not_ready.json()["checks"]["redis"] is False
        await http.get("/v1/verdicts/gw-x", headers={"Authorization": f"Bearer {both}"})
        metrics = (await http.get("/metrics")).text
        assert (
            'spamops_gateway_requests_total{method="GET",route="/v1/verdicts/{key}",status="404"}'
            in metrics
        )
        assert "spamops_gateway_request_seconds_bucket" in metrics
        assert (await http.get("/docs")).status_code == 200
        paths = (await http.get("/openapi.json")).json()["paths"]
    assert {"/v1/classify", "/v1/emails", "/v1/verdicts/{key}", "/v1/feedback"} <= set(paths)
    assert "message/rfc822" in paths["/v1/classify"]["post"]["requestBody"]["content"]


async def test_an_unknown_route_is_a_problem_too(keys_file: Path) -> None:
    gw = Gateway(keys_file)
    async with gw.http() as http:
        assert_problem(await http.get("/v2/nothing"), 404)


def test_records_from_kafka_become_verdicts_and_refusals() -> None:
    good = verdict_for("gw-1")

    def ctx(raw: bytes, key: str | None, headers: dict[str, str] | None = None) -> RecordContext:
        return RecordContext("t", 0, 0, key, headers or {}, 0, raw=raw)

    assert decode_verdicts([ctx(good.to_bytes(), "gw-1"), ctx(b"{not json", "gw-2")]) == [good]
    refusals = decode_refusals(
        [
            ctx(MAIL, "gw-3", {H_ERROR_REASON: "too-large", H_ERROR_MESSAGE: "11 MB"}),
            ctx(MAIL, None, {H_ERROR_REASON: "empty"}),  # no key: nobody to answer
        ]
    )
    assert refusals == [Refusal("gw-3", "too-large", "11 MB")]


# ------------------------------------------------------------------ API keys
def test_the_key_file_holds_only_hashes_and_is_private(tmp_path: Path) -> None:
    path = tmp_path / "secrets" / "keys.json"
    key = add_key(path, "relay", ["classify"])
    text = path.read_text()
    assert key not in text and hash_key(key) in text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    [entry] = load_keys(path).values()
    assert (entry.name, entry.roles) == ("relay", frozenset({"classify"}))
    with pytest.raises(ValueError, match="roles"):
        add_key(path, "x", ["admin"])


def test_a_new_key_works_without_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    ring = KeyRing(path)
    assert ring.lookup("spk_anything") is None and len(ring) == 0  # no file: no keys
    key = add_key(path, "later", ["label"])
    found = ring.lookup(key)
    assert found is not None and found.name == "later"


def test_the_local_stack_key_is_made_once(tmp_path: Path) -> None:
    from spamops_cli.stack.secrets import gateway_key_file
    from spamops_runtime.settings import PlatformSettings

    settings = PlatformSettings(home=tmp_path)
    path = gateway_key_file(settings)
    key = path.read_text().strip()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    entry = load_keys(settings.gateway_keys_path)[hash_key(key)]
    assert entry.roles == {"classify", "label"}
    assert gateway_key_file(settings).read_text().strip() == key  # kept
    assert key not in settings.gateway_keys_path.read_text()


# ------------------------------------------------------------------ the client
async def test_the_async_client_against_the_api(keys_file: Path, both: str) -> None:
    gw = Gateway(keys_file, timeout_s=0.3)
    gw.answer_with_verdict(0.2)
    transport = httpx.ASGITransport(app=gw.api)
    async with AsyncSpamopsClient("http://gw", both, transport=transport) as client:
        verdict = await client.classify(MAIL, environment="staging")
        assert isinstance(verdict, EmailClassified)
        assert (verdict.verdict, verdict.environment) == ("ham", "staging")
        assert await client.verdict(verdict.message_key) == verdict
        assert await client.verdict("gw-unknown") is None
        gw.inbox.then = None
        key = await client.submit(MAIL)
        assert key.startswith("gw-") and await client.verdict(key) is None
        with pytest.raises(VerdictTimeout) as timeout:
            await client.classify(MAIL)
        assert timeout.value.message_key == gw.inbox.published[-1]["key"]
        event_id = await client.label(key, "spam", labelled_by="bob")
        assert str(gw.feedback.events[0].event_id) == event_id
        gw.answer_with_dead_letter("not-email")
        with pytest.raises(NotClassified) as refused:
            await client.classify(b"\x00\x01")
        assert refused.value.reason == "not-email" and refused.value.status == 422
    async with AsyncSpamopsClient("http://gw", "spk_wrong", transport=transport) as client:
        with pytest.raises(Unauthorized) as unauthorized:
            await client.submit(MAIL)
        assert unauthorized.value.problem["status"] == 401


def test_the_sync_client_maps_answers_and_problems() -> None:
    seen: list[httpx.Request] = []
    key = "gw-123"

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        path = request.url.path
        if path == "/v1/classify":
            return httpx.Response(200, content=verdict_for(key).to_bytes())
        if path == "/v1/emails":
            return httpx.Response(202, json={"message_key": key})
        if path == "/v1/verdicts/gw-missing":
            return httpx.Response(404, json={"status": 404, "title": "Not Found"})
        if path == "/v1/verdicts/gw-limited":
            return httpx.Response(
                429, json={"status": 429, "title": "Too Many"}, headers={"Retry-After": "3"}
            )
        if path == "/v1/feedback":
            body = json.loads(request.content)
            if body["label"] == "ham":
                return httpx.Response(403, json={"status": 403, "title": "Forbidden"})
            return httpx.Response(202, json={"message_key": key, "event_id": "e-1"})
        return httpx.Response(502, text="<html>bad gateway</html>")

    with SpamopsClient("http://gw", "spk_k", transport=httpx.MockTransport(handler)) as client:
        assert client.classify(MAIL, environment="staging").message_key == key
        assert seen[-1].headers["x-environment"] == "staging"
        assert seen[-1].headers["content-type"] == "message/rfc822"
        assert seen[-1].headers["authorization"] == "Bearer spk_k"
        assert seen[-1].content == MAIL
        assert client.submit(MAIL) == key
        assert client.verdict("gw-missing") is None
        with pytest.raises(RateLimited) as limited:
            client.verdict("gw-limited")
        assert limited.value.retry_after_s == 3.0
        assert client.label(key, "spam") == "e-1"
        with pytest.raises(Forbidden):
            client.label(key, "ham")
        with pytest.raises(SpamopsError) as other:
            client.verdict("gw-other")
        assert other.value.status == 502 and "bad gateway" in other.value.problem["detail"]


class FakeExplainer:
    """The Explainer port: an explanation per verdict, or the failure it is told to raise."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.fail = fail
        self.asked: list[tuple[str, int]] = []

    async def explain(self, verdict: EmailClassified, *, top: int) -> dict[str, object]:
        self.asked.append((verdict.message_key, top))
        if self.fail is not None:
            raise self.fail
        return {"message_key": verdict.message_key, "contributions": [{"feature": "f"}] * top}


async def test_explanation_of_a_stored_verdict(keys_file: Path, classify_only: str) -> None:
    from spamops_gateway.handlers import ExplainerUnavailableError

    gw = Gateway(keys_file)
    async with gw.http(classify_only) as http:
        assert_problem(await http.get("/v1/verdicts/gw-1/explanation"), 501)  # none wired
        gw.deps.explainer = explainer = FakeExplainer()
        assert_problem(await http.get("/v1/verdicts/gw-1/explanation"), 404)  # no verdict
        await on_verdicts([verdict_for("gw-1")], gw.deps)
        got = await http.get("/v1/verdicts/gw-1/explanation", params={"top": 3})
        assert got.status_code == 200, got.text
        assert len(got.json()["contributions"]) == 3 and explainer.asked == [("gw-1", 3)]
        assert_problem(await http.get("/v1/verdicts/gw-1/explanation?top=0"), 422)
        explainer.fail = LookupError("the mail is gone (retention)")
        assert_problem(await http.get("/v1/verdicts/gw-1/explanation"), 404)
        explainer.fail = ExplainerUnavailableError("MLflow: connection refused")
        problem = assert_problem(await http.get("/v1/verdicts/gw-1/explanation"), 503)
        assert "MLflow" in problem["detail"]
    async with gw.http() as anonymous:
        assert_problem(await anonymous.get("/v1/verdicts/gw-1/explanation"), 401)
