"""The gateway's HTTP API (FastAPI): routes, API keys, rate limits, problem+json errors.

Only HTTP here: reading and checking requests, mapping outcomes to status
codes. What a request does is in ``handlers``; ``app.py`` builds this with the
real dependencies, the tests with fakes of the same Protocols.

Every error is ``application/problem+json`` (RFC 9457: type, title, status,
detail, plus members such as ``message_key`` or ``reason``). Order of checks:
API key (401, 403), rate limit (429), media type (415), size (413), content (422).
"""

# No `from __future__ import annotations`: FastAPI reads the route and dependency
# signatures at runtime, and the dependencies are closures it could not resolve by name.

import base64
import binascii
import logging
import re
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal, Protocol

from fastapi import Depends, FastAPI, Header, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from opentelemetry import context as otel_context
from opentelemetry.trace import SpanKind
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError
from spamops_runtime.api_keys import ROLE_CLASSIFY, ROLE_LABEL, ApiKey
from spamops_runtime.logs import log_context
from spamops_runtime.tracing import tracer
from spamops_schemas import EmailClassified
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from spamops_gateway import handlers
from spamops_gateway.handlers import (
    ExplainerUnavailableError,
    GatewayDeps,
    OverloadedError,
    RateLimiter,
    Refusal,
    StoreUnavailableError,
    VerdictTimeoutError,
    retry_after,
)
from spamops_gateway.metrics import RATE_LIMITED, REQUEST_SECONDS, REQUESTS

logger = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
PROBLEM_BASE = "https://spamops.dev/problems/"
RFC822 = "message/rfc822"
JSON = "application/json"
CORRELATION_HEADER = "X-Correlation-ID"
_CORRELATION_OK = re.compile(r"^[A-Za-z0-9._:@/+=-]{1,128}$")
# Reasons of inference's dead letters that say "not now" rather than "not this email".
UNAVAILABLE_REASONS = frozenset({"no-model"})
_PROPAGATOR = TraceContextTextMapPropagator()

Readiness = Callable[[], Awaitable[dict[str, bool]]]


class Keys(Protocol):
    """The API keys (``spamops_runtime.api_keys.KeyRing``)."""

    def lookup(self, key: str) -> ApiKey | None: ...


class ProblemError(Exception):
    """An error answered as problem+json (RFC 9457)."""

    def __init__(
        self,
        status: int,
        title: str,
        detail: str = "",
        *,
        slug: str | None = None,
        headers: dict[str, str] | None = None,
        **members: Any,
    ) -> None:
        super().__init__(detail or title)
        self.status = status
        self.title = title
        self.detail = detail
        self.slug = slug
        self.headers = headers or {}
        self.members = members

    def body(self, instance: str | None = None) -> dict[str, Any]:
        """The problem document."""
        doc: dict[str, Any] = {
            "type": PROBLEM_BASE + self.slug if self.slug else "about:blank",
            "title": self.title,
            "status": self.status,
            "detail": self.detail or self.title,
        }
        if instance:
            doc["instance"] = instance
        doc.update(self.members)
        return doc


def problem_response(problem: ProblemError, request: Request | None = None) -> JSONResponse:
    """The problem as a response with its headers."""
    return JSONResponse(
        problem.body(request.url.path if request is not None else None),
        status_code=problem.status,
        media_type=PROBLEM_JSON,
        headers=problem.headers,
    )


class FeedbackRequest(BaseModel):
    """A label for a message the gateway classified (or any message key)."""

    message_key: str = Field(min_length=1, max_length=512, description="Key of the email.")
    label: Literal["spam", "ham"]
    labelled_by: str | None = Field(
        default=None, max_length=200, description="Who labels; default: the API key's name."
    )


class RawEmailJson(BaseModel):
    """An email in JSON: its RFC 822 bytes in base64."""

    raw_base64: str = Field(description="The whole message, base64 (RFC 4648).")


class Accepted(BaseModel):
    """An email accepted for classification: ask for its verdict with this key."""

    message_key: str


class LabelAccepted(BaseModel):
    """A label published on emails.feedback."""

    message_key: str
    event_id: str


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";", 1)[0].strip().lower()


