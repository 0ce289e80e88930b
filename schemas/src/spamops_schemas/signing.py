"""HMAC signatures of promotion approvals (shared secret between approvers and the bridge)."""

from __future__ import annotations

import hashlib
import hmac

from spamops_schemas.events import PromotionApproved


def approval_message(model_name: str, version: int, approved_by: str) -> bytes:
    """The canonical bytes an approval signature covers."""
    return f"{model_name}|{version}|{approved_by}".encode()


def sign_approval(secret: str, model_name: str, version: int, approved_by: str) -> str:
    """Hex HMAC-SHA256 of the approval, as put in ``PromotionApproved.signature``."""
    message = approval_message(model_name, version, approved_by)
    return hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()


def verify_approval(secret: str, event: PromotionApproved) -> bool:
    """True when the event carries a valid signature for ``secret`` (constant time)."""
    if not event.signature:
        return False
    expected = sign_approval(secret, event.model_name, event.version, event.approved_by)
    return hmac.compare_digest(expected, event.signature)
