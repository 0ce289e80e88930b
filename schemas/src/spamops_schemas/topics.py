"""The topic catalogue (docs/DESIGN.md §2), read from ``topics.json``.

The JSON file is the one source that code, tests and deploy files read.
Every topic has a dead-letter twin ``<name>.dlq`` with the same partitions.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cache
from importlib import resources

DLQ_SUFFIX = ".dlq"
RAW_EMAIL = "raw-rfc822"


@dataclass(frozen=True)
class Topic:
    """One Kafka topic of the catalogue."""

    name: str
    value: str  # event type, or "raw-rfc822" for the inbox
    key: str
    partitions: int
    kind: str  # "control" or "email"
    description: str
    # Kafka topic configs at creation, for the topic and its dead-letter twin
    # (e.g. emails.inbox: max.message.bytes, so a message up to the inference
    # service's limit fits, and its dead letter too).
    configs: Mapping[str, str] = field(default_factory=dict, hash=False)

    @property
    def dlq(self) -> str:
        """Name of this topic's dead-letter topic."""
        return self.name + DLQ_SUFFIX


@cache
def catalogue() -> tuple[Topic, ...]:
    """All topics, in catalogue order."""
    text = resources.files(__package__).joinpath("topics.json").read_text("utf-8")
    data = json.loads(text)
    return tuple(Topic(**entry) for entry in data["topics"])


def topic(name: str) -> Topic:
    """The catalogue entry named ``name`` (KeyError if unknown)."""
    for entry in catalogue():
        if entry.name == name:
            return entry
    raise KeyError(name)


def topic_for_event(event_type: str) -> Topic:
    """The topic an event type is published to."""
    for entry in catalogue():
        if entry.value == event_type:
            return entry
    raise KeyError(event_type)


def topic_configs() -> dict[str, dict[str, str]]:
    """Topic name -> Kafka configs to create it with (dead-letter topics included)."""
    configs: dict[str, dict[str, str]] = {}
    for entry in catalogue():
        if entry.configs:
            configs[entry.name] = dict(entry.configs)
            configs[entry.dlq] = dict(entry.configs)
    return configs


def all_topic_names(*, with_dlq: bool = True) -> list[str]:
    """Names of every topic (and its dead-letter topic) to create."""
    names = [t.name for t in catalogue()]
    if with_dlq:
        names += [t.dlq for t in catalogue()]
    return names


DATASETS_READY = "datasets.ready"
MODELS_TRAINED = "models.trained"
MODELS_REGISTERED = "models.registered"
MODELS_REJECTED = "models.rejected"
PROMOTION_APPROVED = "models.promotion-approved"
MODELS_PROMOTED = "models.promoted"
EMAILS_INBOX = "emails.inbox"
EMAILS_VERDICTS = "emails.verdicts"
EMAILS_FEEDBACK = "emails.feedback"
MONITORING_DRIFT = "monitoring.drift"