async def _read_body(request: Request, limit: int) -> bytes:
    """The body, refused with 413 past ``limit`` bytes (without reading it all)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise ProblemError(
            413, "Payload Too Large", f"{declared} bytes > limit {limit}", slug="too-large"
        )
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ProblemError(
                413, "Payload Too Large", f"more than {limit} bytes", slug="too-large"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def _email_body_limit(max_email_bytes: int) -> int:
    """Largest JSON body: the email in base64 plus room for the JSON around it."""
    return (max_email_bytes + 2) // 3 * 4 + 64 * 1024


async def read_email(request: Request, max_email_bytes: int) -> bytes:
    """The raw email of a request: ``message/rfc822`` bytes or JSON ``{"raw_base64": ...}``."""
    media = _media_type(request)
    if media == RFC822:
        raw = await _read_body(request, max_email_bytes)
    elif media == JSON:
        body = await _read_body(request, _email_body_limit(max_email_bytes))
        try:
            encoded = RawEmailJson.model_validate_json(body).raw_base64
            raw = base64.b64decode(encoded, validate=True)
        except ValidationError as exc:
            raise ProblemError(
                422,
                "Unprocessable Content",
                'the JSON body must be {"raw_base64": "<base64 of the RFC 822 message>"}',
                slug="invalid-body",
                errors=exc.errors(include_url=False, include_context=False, include_input=False),
            ) from None
        except (binascii.Error, ValueError):
            raise ProblemError(
                422, "Unprocessable Content", "raw_base64 is not valid base64", slug="invalid-body"
            ) from None
        if len(raw) > max_email_bytes:
            raise ProblemError(
                413,
                "Payload Too Large",
                f"{len(raw)} bytes > limit {max_email_bytes}",
                slug="too-large",
            )
    else:
        raise ProblemError(
            415,
            "Unsupported Media Type",
            f"send {RFC822} (the raw email) or {JSON} with raw_base64, not {media or 'nothing'}",
            slug="unsupported-media-type",
        )
    if not raw.strip():
        raise ProblemError(422, "Unprocessable Content", "the email is empty", slug="empty")
    return raw


def _environment(x_environment: str | None) -> handlers.Environment:
    environment = handlers.environment_of(x_environment)
    if environment is None:
        raise ProblemError(
            422,
            "Unprocessable Content",
            f"X-Environment must be production or staging, not {x_environment!r}",
            slug="bad-environment",
        )
    return environment


def _refused(refusal: Refusal) -> ProblemError:
    """A dead-lettered email: 422 (the email), or 503 when the platform cannot serve yet."""
    if refusal.reason in UNAVAILABLE_REASONS:
        return ProblemError(
            503,
            "Service Unavailable",
            f"inference could not classify it: {refusal.reason} ({refusal.message})",
            slug="not-classified",
            headers={"Retry-After": "30"},
            message_key=refusal.message_key,
            reason=refusal.reason,
        )
    return ProblemError(
        422,
        "Unprocessable Content",
        f"inference refused the email: {refusal.reason} ({refusal.message})",
        slug="refused",
        message_key=refusal.message_key,
        reason=refusal.reason,
    )


def _verdict_response(verdict: EmailClassified) -> Response:
    return Response(verdict.to_bytes(), media_type=JSON)


class ObserveRequests:
    """ASGI middleware: correlation id and trace per request, metrics, one log line.

    The correlation id is the caller's ``X-Correlation-ID`` when it is sane,
    else a new one; it is bound to every log line of the request, answered in
    the same header and sent in the inbox record's ``x-correlation-id``. A
    SERVER span continues the caller's ``traceparent``; the inbox record
    carries it on, so inference's verdict joins the same trace.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        given = headers.get(CORRELATION_HEADER.lower(), "")
        correlation_id = given if _CORRELATION_OK.match(given) else str(uuid.uuid4())
        scope.setdefault("state", {})["correlation_id"] = correlation_id
        status = {"code": 500}

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [
                    *message["headers"],
                    (CORRELATION_HEADER.lower().encode(), correlation_id.encode()),
                ]
            await send(message)

        began = time.perf_counter()
        method = scope.get("method", "")
        token = otel_context.attach(_PROPAGATOR.extract(carrier=headers))
        try:
            with (
                tracer().start_as_current_span(
                    f"gateway {method} {scope.get('path', '')}", kind=SpanKind.SERVER
                ) as span,
                log_context(correlation_id=correlation_id),
            ):
                await self.app(scope, receive, send_with_id)
                span.set_attribute("http.response.status_code", status["code"])
        finally:
            otel_context.detach(token)
            route = scope.get("route")
            path = getattr(route, "path", None) or "unmatched"
            code = str(status["code"])
            elapsed = time.perf_counter() - began
            REQUESTS.labels(path, method, code).inc()
            REQUEST_SECONDS.labels(path, method, code).observe(elapsed)
            if path not in ("/metrics", "/healthz", "/readyz"):
                logger.info(
                    "request",
                    extra={
                        "correlation_id": correlation_id,
                        "method": method,
                        "route": path,
                        "status": status["code"],
                        "ms": round(elapsed * 1000, 2),
                    },
                )


