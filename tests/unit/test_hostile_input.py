"""Hostile input (issue 9, first part): property-based tests over raw emails and event JSON.

Whatever bytes arrive, the parser either returns a ParsedEmail or raises
MailParseError (which the inference stream dead-letters with its reason), and
the feature pipeline turns every parsed email into finite numbers. Whatever
JSON arrives on an event topic, decoding either yields the typed event or
raises a typed EventDecodeError (dead-lettered with its reason); and through
the shared Kafka wiring (FastStream's in-memory broker), every such record
lands on ``<topic>.dlq`` with its reason and the subscriber goes on.
Message bombs: tests/unit/test_message_bombs.py.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import numpy as np
from faststream.kafka import KafkaBroker, TestKafkaBroker
from faststream.kafka.annotations import KafkaMessage
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spamops_features.mail import PARSE_ERROR_REASONS, MailParseError, parse_email
from spamops_features.pipeline import FeaturePipeline, _probe_emails
from spamops_runtime.kafka import H_ERROR_REASON, H_ORIGINAL_TOPIC, RecordContext, subscribe_events
from spamops_runtime.settings import PlatformSettings, ServiceSettings
from spamops_schemas import Event, EventDecodeError, decode_event
from spamops_schemas.events import ALL_EVENTS
from spamops_schemas.topics import topic_for_event

PIPELINE = FeaturePipeline.fit(_probe_emails())

header_names = st.sampled_from(
    ["From", "To", "Cc", "Subject", "Date", "Message-ID", "Received", "Reply-To",
     "Content-Type", "Content-Transfer-Encoding", "MIME-Version", "X-Mailer"]
)  # fmt: skip
header_values = st.text(max_size=200) | st.binary(max_size=200).map(lambda b: b.decode("latin-1"))
emails = st.builds(
    lambda headers, body: (
        "".join(f"{name}: {value}\r\n" for name, value in headers).encode("utf-8", "replace")
        + b"\r\n"
        + body
    ),
    st.lists(st.tuples(header_names, header_values), max_size=12),
    st.binary(max_size=2000),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(raw=st.binary(max_size=3000) | emails)
def test_any_bytes_parse_or_are_refused_with_a_reason(raw: bytes) -> None:
    try:
        email = parse_email(raw)
    except MailParseError as exc:
        assert exc.reason in PARSE_ERROR_REASONS
        return
    x = PIPELINE.transform([email])
    assert x.shape == (1, PIPELINE.spec.n_inputs)
    assert np.isfinite(x).all()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(
    event_cls=st.sampled_from(ALL_EVENTS),
    payload=st.dictionaries(st.text(max_size=20), json_values, max_size=8),
)
def test_any_json_decodes_or_is_refused_with_a_typed_error(event_cls: type, payload: dict) -> None:  # type: ignore[type-arg]
    raw = json.dumps(payload).encode()
    try:
        event: object = decode_event(raw, event_cls)
    except EventDecodeError as exc:
        assert exc.reason
        return
    assert isinstance(event, event_cls)


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(max_size=500))
def test_any_bytes_on_an_event_topic_are_refused_with_a_typed_error(raw: bytes) -> None:
    for event_cls in ALL_EVENTS:
        try:
            decode_event(raw, event_cls)
        except EventDecodeError as exc:
            assert exc.reason


# ------------------------------------------------- every event topic, in memory
# The smallest valid payload of each event (what kcat users write: no envelope).
MINIMAL: dict[str, dict[str, Any]] = {
    "DatasetReady": {
        "dataset_id": "d1", "uri": "file:///d1", "sha256": "0" * 64, "rows": 3,
        "counts_by_label": {"spam": 1, "ham": 2}, "counts_by_group": {"g": 3},
        "split": {"train": 1, "validation": 1, "test": 1},
    },
    "ModelTrained": {
        "run_id": "r1", "model_uri": "runs:/r1/model", "dataset_id": "d1",
        "metrics": {"f1": 0.9, "precision": 0.9, "recall": 0.9, "roc_auc": 0.9,
                    "false_positive_rate": 0.01},
        "best_params": {"max_depth": 4}, "feature_spec_version": "v", "n_features": 524,
        "training_seconds": 1.0,
    },
    "ModelRegistered": {
        "model_name": "spam-detector", "version": 1, "run_id": "r1", "onnx_uri": "s3://x",
        "onnx_sha256": "0" * 64, "parity_max_abs_diff": 0.0, "triton_model": "m",
        "triton_version": 1,
    },
    "ModelRejected": {"run_id": "r1", "failures": [{"gate": "min_f1", "actual": 0.1,
                                                     "threshold": 0.8}]},
    "PromotionApproved": {"model_name": "spam-detector", "version": 1, "approved_by": "alice"},
    "ModelPromoted": {"model_name": "spam-detector", "version": 1},
    "EmailClassified": {
        "message_key": "k", "verdict": "spam", "spam_probability": 0.9, "threshold": 0.5,
        "model_name": "spam-detector", "model_version": 1, "environment": "production",
        "latency_ms": 1.0,
    },
    "EmailLabeled": {"message_key": "k", "label": "ham"},
    "DriftDetected": {"model_name": "spam-detector", "model_version": 1,
                      "window": {"size": 100}, "drift_share": 0.5},
}  # fmt: skip


def test_every_event_has_a_minimal_valid_payload() -> None:
    assert set(MINIMAL) == {cls.EVENT_TYPE for cls in ALL_EVENTS}
    for cls in ALL_EVENTS:
        decode_event(json.dumps(MINIMAL[cls.EVENT_TYPE]).encode(), cls)


def _mutations(event_type: str) -> st.SearchStrategy[bytes]:
    """A minimal valid payload with one field dropped, retyped or added."""
    payload = MINIMAL[event_type]
    return st.builds(
        lambda name, value, drop: json.dumps(
            {k: v for k, v in {**payload, name: value}.items() if not (drop and k == name)}
        ).encode(),
        st.sampled_from([*payload, "event_type", "schema_version", "occurred_at", "extra"]),
        json_values,
        st.booleans(),
    )


def _bodies(event_type: str) -> st.SearchStrategy[bytes]:
    return (
        st.binary(max_size=200)
        | st.text(max_size=100).map(str.encode)
        | json_values.map(lambda v: json.dumps(v).encode())
        | _mutations(event_type)
    )


@st.composite
def hostile_records(draw: st.DrawFn) -> tuple[type[Event], list[bytes]]:
    event_cls = draw(st.sampled_from(ALL_EVENTS))
    return event_cls, draw(st.lists(_bodies(event_cls.EVENT_TYPE), min_size=1, max_size=5))


async def _through_the_broker(
    event_cls: Any, bodies: list[bytes]
) -> tuple[list[Any], list[tuple[bytes, dict[str, str]]]]:
    """Publish ``bodies``, then a valid event, to the topic of ``event_cls``."""
    topic = topic_for_event(event_cls.EVENT_TYPE).name
    broker = KafkaBroker(PlatformSettings().kafka_bootstrap)
    handled: list[Any] = []
    dead: list[tuple[bytes, dict[str, str]]] = []

    async def handler(event: Any, record: RecordContext) -> None:
        handled.append(event)

    subscribe_events(
        broker, topic=topic, event_cls=event_cls, handler=handler,
        settings=ServiceSettings(max_attempts=1), service="hostile",
    )  # fmt: skip

    @broker.subscriber(topic + ".dlq")
    async def on_dead(message: KafkaMessage) -> None:
        dead.append((message.body, dict(message.headers)))

    valid = json.dumps(MINIMAL[event_cls.EVENT_TYPE]).encode()
    async with TestKafkaBroker(broker) as br:
        for body in [*bodies, valid]:
            await br.publish(body, topic=topic, key=b"k")
        await asyncio.sleep(0)
    return handled, dead


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=hostile_records())
def test_hostile_records_on_an_event_topic_are_dead_lettered_and_the_stream_goes_on(
    case: tuple[type[Event], list[bytes]],
) -> None:
    event_cls, bodies = case
    expected_dead: list[tuple[bytes, str]] = []
    expected_handled = 0
    for body in bodies:  # the oracle: what decoding alone says about each record
        try:
            decode_event(body, event_cls)
            expected_handled += 1
        except EventDecodeError as exc:
            expected_dead.append((body, exc.reason))
    handled, dead = asyncio.run(_through_the_broker(event_cls, bodies))
    # Each refused record on <topic>.dlq, unchanged, with its reason and origin...
    assert [(body, headers[H_ERROR_REASON]) for body, headers in dead] == expected_dead
    topic = topic_for_event(event_cls.EVENT_TYPE).name
    assert all(headers[H_ORIGINAL_TOPIC] == topic for _, headers in dead)
    # ...and the stream went on: the valid event after them was handled.
    assert len(handled) == expected_handled + 1
    assert isinstance(handled[-1], event_cls)
