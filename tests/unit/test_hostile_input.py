"""Hostile input (issue 9, first part): property-based tests over raw emails and event JSON.

Whatever bytes arrive, the parser either returns a ParsedEmail or raises
MailParseError (which the inference stream dead-letters with its reason), and
the feature pipeline turns every parsed email into finite numbers. Whatever
JSON arrives on an event topic, decoding either yields the typed event or
raises a typed EventDecodeError (dead-lettered with its reason).
"""

from __future__ import annotations

import json

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spamops_features.mail import PARSE_ERROR_REASONS, MailParseError, parse_email
from spamops_features.pipeline import FeaturePipeline, _probe_emails
from spamops_schemas import EventDecodeError, decode_event
from spamops_schemas.events import ALL_EVENTS

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
