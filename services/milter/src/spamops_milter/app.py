"""Wiring: libmilter (pymilter) callbacks -> ``handlers.judge`` -> milter actions.

libmilter runs every SMTP connection of the MTA in a thread of its own and calls
one ``SpamopsMilter`` per connection: ``envfrom`` starts a mail, ``header`` and
``body`` collect it, ``eom`` asks the gateway and answers. Everything the mail
needs is decided by ``handlers.decide``; this module only speaks the protocol:

- the protocol option HDR_LEADSPC is negotiated, so header values arrive with
  their leading space and folding exactly as in the mail (a faithful copy for
  the gateway), and added headers are written with the space after the colon;
- X-Spam-* headers that arrived with the mail are deleted before ours are added;
- ``eom`` never lets an exception through: a callback that raised would make
  libmilter answer TEMPFAIL, and the mail would wait in the sender's queue.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
from collections.abc import Callable
from typing import Any, ClassVar, TypeVar, cast

import Milter
import milter
from spamops_runtime.logs import configure_logging, log_context
from spamops_runtime.metrics import SERVICE_READY, start_metrics_server
from spamops_runtime.settings import unknown_variables

from spamops_milter.adapters import HttpGateway
from spamops_milter.handlers import (
    OWN_HEADERS,
    Action,
    CollectedMessage,
    Decision,
    MilterDeps,
    judge,
)
from spamops_milter.metrics import MESSAGES, MILTER_ERRORS, UNCHECKED_TOTAL
from spamops_milter.settings import MilterSettings

logger = logging.getLogger(__name__)

SERVICE = "milter"
MILTER_NAME = "spamops"
# What the milter may do to a mail: add headers, delete forged X-Spam-* ones, quarantine.
FLAGS = Milter.ADDHDRS | Milter.CHGHDRS | Milter.QUARANTINE
# pymilter is untyped: its reply codes and decorators, typed once here.
CONTINUE: int = Milter.CONTINUE
ACCEPT: int = Milter.ACCEPT
REJECT: int = Milter.REJECT
_Callback = TypeVar("_Callback", bound=Callable[..., int])


def _noreply(func: _Callback) -> _Callback:
    """``Milter.noreply``: the MTA does not wait for this callback's answer."""
    return cast(_Callback, Milter.noreply(func))


def _raw_bytes(func: _Callback) -> _Callback:
    """``Milter.decode("bytes")``: header values as the MTA sent them, undecoded."""
    return cast(_Callback, Milter.decode("bytes")(func))


class SpamopsMilter(Milter.Base):  # type: ignore[misc]  # pymilter is untyped
    """One SMTP connection of the MTA (several mails may follow one another)."""

    deps: ClassVar[MilterDeps]
    max_message_bytes: ClassVar[int] = 10 * 2**20

    def __init__(self) -> None:
        self._message: CollectedMessage | None = None

    def _leading_space(self) -> bool:
        return bool(self._protocol & Milter.P_HDR_LEADSPC)

    @_noreply
    def envfrom(self, mailfrom: str, *params: str) -> int:
        """A new mail on this connection."""
        self._message = CollectedMessage(
            max_bytes=self.max_message_bytes, leading_space=self._leading_space()
        )
        return CONTINUE

    @_noreply
    @_raw_bytes
    def header(self, name: str | bytes, value: bytes) -> int:
        """One header field, its value as raw bytes."""
        if self._message is not None:
            self._message.add_header(name, value)
        return CONTINUE

    @_noreply
    def body(self, chunk: bytes) -> int:
        """A chunk of the body."""
        if self._message is not None:
            self._message.add_body(chunk)
        return CONTINUE

    def eom(self) -> int:
        """End of the mail: ask, decide, act. Accepts the mail if anything fails."""
        message, self._message = self._message, None
        with log_context(queue_id=self._symbol("i")):
            try:
                if message is None:  # no MAIL FROM seen (cannot happen with Postfix)
                    message = CollectedMessage(max_bytes=self.max_message_bytes)
                decision = judge(message, self.deps)
                self._remove_forged(message)
                return self._apply(decision)
            except Exception:
                MILTER_ERRORS.labels("eom").inc()
                logger.exception("milter failed at the end of a mail: accepting it unchecked")
                return self._accept_unchecked()

    def abort(self) -> int:
        """The mail was abandoned (RSET, QUIT mid-transaction, a lost client)."""
        self._message = None
        return CONTINUE

    def close(self) -> int:
        """The SMTP connection ended."""
        self._message = None
        return CONTINUE

    # ------------------------------------------------------------ actions
    def _symbol(self, name: str) -> str | None:
        try:
            value = self.getsymval(name)
        except Exception:  # no context (tests), or the MTA did not send it
            return None
        return str(value) if value else None

    def _add_header(self, name: str, value: str) -> None:
        # With HDR_LEADSPC the MTA writes "Name:" + value: the space is ours to give.
        self.addheader(name, (" " + value) if self._leading_space() else value)

    def _remove_forged(self, message: CollectedMessage) -> None:
        """Delete X-Spam-* headers that came with the mail (last index first)."""
        for name, count in message.own_header_counts().items():
            for index in range(count, 0, -1):
                self.chgheader(name, index, None)

    def _apply(self, decision: Decision) -> int:
        if decision.action is Action.REJECT:
            reply = decision.reply
            assert reply is not None
            self.setreply(reply.code, reply.xcode, reply.text)
            return REJECT
        for name, value in decision.headers:
            self._add_header(name, value)
        if decision.action is Action.QUARANTINE:
            self.quarantine(decision.quarantine_reason or "spamops: spam")
        return ACCEPT

    def _accept_unchecked(self) -> int:
        MESSAGES.labels("unchecked", "accept").inc()
        UNCHECKED_TOTAL.labels("error").inc()
        try:
            self._add_header(OWN_HEADERS[0], "unchecked")
        except Exception:
            logger.exception("could not even tag the mail")
        return ACCEPT