def create_api(
    deps: GatewayDeps,
    *,
    keys: Keys,
    limiter: RateLimiter,
    max_email_bytes: int,
    readiness: Readiness,
) -> FastAPI:
    """The gateway's FastAPI application around ``deps``."""
    api = FastAPI(
        title="spamops gateway",
        version="0.1.0",
        description="Classify emails with the spamops platform over HTTP. Every request "
        "needs an API key (`Authorization: Bearer <key>` or `X-API-Key`); errors are "
        "`application/problem+json` (RFC 9457).",
    )
    api.add_middleware(ObserveRequests)

    @api.exception_handler(ProblemError)
    async def _problem(request: Request, exc: ProblemError) -> JSONResponse:
        return problem_response(exc, request)

    @api.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        problem = ProblemError(
            exc.status_code,
            _reason(exc.status_code),
            str(exc.detail),
            headers=dict(exc.headers or {}),
        )
        return problem_response(problem, request)

    @api.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        problem = ProblemError(
            422,
            "Unprocessable Content",
            "the request is not valid",
            slug="invalid-request",
            errors=[{k: e[k] for k in ("loc", "msg", "type") if k in e} for e in exc.errors()],
        )
        return problem_response(problem, request)

    # Dependencies are coroutines: FastAPI runs a plain `def` one in a worker thread, two
    # thread hand-offs per request for a dictionary lookup (seen in a profile at 200/s).
    async def caller(
        request: Request,
        authorization: Annotated[str | None, Header()] = None,
        x_api_key: Annotated[str | None, Header()] = None,
    ) -> ApiKey:
        """The API key of the request (401 if missing or unknown), rate-limited (429)."""
        given = x_api_key
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                given = token.strip()
        challenge = {"WWW-Authenticate": 'Bearer realm="spamops"'}
        if not given:
            raise ProblemError(
                401,
                "Unauthorized",
                "an API key is required: Authorization: Bearer <key> (or X-API-Key)",
                slug="unauthorized",
                headers=challenge,
            )
        found = keys.lookup(given)
        if found is None:
            raise ProblemError(
                401, "Unauthorized", "unknown API key", slug="unauthorized", headers=challenge
            )
        wait = limiter.acquire(found.name)
        if wait > 0:
            RATE_LIMITED.labels(found.name).inc()
            raise ProblemError(
                429,
                "Too Many Requests",
                f"rate limit of this API key reached; retry in {wait:.2f}s",
                slug="rate-limited",
                headers={"Retry-After": retry_after(wait)},
            )
        request.state.api_key_name = found.name
        return found

    def role(name: str) -> Callable[..., Awaitable[ApiKey]]:
        async def check(found: Annotated[ApiKey, Depends(caller)]) -> ApiKey:
            if name not in found.roles:
                raise ProblemError(
                    403,
                    "Forbidden",
                    f"this API key ({found.name}) lacks the role {name!r}",
                    slug="forbidden",
                )
            return found

        return check

    email_body: dict[str, Any] = {
        "requestBody": {
            "required": True,
            "content": {
                RFC822: {"schema": {"type": "string", "format": "binary"}},
                JSON: {"schema": RawEmailJson.model_json_schema()},
            },
        }
    }
    env_header = Header(
        alias="X-Environment",
        description="production (default) or staging: the model that classifies the email.",
    )
    problems: dict[int | str, dict[str, Any]] = {
        code: {"description": text, "content": {PROBLEM_JSON: {}}}
        for code, text in (
            (401, "No or unknown API key"),
            (403, "The API key lacks the role"),
            (413, "Email larger than the limit"),
            (415, "Neither message/rfc822 nor application/json"),
            (422, "Invalid request, or the email was refused by inference (reason)"),
            (429, "Rate limit of the API key (Retry-After)"),
        )
    }

    @api.post(
        "/v1/classify",
        summary="Classify an email and wait for the verdict",
        response_model=EmailClassified,
        openapi_extra=email_body,
        responses={
            **problems,
            503: {"description": "Kafka unreachable, or no model serves yet"},
            504: {"description": "No verdict in time: GET /v1/verdicts/{message_key} later"},
        },
    )
    async def classify(
        request: Request,
        _key: Annotated[ApiKey, Depends(role(ROLE_CLASSIFY))],
        x_environment: Annotated[str | None, env_header] = None,
    ) -> Response:
        """Publish the email to emails.inbox and answer with the verdict inference publishes."""
        environment = _environment(x_environment)
        raw = await read_email(request, max_email_bytes)
        try:
            outcome = await handlers.classify(
                raw, environment, deps, correlation_id=request.state.correlation_id
            )
        except VerdictTimeoutError as exc:
            raise ProblemError(
                504,
                "Gateway Timeout",
                f"no verdict within {deps.verdict_timeout_s:g}s; "
                f"ask later: GET /v1/verdicts/{exc.key}",
                slug="verdict-timeout",
                headers={"Location": f"/v1/verdicts/{exc.key}"},
                message_key=exc.key,
            ) from None
        except OverloadedError as exc:
            raise ProblemError(
                503,
                "Service Unavailable",
                str(exc),
                slug="overloaded",
                headers={"Retry-After": "1"},
            ) from None
        except Exception as exc:  # Kafka refused or unreachable
            logger.exception("cannot publish the email")
            raise _kafka_unavailable(exc) from None
        if isinstance(outcome, Refusal):
            raise _refused(outcome)
        return _verdict_response(outcome)

    @api.post(
        "/v1/emails",
        status_code=202,
        summary="Submit an email; ask for its verdict later",
        response_model=Accepted,
        openapi_extra=email_body,
        responses={**problems, 503: {"description": "Kafka unreachable"}},
    )
    async def submit(
        request: Request,
        _key: Annotated[ApiKey, Depends(role(ROLE_CLASSIFY))],
        x_environment: Annotated[str | None, env_header] = None,
    ) -> Response:
        """Publish the email to emails.inbox; 202 with its key once Kafka has it."""
        environment = _environment(x_environment)
        raw = await read_email(request, max_email_bytes)
        try:
            key = await handlers.submit(
                raw, environment, deps, correlation_id=request.state.correlation_id
            )
        except Exception as exc:
            logger.exception("cannot publish the email")
            raise _kafka_unavailable(exc) from None
        return JSONResponse(
            Accepted(message_key=key).model_dump(),
            status_code=202,
            headers={"Location": f"/v1/verdicts/{key}"},
        )

    @api.get(
        "/v1/verdicts/{key}",
        summary="The verdict of a submitted email",
        response_model=EmailClassified,
        responses={
            **problems,
            404: {"description": "No verdict (yet, or expired)"},
            503: {"description": "Redis unreachable"},
        },
    )
    async def get_verdict(
        key: str, _key: Annotated[ApiKey, Depends(role(ROLE_CLASSIFY))]
    ) -> Response:
        """The stored verdict: 200, 404 while there is none, 422 if inference refused it."""
        try:
            outcome = await handlers.verdict(key, deps)
        except StoreUnavailableError:
            raise _store_unavailable() from None
        if outcome is None:
            raise ProblemError(
                404,
                "Not Found",
                f"no verdict for {key} (not classified yet, unknown, or expired)",
                slug="no-verdict",
                message_key=key,
            )
        if isinstance(outcome, Refusal):
            raise _refused(outcome)
        return _verdict_response(outcome)

    @api.get(
        "/v1/verdicts/{key}/explanation",
        summary="Why a verdict: the deciding model's largest input contributions",
        responses={
            **problems,
            404: {"description": "No verdict, or its mail or model version is gone"},
            501: {"description": "This gateway explains nothing (no explainer configured)"},
            503: {"description": "Redis, MLflow or Kafka unreachable"},
        },
    )
    async def explain_verdict(
        key: str,
        _key: Annotated[ApiKey, Depends(role(ROLE_CLASSIFY))],
        top: int = 10,
    ) -> Response:
        """XGBoost's contributions (log-odds) of the version that decided, on that mail."""
        if deps.explainer is None:
            raise ProblemError(
                501, "Not Implemented", "explanations are off here", slug="no-explainer"
            )
        if not 1 <= top <= 100:
            raise ProblemError(422, "Unprocessable Content", "top: 1 to 100", slug="invalid")
        try:
            outcome = await handlers.verdict(key, deps)
        except StoreUnavailableError:
            raise _store_unavailable() from None
        if not isinstance(outcome, EmailClassified):
            raise ProblemError(
                404, "Not Found", f"no verdict for {key} to explain", slug="no-verdict",
                message_key=key,
            )  # fmt: skip
        try:
            explanation = await deps.explainer.explain(outcome, top=top)
        except ExplainerUnavailableError as exc:
            raise ProblemError(
                503, "Service Unavailable", str(exc)[:300], slug="explainer-unavailable",
                headers={"Retry-After": "5"},
            ) from None  # fmt: skip
        except LookupError as exc:
            raise ProblemError(
                404, "Not Found", str(exc)[:300], slug="not-explainable", message_key=key
            ) from None
        return JSONResponse(explanation)

    @api.post(
        "/v1/feedback",
        status_code=202,
        summary="Label an email (spam or ham)",
        response_model=LabelAccepted,
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {JSON: {"schema": FeedbackRequest.model_json_schema()}},
            }
        },
        responses={**problems, 503: {"description": "Kafka unreachable"}},
    )
    async def feedback(
        request: Request, key: Annotated[ApiKey, Depends(role(ROLE_LABEL))]
    ) -> Response:
        """Publish an EmailLabeled on emails.feedback."""
        if _media_type(request) != JSON:
            raise ProblemError(
                415, "Unsupported Media Type", f"send {JSON}", slug="unsupported-media-type"
            )
        body = await _read_body(request, 64 * 1024)
        try:
            given = FeedbackRequest.model_validate_json(body)
        except ValidationError as exc:
            raise ProblemError(
                422,
                "Unprocessable Content",
                "the body must be {message_key, label: spam|ham, labelled_by?}",
                slug="invalid-body",
                errors=exc.errors(include_url=False, include_context=False, include_input=False),
            ) from None
        try:
            event = await handlers.label(
                given.message_key,
                given.label,
                deps,
                labelled_by=given.labelled_by or key.name,
                correlation_id=request.state.correlation_id,
            )
        except Exception as exc:
            logger.exception("cannot publish the label")
            raise _kafka_unavailable(exc) from None
        return JSONResponse(
            LabelAccepted(message_key=event.message_key, event_id=str(event.event_id)).model_dump(),
            status_code=202,
        )

    @api.get("/healthz", summary="The process is alive", include_in_schema=True)
    async def healthz() -> dict[str, str]:
        """Alive (says nothing about Kafka or Redis: that is /readyz)."""
        return {"status": "ok"}

    @api.get("/readyz", summary="Kafka producer and consumers, and Redis, are ready")
    async def readyz() -> Response:
        """200 when the producer is connected, the consumers have partitions and Redis answers."""
        checks = await readiness()
        ready = all(checks.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": checks},
            status_code=200 if ready else 503,
        )

    @api.get("/metrics", summary="Prometheus metrics", include_in_schema=False)
    async def metrics() -> Response:
        """The process's Prometheus metrics (also on the service's metrics port)."""
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return api


def _store_unavailable() -> ProblemError:
    return ProblemError(
        503,
        "Service Unavailable",
        "the verdict store is unreachable",
        slug="store-unavailable",
        headers={"Retry-After": "5"},
    )


def _kafka_unavailable(exc: BaseException) -> ProblemError:
    return ProblemError(
        503,
        "Service Unavailable",
        f"the email could not be handed to Kafka: {type(exc).__name__}",
        slug="kafka-unavailable",
        headers={"Retry-After": "5"},
    )


def _reason(status: int) -> str:
    from http import HTTPStatus

    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
