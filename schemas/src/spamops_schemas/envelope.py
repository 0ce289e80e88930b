"""The event envelope every spamops event carries (docs/DESIGN.md §3)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, ClassVar, Self, TypeVar
from uuid import UUID, uuid4

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

EventT = TypeVar("EventT", bound="Event")


def utc_now() -> datetime:
    """The current time, timezone-aware in UTC."""
    return datetime.now(UTC)


class Event(BaseModel):
    """Base of every event: the envelope fields plus the payload of a subclass.

    Unknown fields are ignored on read so older consumers keep working when a
    producer adds a field (forward compatibility). A breaking change bumps
    ``SCHEMA_VERSION`` and registers an upcaster from the previous version.
    """

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    EVENT_TYPE: ClassVar[str] = "Event"
    SCHEMA_VERSION: ClassVar[int] = 1

    event_id: UUID = Field(default_factory=uuid4, description="Unique id of this event.")
    event_type: str = Field(default="", description="Name of the event class, e.g. DatasetReady.")
    schema_version: int = Field(default=0, description="Version of this event type's schema.")
    occurred_at: AwareDatetime = Field(
        default_factory=utc_now, description="When the event happened (UTC)."
    )
    producer: str = Field(default="unknown", description="Service or tool that produced it.")
    correlation_id: str = Field(
        default_factory=lambda: str(uuid4()),
        description="One id for a whole lifecycle chain: dataset -> model -> deployment.",
    )
    causation_id: UUID | None = Field(
        default=None, description="event_id of the event that caused this one, if any."
    )

    def model_post_init(self, context: Any, /) -> None:
        # The type and version always describe the class, whatever the caller passed.
        object.__setattr__(self, "event_type", type(self).EVENT_TYPE)
        object.__setattr__(self, "schema_version", type(self).SCHEMA_VERSION)

    def caused(self, event_cls: type[EventT], *, producer: str, **payload: Any) -> EventT:
        """Build the next event of a chain: same correlation id, causation = this event."""
        return event_cls(
            producer=producer,
            correlation_id=self.correlation_id,
            causation_id=self.event_id,
            **payload,
        )

    def to_bytes(self) -> bytes:
        """UTF-8 JSON, as it travels on Kafka."""
        return self.model_dump_json().encode("utf-8")

    @classmethod
    def from_bytes(cls, raw: bytes | str) -> Self:
        """Decode (and upcast) a record of exactly this event type."""
        from spamops_schemas.codec import decode_event

        event = decode_event(raw, expected=cls)
        return event
