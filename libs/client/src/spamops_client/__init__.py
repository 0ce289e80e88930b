"""spamops Python client of the gateway's HTTP API (sync and asyncio, on httpx).

::

    from spamops_client import SpamopsClient

    with SpamopsClient("http://127.0.0.1:8080", api_key) as client:
        verdict = client.classify(open("mail.eml", "rb").read())
        print(verdict.verdict, verdict.spam_probability)
        client.label(verdict.message_key, "spam")

Results are the platform's own event models (``spamops_schemas.EmailClassified``).
An error answer raises ``SpamopsError`` (or a subclass per status) carrying the
problem+json document; a timeout of ``classify`` raises ``VerdictTimeout`` whose
``message_key`` can be asked for later with ``verdict``.
"""

from __future__ import annotations

from spamops_client.client import (
    AsyncSpamopsClient,
    Forbidden,
    NotClassified,
    RateLimited,
    SpamopsClient,
    SpamopsError,
    Unauthorized,
    VerdictTimeout,
)

__all__ = [
    "AsyncSpamopsClient",
    "Forbidden",
    "NotClassified",
    "RateLimited",
    "SpamopsClient",
    "SpamopsError",
    "Unauthorized",
    "VerdictTimeout",
]
