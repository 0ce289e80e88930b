"""The milter's outside world: the gateway's classify path over HTTP.

``POST /v1/classify`` with the raw RFC 822 bytes (``Content-Type:
message/rfc822``), ``X-Environment`` and ``Authorization: Bearer <key>``:
200 is an EmailClassified JSON, 504 means no verdict in time, any other error
is an ``application/problem+json``. Every failure becomes an ``Unchecked``
outcome; nothing here raises for the gateway's sake.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable
from typing import Any

import httpx

from spamops_milter.handlers import Outcome, Unchecked, parse_classification
from spamops_milter.settings import Environment

logger = logging.getLogger(__name__)

CLASSIFY_PATH = "/v1/classify"


def _problem(response: httpx.Response) -> tuple[str, str | None]:
    """A short description of an error answer and the message key it names, if any."""
    try:
        body: Any = response.json()
    except ValueError:
        return response.text[:200], None
    if not isinstance(body, dict):
        return str(body)[:200], None
    title = body.get("title") or response.reason_phrase
    detail = body.get("detail")
    key = body.get("message_key")
    text = f"{title}: {detail}" if detail else str(title)
    return text[:500], str(key) if key is not None else None


class HttpGateway:
    """The gateway's classify path, with one pooled, thread-safe httpx client.

    libmilter runs each SMTP connection in its own thread; they share this client.
    ``api_key`` is called per request, so a key file written after the milter
    started (the gateway creates it on its first start) is picked up.
    """

    def __init__(
        self,
        base_url: str,
        *,
        timeout_s: float,
        api_key: Callable[[], str | None],
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base_url = base_url
        self._api_key = api_key
        if transport is None:
            # httpx writes a request's headers and body separately; with Nagle on, the
            # body waits for the server's delayed ACK (40 ms on Linux, seen here).
            transport = httpx.HTTPTransport(
                socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)]
            )
        self._client = httpx.Client(
            base_url=base_url,
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            # Never follow a redirect with a mail in the body to some other place.
            follow_redirects=False,
        )

    def classify(self, raw: bytes, *, environment: Environment) -> Outcome:
        """The gateway's verdict for ``raw``, or why there is none."""
        headers = {"Content-Type": "message/rfc822", "X-Environment": environment}
        key = self._api_key()
        if key:
            headers["Authorization"] = f"Bearer {key}"
        try:
            response = self._client.post(CLASSIFY_PATH, content=raw, headers=headers)
        except httpx.TimeoutException as exc:
            return Unchecked("timeout", f"{type(exc).__name__} after {self._timeout_s()}s")
        except httpx.HTTPError as exc:
            return Unchecked("unreachable", f"{type(exc).__name__}: {exc}")
        status = response.status_code
        if status == 200:
            try:
                return parse_classification(response.json())
            except ValueError as exc:  # JSONDecodeError is a ValueError too
                return Unchecked("bad-response", str(exc)[:500], status=status)
        detail, key_named = _problem(response)
        if status == 504:
            return Unchecked("no-verdict", detail, status=status, message_key=key_named)
        if status >= 500:
            return Unchecked("gateway-error", detail, status=status, message_key=key_named)
        # 4xx (401 bad key, 413 too large, 429 rate limited, ...) and odd 1xx/3xx.
        return Unchecked("refused", detail, status=status, message_key=key_named)

    def _timeout_s(self) -> float | None:
        return self._client.timeout.read

    def close(self) -> None:
        """Close the connection pool."""
        self._client.close()
