"""Which labels were already applied to the sender reputation (redelivery must not recount).

A label (EmailLabeled) is at-least-once: a crash or a rebalance between the push to
Feast and the offset commit delivers it again. The ledger remembers each applied
label's event id in Redis (the online store's Redis, one key per label with a TTL),
so a redelivered label is acknowledged without a second push.
"""

from __future__ import annotations

from typing import Protocol


class AppliedLabels(Protocol):
    """Remembers which label events were applied."""

    def applied(self, event_id: str) -> bool:
        """Whether this label was already applied."""
        ...

    def mark(self, event_id: str) -> None:
        """Record that this label is applied (after the push succeeded)."""
        ...


class RedisAppliedLabels:
    """``AppliedLabels`` in Redis: ``spamops:label-applied:<event id>``, kept ``ttl_s``."""

    PREFIX = "spamops:label-applied:"

    def __init__(self, url: str, ttl_s: int = 30 * 86400) -> None:
        import redis

        self._redis = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        self.ttl_s = ttl_s

    def applied(self, event_id: str) -> bool:
        """Whether this label was already applied (raises when Redis is away: retried)."""
        return bool(self._redis.exists(self.PREFIX + event_id))

    def mark(self, event_id: str) -> None:
        """Record this label as applied."""
        self._redis.set(self.PREFIX + event_id, b"1", ex=self.ttl_s)


class MemoryAppliedLabels:
    """``AppliedLabels`` in a set: for tests and stacks without Redis."""

    def __init__(self) -> None:
        self.ids: set[str] = set()

    def applied(self, event_id: str) -> bool:
        """Whether this label was already applied."""
        return event_id in self.ids

    def mark(self, event_id: str) -> None:
        """Record this label as applied."""
        self.ids.add(event_id)
