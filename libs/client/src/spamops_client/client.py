"""The clients: ``SpamopsClient`` (sync) and ``AsyncSpamopsClient`` share requests and errors."""

from __future__ import annotations

from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx
from spamops_schemas import EmailClassified

Environment = Literal["production", "staging"]
Label = Literal["spam", "ham"]
RFC822 = "message/rfc822"
# Above the gateway's own verdict timeout (5 s by default): its 504 is more useful
# (it names the message key) than a client-side timeout.
DEFAULT_TIMEOUT_S = 30.0


class SpamopsError(Exception):
    """An error answer of the gateway; ``problem`` is its problem+json document."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        title = problem.get("title") or f"HTTP {status}"
        detail = problem.get("detail") or ""
        super().__init__(f"{status} {title}: {detail}" if detail else f"{status} {title}")

    @property
    def message_key(self) -> str | None:
        """The email's key when the problem names one (a timeout, a refusal)."""
        key = self.problem.get("message_key")
        return str(key) if key is not None else None

    @property
    def reason(self) -> str | None:
        """Why inference refused the email (a refusal), e.g. ``not-email``."""
        reason = self.problem.get("reason")
        return str(reason) if reason is not None else None


class Unauthorized(SpamopsError):  # noqa: N818 (named after the HTTP status)
    """401: no API key, or an unknown one."""


class Forbidden(SpamopsError):  # noqa: N818
    """403: the API key lacks the role (classify, label)."""


class NotClassified(SpamopsError):  # noqa: N818
    """422/503 with a ``reason``: inference refused the email or could not classify it."""


class RateLimited(SpamopsError):  # noqa: N818
    """429: the API key's rate limit; ``retry_after_s`` says when to try again."""

    retry_after_s: float = 1.0


class VerdictTimeout(SpamopsError):  # noqa: N818
    """504: no verdict in time; ask for ``message_key`` later with ``verdict``."""


def _error(response: httpx.Response) -> SpamopsError:
    try:
        problem = response.json()
        if not isinstance(problem, dict):
            raise ValueError
    except ValueError:
        problem = {"title": response.reason_phrase, "detail": response.text[:500]}
    status = response.status_code
    cls: type[SpamopsError] = SpamopsError
    if status == 401:
        cls = Unauthorized
    elif status == 403:
        cls = Forbidden
    elif status == 429:
        cls = RateLimited
    elif status == 504:
        cls = VerdictTimeout
    elif status in (422, 503) and "reason" in problem:
        cls = NotClassified
    error = cls(status, problem)
    if isinstance(error, RateLimited):
        try:
            error.retry_after_s = float(response.headers.get("retry-after", "1"))
        except ValueError:
            error.retry_after_s = 1.0
    return error


def _headers(api_key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}", "Accept": "application/json"}


def _email_request(raw: bytes, environment: Environment) -> dict[str, Any]:
    return {
        "content": raw,
        "headers": {"Content-Type": RFC822, "X-Environment": environment},
    }


def _verdict(response: httpx.Response) -> EmailClassified:
    if response.status_code != 200:
        raise _error(response)
    return EmailClassified.from_bytes(response.content)


def _key(response: httpx.Response) -> str:
    if response.status_code != 202:
        raise _error(response)
    return str(response.json()["message_key"])


def _maybe_verdict(response: httpx.Response) -> EmailClassified | None:
    if response.status_code == 404:
        return None
    return _verdict(response)


def _label_body(key: str, label: Label, labelled_by: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"message_key": key, "label": label}
    if labelled_by is not None:
        body["labelled_by"] = labelled_by
    return body


def _label_result(response: httpx.Response) -> str:
    if response.status_code != 202:
        raise _error(response)
    return str(response.json()["event_id"])


class SpamopsClient:
    """Synchronous client of the gateway (one connection pool; use as a context manager)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self._http = httpx.Client(
            base_url=base_url, headers=_headers(api_key), timeout=timeout_s, transport=transport
        )

    def classify(self, raw: bytes, environment: Environment = "production") -> EmailClassified:
        """Classify an email and wait for the verdict (``VerdictTimeout`` names its key)."""
        return _verdict(self._http.post("/v1/classify", **_email_request(raw, environment)))

    def submit(self, raw: bytes, environment: Environment = "production") -> str:
        """Submit an email; its message key, to ask for the verdict with ``verdict``."""
        return _key(self._http.post("/v1/emails", **_email_request(raw, environment)))

    def verdict(self, key: str) -> EmailClassified | None:
        """The verdict of ``key``, or None while there is none (yet)."""
        return _maybe_verdict(self._http.get(f"/v1/verdicts/{quote(key, safe='')}"))

    def label(self, key: str, label: Label, labelled_by: str | None = None) -> str:
        """Label an email spam or ham; the EmailLabeled event's id."""
        return _label_result(
            self._http.post("/v1/feedback", json=_label_body(key, label, labelled_by))
        )

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncSpamopsClient:
    """asyncio client of the gateway (use as an async context manager)."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        transport: httpx.AsyncBaseTransport | None = None,
        limits: httpx.Limits | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url,
            headers=_headers(api_key),
            timeout=timeout_s,
            transport=transport,
            limits=limits or httpx.Limits(max_connections=100, max_keepalive_connections=20),
        )

    async def classify(
        self, raw: bytes, environment: Environment = "production"
    ) -> EmailClassified:
        """Classify an email and wait for the verdict (``VerdictTimeout`` names its key)."""
        return _verdict(await self._http.post("/v1/classify", **_email_request(raw, environment)))

    async def submit(self, raw: bytes, environment: Environment = "production") -> str:
        """Submit an email; its message key, to ask for the verdict with ``verdict``."""
        return _key(await self._http.post("/v1/emails", **_email_request(raw, environment)))

    async def verdict(self, key: str) -> EmailClassified | None:
        """The verdict of ``key``, or None while there is none (yet)."""
        return _maybe_verdict(await self._http.get(f"/v1/verdicts/{quote(key, safe='')}"))

    async def label(self, key: str, label: Label, labelled_by: str | None = None) -> str:
        """Label an email spam or ham; the EmailLabeled event's id."""
        return _label_result(
            await self._http.post("/v1/feedback", json=_label_body(key, label, labelled_by))
        )

    async def aclose(self) -> None:
        """Close the connections."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
