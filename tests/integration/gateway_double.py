"""TEST DOUBLE of the gateway's classify path — a stand-in, not the real gateway.

The real gateway (``services/gateway``, FastAPI) publishes the mail to
``emails.inbox`` and answers with the verdict the inference service publishes.
This double only mimics its HTTP contract, so the milter can be tested against
Postfix without Kafka, Triton or a model:

- ``POST /v1/classify`` with ``Content-Type: message/rfc822``, ``X-Environment``
  and ``Authorization: Bearer <key>`` (checked when the double has a key);
- 200 with the EmailClassified fields the milter reads; the verdict is chosen
  by a marker in the mail, not by a model (``MARKERS``); no marker: ham;
- 504 problem (no verdict in time), 500 problem, or a slow answer, on demand;
- every request is recorded (``requests``) so a test can compare what the milter
  sent with what was submitted over SMTP.

It is a real HTTP server (stdlib ``ThreadingHTTPServer``) on 127.0.0.1 in a thread.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_NAME = "spam-detector"
MODEL_VERSION = 7
THRESHOLD = 0.5

# Marker in the mail -> what the double answers.
SPAM = "SPAMOPS-DOUBLE-SPAM"  # 200, spam, probability 0.99
BORDERLINE = "SPAMOPS-DOUBLE-BORDERLINE"  # 200, spam, probability 0.6 (below a reject threshold)
HAM = "SPAMOPS-DOUBLE-HAM"  # 200, ham, probability 0.02
NO_VERDICT = "SPAMOPS-DOUBLE-504"  # 504 problem: no verdict in time
BROKEN = "SPAMOPS-DOUBLE-500"  # 500 problem
SLOW = "SPAMOPS-DOUBLE-SLOW"  # answers after `slow_s` (past the milter's timeout)


@dataclass
class RecordedRequest:
    """One classify request as the double received it."""

    headers: dict[str, str]
    body: bytes


@dataclass
class GatewayDouble:
    """The stand-in server; ``start()`` / ``stop()``, ``url``, ``requests``."""

    api_key: str | None = None
    slow_s: float = 3.0
    requests: list[RecordedRequest] = field(default_factory=list)
    _server: ThreadingHTTPServer | None = field(default=None, init=False)
    _thread: threading.Thread | None = field(default=None, init=False)

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> GatewayDouble:
        double = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # Headers and body are two writes: without this the body waits for the
            # client's delayed ACK (40 ms), which would be measured as the milter's.
            disable_nagle_algorithm = True

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                double.requests.append(RecordedRequest(dict(self.headers.items()), body))
                status, payload = double.answer(self.path, dict(self.headers.items()), body)
                data = json.dumps(payload).encode()
                self.send_response(status)
                kind = "application/json" if status == 200 else "application/problem+json"
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def requests_with(self, marker: str) -> list[RecordedRequest]:
        return [r for r in self.requests if marker.encode() in r.body]

    # ------------------------------------------------------------------ the contract
    def answer(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, Any]]:
        lower = {k.lower(): v for k, v in headers.items()}
        if path != "/v1/classify":
            return 404, _problem(404, "Not Found", f"no route {path}")
        if self.api_key is not None and lower.get("authorization") != f"Bearer {self.api_key}":
            return 401, _problem(401, "Unauthorized", "missing or wrong API key")
        if lower.get("content-type", "").split(";")[0].strip() != "message/rfc822":
            return 415, _problem(415, "Unsupported Media Type", "send message/rfc822")
        key = _message_id(body) or f"sha256:{len(body)}"
        environment = lower.get("x-environment", "production")
        if NO_VERDICT.encode() in body:
            problem = _problem(504, "Gateway Timeout", "no verdict in time")
            return 504, {**problem, "message_key": key}
        if BROKEN.encode() in body:
            return 500, _problem(500, "Internal Server Error", "the double was told to fail")
        if SLOW.encode() in body:
            time.sleep(self.slow_s)
        if SPAM.encode() in body:
            verdict, probability = "spam", 0.99
        elif BORDERLINE.encode() in body:
            verdict, probability = "spam", 0.6
        else:
            verdict, probability = "ham", 0.02
        return 200, {
            "event_type": "EmailClassified",
            "message_key": key,
            "verdict": verdict,
            "spam_probability": probability,
            "threshold": THRESHOLD,
            "model_name": MODEL_NAME,
            "model_version": MODEL_VERSION,
            "environment": environment,
            "latency_ms": 1.0,
            "note": "canned answer of the gateway test double",
        }


def _problem(status: int, title: str, detail: str) -> dict[str, Any]:
    return {"type": "about:blank", "title": title, "status": status, "detail": detail}


def _message_id(body: bytes) -> str | None:
    head = body.split(b"\r\n\r\n", 1)[0]
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"message-id:"):
            return line.split(b":", 1)[1].strip().decode("ascii", "replace")
    return None
