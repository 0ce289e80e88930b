"""HMAC signatures of promotion approvals (a shared secret between approvers and the bridge).

The signature covers a canonical encoding of the whole approval, so no field can be
changed and no captured approval re-sent under a new event id: model, version,
approver, reason, event id, issued-at (the envelope's ``occurred_at``) and expiry.
Key rotation: the bridge accepts a current and a previous secret (see deploy/README.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from datetime import UTC, datetime

from spamops_schemas.events import PromotionApproved


def _instant(value: datetime | None) -> str | None:
    # One spelling per instant (UTC, microseconds), whatever offset the sender wrote.
    return None if value is None else value.astimezone(UTC).isoformat(timespec="microseconds")


def approval_message(event: PromotionApproved) -> bytes:
    """The canonical bytes an approval signature covers (sorted-key compact JSON)."""
    body = {
        "model_name": event.model_name,
        "version": event.version,
        "approved_by": event.approved_by,
        "reason": event.reason,
        "event_id": str(event.event_id),
        "occurred_at": _instant(event.occurred_at),
        "expires_at": _instant(event.expires_at),
        "schema": f"{event.event_type}/v{event.schema_version}",
    }
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def sign_approval(secret: str, event: PromotionApproved) -> str:
    """Hex HMAC-SHA256 of the approval, as put in ``PromotionApproved.signature``."""
    if not secret:
        raise ValueError("an empty secret signs nothing: anyone could compute it")
    return hmac.new(secret.encode("utf-8"), approval_message(event), hashlib.sha256).hexdigest()


def signed(secret: str, event: PromotionApproved) -> PromotionApproved:
    """The same approval carrying its signature."""
    return event.model_copy(update={"signature": sign_approval(secret, event)})


def verify_approval(secrets: str | Iterable[str], event: PromotionApproved) -> bool:
    """True when the event carries a valid signature for one of ``secrets`` (constant time).

    Several secrets are accepted during a key rotation (current and previous).
    """
    if not event.signature:
        return False
    candidates = [secrets] if isinstance(secrets, str) else list(secrets)
    valid = False
    for secret in candidates:
        if secret:  # an empty secret never verifies anything
            valid |= hmac.compare_digest(sign_approval(secret, event), event.signature)
    return valid
