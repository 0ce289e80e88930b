"""Reading events from Kafka records: JSON -> upcast -> validated pydantic model."""

from __future__ import annotations

from typing import Any, TypeVar, overload

from pydantic import ValidationError
from pydantic_core import from_json

from spamops_schemas.envelope import Event
from spamops_schemas.errors import (
    EventValidationError,
    InvalidJSONError,
    UnknownEventTypeError,
    UnsupportedSchemaVersionError,
)
from spamops_schemas.events import ALL_EVENTS
from spamops_schemas.upcasters import find_upcaster

E = TypeVar("E", bound=Event)

_UTF8_BOM = b"\xef\xbb\xbf"
EVENT_TYPES: dict[str, type[Event]] = {cls.EVENT_TYPE: cls for cls in ALL_EVENTS}


def _load_json(raw: bytes | str | dict[str, Any]) -> dict[str, Any]:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, bytes | bytearray) and raw[:3] == _UTF8_BOM:
        raw = raw[3:]  # as json.loads accepts it (a hand-written file from an editor)
    try:
        # pydantic's own JSON parser (jiter): a verdict with its features decodes ~3x
        # faster than with json.loads, and the monitor decodes every verdict. It also
        # refuses invalid UTF-8 and lone surrogates, which could not be re-encoded.
        data = from_json(raw)
    except ValueError as exc:
        raise InvalidJSONError(f"record is not UTF-8 JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise InvalidJSONError(f"record is JSON {type(data).__name__}, not an object")
    return data


def upcast(event_cls: type[Event], payload: dict[str, Any]) -> dict[str, Any]:
    """Bring ``payload`` up to ``event_cls.SCHEMA_VERSION`` through the registered upcasters."""
    version = payload.get("schema_version", event_cls.SCHEMA_VERSION)
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise EventValidationError(
            f"schema_version must be a positive integer, got {version!r}", field="schema_version"
        )
    if version > event_cls.SCHEMA_VERSION:
        raise UnsupportedSchemaVersionError(
            f"{event_cls.EVENT_TYPE} v{version} is newer than this code "
            f"(v{event_cls.SCHEMA_VERSION})",
            field="schema_version",
        )
    while version < event_cls.SCHEMA_VERSION:
        step = find_upcaster(event_cls.EVENT_TYPE, version)
        if step is None:
            raise UnsupportedSchemaVersionError(
                f"no upcaster for {event_cls.EVENT_TYPE} v{version}", field="schema_version"
            )
        payload = step(payload)
        version += 1
        payload["schema_version"] = version
    return payload


@overload
def decode_event(raw: bytes | str | dict[str, Any], expected: type[E]) -> E: ...
@overload
def decode_event(raw: bytes | str | dict[str, Any], expected: None = None) -> Event: ...
def decode_event(raw: bytes | str | dict[str, Any], expected: type[Event] | None = None) -> Event:
    """Decode a record into its event class, upcasting older schema versions.

    With ``expected`` the record must be of that type (a missing ``event_type``
    is taken to be it, so hand-written JSON from kcat needs only the payload).
    Raises a subclass of :class:`EventDecodeError` naming the offending field.
    """
    payload = _load_json(raw)
    event_type = payload.get("event_type") or (expected.EVENT_TYPE if expected else None)
    if event_type is None:
        raise EventValidationError("event_type is missing", field="event_type")
    event_cls = EVENT_TYPES.get(str(event_type))
    if event_cls is None:
        raise UnknownEventTypeError(f"unknown event_type {event_type!r}", field="event_type")
    if expected is not None and event_cls is not expected:
        raise UnknownEventTypeError(
            f"expected {expected.EVENT_TYPE}, got {event_type}", field="event_type"
        )
    payload = upcast(event_cls, payload)
    try:
        return event_cls.model_validate(payload)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = ".".join(str(part) for part in first["loc"]) or None
        raise EventValidationError(
            f"{event_cls.EVENT_TYPE}: field {field!r}: {first['msg']}", field=field
        ) from exc
