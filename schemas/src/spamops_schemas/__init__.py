"""spamops event contracts: the envelope, every event, the topic catalogue, upcasters."""

from spamops_schemas.codec import EVENT_TYPES, decode_event, upcast
from spamops_schemas.envelope import Event, utc_now
from spamops_schemas.errors import (
    EventDecodeError,
    EventValidationError,
    InvalidJSONError,
    UnknownEventTypeError,
    UnsupportedSchemaVersionError,
)
from spamops_schemas.events import (
    ALL_EVENTS,
    ClassificationMetrics,
    DatasetReady,
    DriftDetected,
    DriftedFeature,
    DriftWindow,
    EmailClassified,
    EmailLabeled,
    GateFailure,
    ModelPromoted,
    ModelRegistered,
    ModelRejected,
    ModelTrained,
    PromotionApproved,
    SplitCounts,
    TimeRange,
)
from spamops_schemas.topics import Topic, catalogue, topic, topic_for_event

__all__ = [
    "ALL_EVENTS",
    "EVENT_TYPES",
    "ClassificationMetrics",
    "DatasetReady",
    "DriftDetected",
    "DriftWindow",
    "DriftedFeature",
    "EmailClassified",
    "EmailLabeled",
    "Event",
    "EventDecodeError",
    "EventValidationError",
    "GateFailure",
    "InvalidJSONError",
    "ModelPromoted",
    "ModelRegistered",
    "ModelRejected",
    "ModelTrained",
    "PromotionApproved",
    "SplitCounts",
    "TimeRange",
    "Topic",
    "UnknownEventTypeError",
    "UnsupportedSchemaVersionError",
    "catalogue",
    "decode_event",
    "topic",
    "topic_for_event",
    "upcast",
    "utc_now",
]
