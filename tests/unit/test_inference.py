"""The inference stream's logic with small fakes: routing, bad input, retries, switches."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import numpy as np
import pytest
from spamops_features.pipeline import FeaturePipeline, _probe_emails
from spamops_inference.adapters import TritonUnavailableError
from spamops_inference.handlers import (
    NO_PRODUCTION_NOTE,
    InboxRecord,
    InferenceDeps,
    classify_batch,
)
from spamops_inference.serving import ModelCatalog, ServingModel
from spamops_inference.settings import InferenceSettings

PIPELINE = FeaturePipeline.fit(_probe_emails())


def email(i: int) -> bytes:
    return (
        f"From: someone{i}@example{i % 3}.org\nTo: you@example.net\nSubject: hello {i}\n"
        f"Message-ID: <m{i}@example.org>\nDate: Tue, 1 Oct 2002 10:00:00 +0000\n\nbody {i}\n"
    ).encode()


def record(
    value: bytes, offset: int, env: str | None = None, key: str | None = None
) -> InboxRecord:
    headers = {"x-environment": env} if env else {}
    return InboxRecord("emails.inbox", 0, offset, key or f"k{offset}", value, headers, 1_000)


class FakeScorer:
    """Probability 0.9 for production v2, 0.2 for staging; can fail a few times first."""

    def __init__(self, failures: int = 0) -> None:
        self.failures = failures
        self.calls: list[tuple[str, int, int]] = []

    async def score(self, model: str, version: int, x: np.ndarray) -> np.ndarray:
        if self.failures:
            self.failures -= 1
            raise TritonUnavailableError("connection refused")
        self.calls.append((model, version, len(x)))
        assert x.shape[1] == PIPELINE.spec.n_inputs
        return np.full(len(x), 0.9 if "production" in model else 0.2)


def serving(alias: str, version: int) -> ServingModel:
    return ServingModel(alias, "spam-detector", version, 0.5, PIPELINE, f"spam-detector-{alias}")


async def deps_for(aliases: dict[str, int], scorer: Any = None, **settings: Any) -> InferenceDeps:
    catalog = ModelCatalog(lambda alias, version: serving(alias, version))
    for alias, version in aliases.items():
        await catalog.switch(alias, version)

    async def no_sleep(_: float) -> None:
        return None

    return InferenceDeps(
        catalog=catalog,
        scorer=scorer or FakeScorer(),
        settings=InferenceSettings(**settings),
        clock=lambda: 2.0,
        sleep=no_sleep,
    )


async def test_routing_by_environment_header() -> None:
    deps = await deps_for({"production": 2, "staging": 3})
    records = [
        record(email(0), 0),
        record(email(1), 1, "staging"),
        record(email(2), 2, "production"),
    ]
    result = await classify_batch(records, deps)
    assert not result.refused
    got = [(r.offset, v.environment, v.model_version, v.verdict) for r, v in result.verdicts]
    assert got == [
        (0, "production", 2, "spam"),
        (1, "staging", 3, "ham"),
        (2, "production", 2, "spam"),
    ]
    verdict = result.verdicts[0][1]
    assert verdict.message_key == "k0"
    assert verdict.latency_ms == pytest.approx(1000.0)
    assert set(verdict.features) == set(PIPELINE.spec.handcrafted_names)


async def test_without_a_production_model_staging_classifies_and_says_so() -> None:
    deps = await deps_for({"staging": 1})
    result = await classify_batch([record(email(0), 0)], deps)
    [(_, verdict)] = result.verdicts
    assert verdict.model_version == 1 and verdict.note == NO_PRODUCTION_NOTE


async def test_without_any_model_records_are_dead_lettered_not_dropped() -> None:
    result = await classify_batch([record(email(0), 0)], await deps_for({}))
    assert [r.reason for r in result.refused] == ["no-model"]


async def test_bad_input_gets_a_reason_and_the_rest_of_the_batch_goes_on() -> None:
    deps = await deps_for({"production": 2}, max_message_bytes=1000)
    records = [
        record(b"", 0),
        record(b"\x00\x01\x02" * 10, 1),
        record(email(2) + b"x" * 2000, 2),
        record(email(3), 3, "canary"),
        record(email(4), 4),
    ]
    result = await classify_batch(records, deps)
    reasons = {r.record.offset: r.reason for r in result.refused}
    assert reasons[0] == "empty"
    assert reasons[2] == "too-large"
    assert reasons[3] == "bad-environment"
    assert 1 in reasons or any(r.offset == 1 for r, _ in result.verdicts)  # garbage: either way
    assert 4 in [r.offset for r, _ in result.verdicts]
    assert len(result.refused) + len(result.verdicts) == len(records)  # nothing disappears


async def test_triton_unreachable_is_retried_until_it_answers() -> None:
    scorer = FakeScorer(failures=3)
    result = await classify_batch([record(email(0), 0)], await deps_for({"production": 2}, scorer))
    assert len(result.verdicts) == 1
    assert scorer.calls == [("spam-detector-production", 2, 1)]


async def test_shadow_scores_production_traffic_with_staging() -> None:
    deps = await deps_for({"production": 2, "staging": 3}, shadow=True)
    result = await classify_batch([record(email(0), 0)], deps)
    [(_, verdict)] = result.verdicts
    assert verdict.spam_probability == pytest.approx(0.9)
    assert verdict.shadow_probability == pytest.approx(0.2)
    assert verdict.shadow_version == 3


async def test_a_switch_is_atomic_for_a_batch() -> None:
    """A batch snapshots the catalog: a promotion mid-batch applies to the next batch."""
    gate = asyncio.Event()

    class SlowScorer(FakeScorer):
        async def score(self, model: str, version: int, x: np.ndarray) -> np.ndarray:
            await gate.wait()
            return await super().score(model, version, x)

    deps = await deps_for({"production": 2}, SlowScorer())
    batch = asyncio.create_task(classify_batch([record(email(0), 0)], deps))
    await asyncio.sleep(0.01)
    await deps.catalog.switch("production", 5)
    gate.set()
    [(_, verdict)] = (await batch).verdicts
    assert verdict.model_version == 2
    [(_, after)] = (await classify_batch([record(email(1), 1)], deps)).verdicts
    assert after.model_version == 5


async def test_a_model_announced_but_not_yet_switched_to_is_found_in_mlflow() -> None:
    """Records right after the first promotion are classified, not dead-lettered."""
    deps = await deps_for({})
    refreshed: list[bool] = []

    async def refresh() -> None:
        refreshed.append(True)
        await deps.catalog.switch("production", 1)

    deps.refresh = refresh
    result = await classify_batch([record(email(0), 0)], deps)
    assert refreshed == [True]
    assert [v.model_version for _, v in result.verdicts] == [1]


async def test_a_redelivered_label_is_not_counted_twice() -> None:
    from spamops_inference.handlers import on_email_labeled
    from spamops_schemas import EmailLabeled

    pushed: list[tuple[str, str]] = []
    deps = await deps_for({"production": 1})
    deps.push_label = lambda domain, label, at: pushed.append((domain, label))  # type: ignore[assignment,func-returntype,return-value]
    label = EmailLabeled(
        message_key="<m1@x>", label="spam", labelled_by="bob", sender_domain="example.com"
    )
    await on_email_labeled(label, deps)
    await on_email_labeled(label, deps)  # redelivered after a crash before the commit
    assert pushed == [("example.com", "spam")]
    other = label.model_copy(update={"event_id": uuid.uuid4()})
    await on_email_labeled(other, deps)  # a second label of the same mail counts
    assert len(pushed) == 2


async def test_a_reused_message_id_cannot_steer_a_label_to_another_sender() -> None:
    """Keys a sender cannot steer (issue 17): the label names the inbox record of its verdict."""
    from spamops_inference.handlers import on_email_labeled
    from spamops_schemas import EmailLabeled

    pushed: list[tuple[str, str]] = []
    deps = await deps_for({"production": 2})
    deps.push_label = lambda domain, label, at: pushed.append((domain, label))  # type: ignore[assignment,func-returntype,return-value]
    honest = email(0)  # from example0.org
    forged = email(1).replace(b"<m1@example.org>", b"<m0@example.org>")  # example1.org
    result = await classify_batch(
        [record(honest, 10, key="<m0@x>"), record(forged, 11, key="<m0@x>")], deps
    )
    [(_, first), (_, second)] = result.verdicts
    assert (first.inbox_record, second.inbox_record) == ((0, 10), (0, 11))

    # The key alone is ambiguous now: no reputation moves, whichever mail came last.
    await on_email_labeled(EmailLabeled(message_key="<m0@x>", label="ham"), deps)
    assert pushed == []
    # Naming the record (as copied from the verdict) reaches exactly that mail's sender.
    for verdict, label in ((first, "ham"), (second, "spam")):
        await on_email_labeled(
            EmailLabeled(
                message_key="<m0@x>",
                label=label,  # type: ignore[arg-type]
                inbox_partition=verdict.inbox_partition,
                inbox_offset=verdict.inbox_offset,
            ),
            deps,
        )
    assert pushed == [("example0.org", "ham"), ("example1.org", "spam")]
    # A record named with another key is not that mail: nothing moves.
    await on_email_labeled(
        EmailLabeled(message_key="<other@x>", label="spam", inbox_partition=0, inbox_offset=10),
        deps,
    )
    assert len(pushed) == 2


def test_recent_senders_forget_the_oldest_and_a_single_mail_per_key_is_unambiguous() -> None:
    from spamops_inference.adapters import RecentSenders
    from spamops_schemas import InboxRecordRef

    senders = RecentSenders(capacity=2)
    senders.remember("a", InboxRecordRef(0, 1), "one.org")
    senders.remember("b", InboxRecordRef(0, 2), "two.org")
    senders.remember("a", InboxRecordRef(0, 3), "one.org")  # the same sender again: fine
    assert senders.domain("a") == "one.org"
    assert senders.domain("a", InboxRecordRef(0, 1)) is None  # the oldest: forgotten
    assert senders.domain("a", InboxRecordRef(0, 3)) == "one.org"
    senders.remember("c", InboxRecordRef(0, 4), "three.org")
    assert senders.domain("b") is None  # forgotten (capacity 2)
    assert senders.domain("c") == "three.org"


async def test_a_version_triton_no_longer_serves_makes_it_read_the_catalogue_again() -> None:
    """Not an endless retry of the stale version: the aliases are read again, then retried."""
    from spamops_inference.adapters import ModelNotServedError

    class Unloaded(FakeScorer):
        async def score(self, model: str, version: int, x: np.ndarray) -> np.ndarray:
            if version == 2:
                raise ModelNotServedError("spam-detector-production v2: unknown model")
            return await super().score(model, version, x)

    deps = await deps_for({"production": 2}, Unloaded())

    async def refresh() -> None:  # MLflow says production is now v3
        await deps.catalog.switch("production", 3)

    deps.refresh = refresh
    with pytest.raises(ModelNotServedError):  # the wiring seeks back and retries the batch
        await classify_batch([record(email(0), 0)], deps)
    retried = await classify_batch([record(email(0), 0)], deps)
    assert [v.model_version for _, v in retried.verdicts] == [3]


# ------------------------------------------------------------------ verdict spans
def test_traced_records_keep_their_trace_the_others_share_the_batch_span() -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
    from spamops_inference.app import BATCH_SPAN, VERDICT_SPAN, VerdictSpans, verdict_record
    from spamops_schemas import EmailClassified

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    spans = VerdictSpans(provider.get_tracer("test"))
    trace_id = "4bf92f3577b34da6a3ce929d0e0e4736"
    traced = InboxRecord(
        "emails.inbox", 1, 7, "a", b"x", {"traceparent": f"00-{trace_id}-00f067aa0ba902b7-01"}, 1
    )
    plain = InboxRecord("emails.inbox", 2, 9, "b", b"x", {}, 1)
    verdict = EmailClassified(
        message_key="a", verdict="ham", spam_probability=0.1, threshold=0.5,
        model_name="m", model_version=1, environment="production", latency_ms=1.0,
    )  # fmt: skip
    with spans.batch([traced, plain], 2):
        _, traced_headers = verdict_record(spans, traced, verdict)
        _, plain_headers = verdict_record(spans, plain, verdict)
    finished = {s.name: s for s in exporter.get_finished_spans()}
    assert set(finished) == {VERDICT_SPAN, BATCH_SPAN}
    own, batch = finished[VERDICT_SPAN], finished[BATCH_SPAN]
    assert f"{own.context.trace_id:032x}" == trace_id
    assert traced_headers["traceparent"].split("-")[1:3] == [
        trace_id,
        f"{own.context.span_id:016x}",
    ]
    assert plain_headers["traceparent"].split("-")[1:3] == [
        f"{batch.context.trace_id:032x}",
        f"{batch.context.span_id:016x}",
    ]
    assert batch.parent is None and batch.attributes is not None
    assert batch.attributes["messaging.batch.message_count"] == 2
    assert tuple(batch.attributes["messaging.kafka.partitions"]) == (1, 2)  # type: ignore[arg-type]