# Negotiate HDR_LEADSPC: header values arrive (and leave) with their leading space.
Milter.header_leading_space(SpamopsMilter)


def build(settings: MilterSettings) -> HttpGateway:
    """Configure ``SpamopsMilter`` from the settings; returns the gateway client it uses."""
    gateway = HttpGateway(
        settings.gateway_base_url,
        timeout_s=settings.gateway_timeout_s,
        api_key=settings.read_api_key,
    )
    SpamopsMilter.deps = MilterDeps(
        gateway=gateway,
        policy=settings.policy,
        reject_threshold=settings.reject_threshold,
        environment=settings.environment,
        reject_reply=settings.reject_reply,
    )
    SpamopsMilter.max_message_bytes = settings.max_message_bytes
    return gateway


def _register(settings: MilterSettings) -> None:
    """``Milter.runmilter`` up to the socket, so readiness is reported once it listens."""
    Milter.factory = SpamopsMilter
    milter.set_flags(FLAGS)
    milter.set_connect_callback(Milter.connect_callback)
    milter.set_helo_callback(lambda ctx, host: ctx.getpriv().hello(host))
    milter.set_envfrom_callback(lambda ctx, *b: ctx.getpriv().envfrom_bytes(*b))
    milter.set_envrcpt_callback(lambda ctx, *b: ctx.getpriv().envrcpt_bytes(*b))
    milter.set_header_callback(lambda ctx, f, v: ctx.getpriv().header_bytes(f, v))
    milter.set_eoh_callback(lambda ctx: ctx.getpriv().eoh())
    milter.set_body_callback(lambda ctx, chunk: ctx.getpriv().body(chunk))
    milter.set_eom_callback(lambda ctx: ctx.getpriv().eom())
    milter.set_abort_callback(lambda ctx: ctx.getpriv().abort())
    milter.set_close_callback(Milter.close_callback)
    milter.setconn(settings.socket_spec)
    milter.settimeout(settings.mta_timeout_s)
    milter.register(
        MILTER_NAME,
        data=lambda ctx: ctx.getpriv().data(),
        unknown=lambda ctx, cmd: ctx.getpriv().unknown(cmd),
        negotiate=Milter.negotiate_callback,
    )
    milter.opensocket(True)
    _no_delay(settings.platform.milter_port)


def _no_delay(port: int) -> None:
    """TCP_NODELAY on libmilter's listening socket (Linux: accepted sockets inherit it).

    libmilter leaves Nagle's algorithm on, so each small reply or action written after
    another one still unacknowledged waits for the MTA's delayed ACK (40 ms on Linux):
    the three addheader actions and the final reply of ``eom`` cost ~45 ms a mail
    here (benchmarks/milter_latency.py). libmilter does not expose its socket: it is
    found among this process's descriptors (a listening TCP socket on ``port``).
    """
    for name in os.listdir("/proc/self/fd"):
        try:
            probe = socket.socket(fileno=os.dup(int(name)))
        except OSError:  # not a socket
            continue
        with probe:
            try:
                ours = (
                    probe.type == socket.SOCK_STREAM
                    and probe.family in (socket.AF_INET, socket.AF_INET6)
                    and probe.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
                    and probe.getsockname()[1] == port
                )
                if ours:
                    probe.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                    return
            except OSError:
                continue
    logger.warning("no listening socket on port %d found: Nagle stays on", port)


def main(settings: MilterSettings | None = None) -> int:
    """Serve the MTA until SIGTERM/SIGINT (libmilter's own signal handling)."""
    # libmilter stops cleanly on SIGTERM/SIGINT/SIGHUP by sigwait()ing for them in a
    # thread of its own, and blocks them only in threads it starts itself. Block them
    # before any thread exists (the /metrics server, httpx), or the kernel may hand a
    # SIGTERM to one of those and its default action kills the process mid-mail.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT, signal.SIGHUP})
    settings = settings or MilterSettings()
    configure_logging(SERVICE, level=settings.platform.log_level, fmt=settings.platform.log_format)
    SERVICE_READY.labels(SERVICE).set(0)
    start_metrics_server(settings.metrics_listen_port, settings.platform.host)
    for name in unknown_variables(settings, os.environ):
        logger.warning(
            f"unknown setting {name} is ignored (see docs/settings.md)", extra={"variable": name}
        )
    gateway = build(settings)
    details: dict[str, Any] = {
        "socket": settings.socket_spec,
        "gateway": settings.gateway_base_url,
        "policy": settings.policy,
        "reject_threshold": settings.reject_threshold,
        "environment": settings.environment,
        "metrics_port": settings.metrics_listen_port,
        "api_key": "present" if settings.read_api_key() else "absent",
    }
    logger.info("service starting", extra=details)
    try:
        _register(settings)
    except milter.error as exc:
        logger.error("cannot listen on %s: %s", settings.socket_spec, exc)
        return 1
    SERVICE_READY.labels(SERVICE).set(1)
    logger.info("service ready")
    try:
        milter.main()
    finally:
        SERVICE_READY.labels(SERVICE).set(0)
        gateway.close()
        logger.info("service stopped")
    return 0
