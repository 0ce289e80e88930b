"""Upcasters: functions that turn a stored payload of version N into version N+1.

Consumers always read the newest schema; a record written by an older producer
is upcast step by step before validation (the eventsourcing pattern).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Payload = dict[str, Any]
Upcaster = Callable[[Payload], Payload]

# (event_type, from_version) -> function producing from_version + 1
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def upcaster(event_type: str, from_version: int) -> Callable[[Upcaster], Upcaster]:
    """Register ``fn`` as the upcaster of ``event_type`` from ``from_version``."""

    def register(fn: Upcaster) -> Upcaster:
        key = (event_type, from_version)
        if key in _UPCASTERS:
            raise ValueError(f"duplicate upcaster for {event_type} v{from_version}")
        _UPCASTERS[key] = fn
        return fn

    return register


def find_upcaster(event_type: str, from_version: int) -> Upcaster | None:
    """The upcaster of ``event_type`` from ``from_version``, if any."""
    return _UPCASTERS.get((event_type, from_version))


@upcaster("EmailLabeled", from_version=1)
def _email_labeled_v1_to_v2(payload: Payload) -> Payload:
    """v1 carried ``is_spam: bool`` (the original feedback API); v2 carries ``label``."""
    upgraded = dict(payload)
    is_spam = upgraded.pop("is_spam", None)
    if "label" not in upgraded and is_spam is not None:
        upgraded["label"] = "spam" if is_spam else "ham"
    upgraded["schema_version"] = 2
    return upgraded


@upcaster("PromotionApproved", from_version=1)
def _promotion_approved_v1_to_v2(payload: Payload) -> Payload:
    """v1 had no expiry and signed only model|version|approver: it keeps no expiry.

    Its signature cannot be carried over (v2 signs more), so a bridge that requires
    signatures refuses it with ``bad-signature``; an unsigned local stack still accepts it.
    """
    upgraded = dict(payload)
    upgraded.setdefault("expires_at", None)
    upgraded["schema_version"] = 2
    return upgraded
