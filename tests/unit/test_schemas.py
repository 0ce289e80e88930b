"""Event contracts: round trips, upcasting, typed errors, generated JSON Schema."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timezone
from uuid import uuid4

import pytest
from spamops_schemas import (
    ALL_EVENTS,
    DatasetReady,
    EmailLabeled,
    EventValidationError,
    InvalidJSONError,
    PromotionApproved,
    SplitCounts,
    UnknownEventTypeError,
    UnsupportedSchemaVersionError,
    catalogue,
    decode_event,
    topic_for_event,
)
from spamops_schemas.jsonschema import default_dir, render_all


def _dataset() -> DatasetReady:
    return DatasetReady(
        producer="test",
        dataset_id="ds-1",
        uri="file:///tmp/x.parquet",
        sha256="ab" * 32,
        rows=3,
        counts_by_label={"spam": 1, "ham": 2},
        counts_by_group={"spam-1": 1, "easy-ham-1": 2},
        split=SplitCounts(train=1, validation=1, test=1),
    )


def test_round_trip_keeps_every_field() -> None:
    event = _dataset()
    decoded = DatasetReady.from_bytes(event.to_bytes())
    assert decoded == event
    assert decoded.event_type == "DatasetReady"
    assert decoded.schema_version == 1
    assert decoded.occurred_at.tzinfo is not None


def test_event_type_and_version_cannot_be_forged() -> None:
    event = PromotionApproved(
        model_name="m", version=1, approved_by="a", event_type="Other", schema_version=9
    )
    assert event.event_type == "PromotionApproved"
    assert event.schema_version == PromotionApproved.SCHEMA_VERSION


def test_unknown_fields_are_ignored_on_read() -> None:
    payload = json.loads(_dataset().to_bytes())
    payload["added_by_a_newer_producer"] = {"x": 1}
    decoded = decode_event(json.dumps(payload).encode())
    assert isinstance(decoded, DatasetReady)


def test_caused_event_carries_correlation_and_causation() -> None:
    first = _dataset()
    second = first.caused(
        PromotionApproved, producer="test", model_name="m", version=2, approved_by="me"
    )
    assert second.correlation_id == first.correlation_id
    assert second.causation_id == first.event_id


def test_v1_email_labeled_is_upcast_to_v2() -> None:
    v1 = {
        "event_id": str(uuid4()),
        "event_type": "EmailLabeled",
        "schema_version": 1,
        "occurred_at": datetime.now(UTC).isoformat(),
        "message_key": "<a@b>",
        "is_spam": True,
        "labelled_by": "alice",
    }
    event = decode_event(json.dumps(v1).encode(), expected=EmailLabeled)
    assert event.schema_version == 2
    assert event.label == "spam"
    assert event.labelled_by == "alice"


def test_hand_written_kcat_json_needs_only_the_payload() -> None:
    raw = b'{"model_name": "spam-detector", "version": 3, "approved_by": "alice"}'
    event = decode_event(raw, expected=PromotionApproved)
    assert event.version == 3
    assert event.schema_version == PromotionApproved.SCHEMA_VERSION  # absent = current
    # An editor's UTF-8 byte-order mark is accepted, as json.loads accepts it.
    assert decode_event(b"\xef\xbb\xbf" + raw, expected=PromotionApproved).version == 3


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe\x00",
        b"[1, 2]",
        b"",
        b'{"model_name": "\\ud800"}',  # a lone surrogate: no UTF-8 could carry it on
        b"[" * 100_000,  # nesting deep enough to exhaust a recursive parser
    ],
)
def test_invalid_json_raises_typed_error(raw: bytes) -> None:
    with pytest.raises(InvalidJSONError) as info:
        decode_event(raw, expected=PromotionApproved)
    assert info.value.reason == "invalid-json"


def test_missing_field_names_the_field() -> None:
    with pytest.raises(EventValidationError) as info:
        decode_event(b'{"model_name": "m", "approved_by": "a"}', expected=PromotionApproved)
    assert info.value.field == "version"
    assert "version" in str(info.value)


def test_wrong_type_names_the_nested_field() -> None:
    payload = json.loads(_dataset().to_bytes())
    payload["split"]["train"] = "many"
    with pytest.raises(EventValidationError) as info:
        decode_event(json.dumps(payload))
    assert info.value.field == "split.train"


def test_unknown_type_and_future_version_are_refused() -> None:
    with pytest.raises(UnknownEventTypeError):
        decode_event(b'{"event_type": "Nope"}')
    with pytest.raises(UnknownEventTypeError):
        decode_event(_dataset().to_bytes(), expected=PromotionApproved)
    payload = json.loads(_dataset().to_bytes())
    payload["schema_version"] = 99
    with pytest.raises(UnsupportedSchemaVersionError):
        decode_event(json.dumps(payload))


def test_every_event_has_a_topic_and_descriptions() -> None:
    names = {t.name for t in catalogue()}
    for cls in ALL_EVENTS:
        assert topic_for_event(cls.EVENT_TYPE).name in names
    assert topic_for_event("EmailClassified").partitions == 6
    assert topic_for_event("DatasetReady").partitions == 1


def test_catalogue_keys_are_event_fields() -> None:
    by_type = {cls.EVENT_TYPE: cls for cls in ALL_EVENTS}
    for entry in catalogue():
        if entry.value in by_type:
            assert entry.key in by_type[entry.value].model_fields, entry


def test_checked_in_json_schemas_are_fresh() -> None:
    expected = render_all()
    directory = default_dir()
    stale = [
        name
        for name, text in expected.items()
        if not (directory / name).exists() or (directory / name).read_text("utf-8") != text
    ]
    extra = {p.name for p in directory.glob("*.json")} - set(expected)
    assert not stale and not extra, (
        f"stale JSON Schema files {stale} / extra {extra}: "
        "run `.venv/bin/python -m spamops_schemas.jsonschema`"
    )


def test_approval_signature_covers_the_whole_approval() -> None:
    """Every field that decides or identifies an approval is signed: none can be edited."""
    from datetime import timedelta

    from spamops_schemas.signing import signed, verify_approval

    unsigned = PromotionApproved(
        model_name="spam-detector", version=4, approved_by="alice", reason="better recall"
    )
    good = signed("s3cret", unsigned.model_copy(update={
        "expires_at": unsigned.occurred_at + timedelta(hours=1)
    }))  # fmt: skip
    assert verify_approval("s3cret", good)
    assert verify_approval(["old", "s3cret"], good)  # key rotation: either secret
    assert not verify_approval("other", good)
    assert not verify_approval("", good)
    assert not verify_approval("s3cret", good.model_copy(update={"signature": None}))
    edits: dict[str, object] = {
        "model_name": "other", "version": 5, "approved_by": "mallory", "reason": "",
        "event_id": uuid4(),  # a captured approval re-sent under a new id
        "occurred_at": good.occurred_at + timedelta(seconds=1),
        "expires_at": good.expires_at + timedelta(days=30),  # type: ignore[operator]
    }  # fmt: skip
    for name, value in edits.items():
        assert not verify_approval("s3cret", good.model_copy(update={name: value})), name
    # The same instant written with another offset is the same approval.
    shifted = good.occurred_at.astimezone(timezone(timedelta(hours=5)))
    assert verify_approval("s3cret", good.model_copy(update={"occurred_at": shifted}))
    # Through Kafka's bytes and back it still verifies.
    assert verify_approval("s3cret", PromotionApproved.from_bytes(good.to_bytes()))


def test_an_empty_secret_signs_nothing() -> None:
    from spamops_schemas.signing import sign_approval

    with pytest.raises(ValueError, match="empty secret"):
        sign_approval("", PromotionApproved(model_name="m", version=1, approved_by="a"))


def test_a_v1_approval_is_upcast_without_expiry_and_its_old_signature_fails() -> None:
    from spamops_schemas.signing import verify_approval

    v1 = {
        "event_type": "PromotionApproved", "schema_version": 1, "producer": "old-cli",
        "event_id": "0b6f1c1e-8f8e-4f5e-9a84-3b7c2d1e0f11",
        "occurred_at": "2026-11-01T10:00:00+00:00", "correlation_id": "c",
        "model_name": "spam-detector", "version": 4, "approved_by": "alice", "reason": "",
        # HMAC of "spam-detector|4|alice": what v1 signed.
        "signature": "f" * 64,
    }  # fmt: skip
    event = PromotionApproved.from_bytes(json.dumps(v1))
    assert event.schema_version == 2 and event.expires_at is None
    assert not verify_approval("s3cret", event)
