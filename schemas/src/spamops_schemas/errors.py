"""Typed errors raised when a record cannot be read as an event."""

from __future__ import annotations


class EventDecodeError(ValueError):
    """A record could not be decoded into an event.

    ``reason`` is a short machine-readable code that services put into the
    ``x-error-reason`` header of dead-letter records.
    """

    reason = "invalid-event"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class InvalidJSONError(EventDecodeError):
    """The record's bytes are not UTF-8 JSON (or not a JSON object)."""

    reason = "invalid-json"


class UnknownEventTypeError(EventDecodeError):
    """The record names an ``event_type`` this code does not know."""

    reason = "unknown-event-type"


class UnsupportedSchemaVersionError(EventDecodeError):
    """The record's ``schema_version`` is newer than this code, or has no upcaster."""

    reason = "unsupported-schema-version"


class EventValidationError(EventDecodeError):
    """A field is missing or has the wrong type; ``field`` names the first one."""

    reason = "invalid-field"
