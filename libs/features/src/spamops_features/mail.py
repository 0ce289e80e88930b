"""One RFC 822 parser for ingestion, training and the streaming inference service.

``parse_email`` turns raw message bytes into a small, immutable ``ParsedEmail``
with the values the features need. It is on the hot path of inference, so it
uses the fast ``compat32`` parser (``email.message_from_bytes`` plus
``get_payload(decode=True)``), about 8x faster than ``policy.default``, and does
its own careful decoding on top:

* headers are unfolded, 8-bit bytes in headers are read as UTF-8 (else
  Latin-1), and RFC 2047 encoded words are decoded with the same charset
  fallback as bodies (``email.header.decode_header``/``make_header`` raise on
  unknown charsets and mangle non-ASCII text next to encoded words, so the
  encoded words are decoded here);
* body text is decoded with the declared charset, then UTF-8, then the declared
  charset with replacement characters, then Windows-1252, then Latin-1 (which
  never fails); see ``_decode``;
* the MIME tree is walked iteratively with limits on parts, depth and decoded
  text; going past a limit stops the walk and records a defect.

Hostile input (message bombs) costs bounded time and memory. The limits are
arguments (the inference service takes them from its settings):

* ``max_bytes``: larger input is refused (``"too-large"``) before any work;
* ``max_header_bytes`` / ``max_headers``: the top-level header block is
  measured on the raw bytes before parsing; a larger one is refused
  (``"headers-too-large"``, ``"too-many-headers"``);
* ``max_lines``: the stdlib parser keeps one ``str`` per line (~60 bytes each,
  so 10 MB of empty lines would cost ~600 MB): only the first ``max_lines``
  lines are parsed, the rest is dropped (defect ``"too-many-lines"``);
* ``max_parts`` / ``max_depth``: enforced while the stdlib parser builds the
  tree (it would otherwise allocate a ``Message`` per part, ~300 bytes of
  input each, and recurse once per level); parsing stops there and what was
  built is used (defects ``"too-many-parts"`` / ``"too-deep"``);
* ``max_text_chars``: decoded text kept per ``text`` and ``html``.

The input is fed to the parser in 64 KB chunks (no full-size decoded copy), and
the stdlib's per-line scan of every open MIME boundary, quadratic in the
nesting depth, is replaced by a set lookup (``_LineBuffer``). Attachments are
never decoded, let alone decompressed: only ``text/plain`` and ``text/html``
leaves are (base64 / quoted-printable), so a gzip or zip bomb in an attachment
is counted, not expanded; byte-to-byte codecs (``zlib``, ``bz2``, ``base64``...)
declared as a charset are unknown charsets, never run.

``parse_email`` never raises on a malformed message: what was broken is listed
in ``ParsedEmail.defects`` (a fixed vocabulary, safe as a metrics label). It
raises ``MailParseError`` only for input a caller must dead-letter because it is
not an email at all:

* ``"empty"``: no bytes, or only whitespace;
* ``"too-large"``: more than ``max_bytes`` bytes;
* ``"headers-too-large"``: the top-level header block is over
  ``max_header_bytes`` bytes; ``"too-many-headers"``: over ``max_headers``
  header fields (a message bomb, not mail);
* ``"not-email"``: binary garbage. The rule: the first line (after an optional
  mbox ``From `` line) is not an RFC 5322 header line (``Name:`` where the name
  is 1-76 printable ASCII characters other than ``:``), AND in the first 4 KB at
  least 5% of the bytes are control bytes (C0 controls other than tab, LF, VT,
  FF, CR and ESC, plus DEL; ESC stays text because ISO-2022-JP uses it). Text
  in any real charset has almost no such bytes; random or binary data (images,
  archives, executables) has about 10% or more. Text without headers is not
  garbage: it parses, with the defect ``"no-headers"``.
"""

from __future__ import annotations

import binascii
import codecs
import email
import email.feedparser
import email.message
import email.parser
import email.utils
import functools
import hashlib
import itertools
import re
from collections import Counter
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta, timezone
from email.feedparser import BytesFeedParser
from email.message import Message
from typing import Any, Final, Literal

__all__ = [
    "DEFAULT_MAX_DEPTH",
    "DEFAULT_MAX_HEADERS",
    "DEFAULT_MAX_HEADER_BYTES",
    "DEFAULT_MAX_LINES",
    "DEFAULT_MAX_PARTS",
    "DEFAULT_MAX_TEXT_CHARS",
    "PARSE_ERROR_REASONS",
    "MailHeaders",
    "MailParseError",
    "ParseErrorReason",
    "ParsedEmail",
    "message_key",
    "parse_email",
]

DEFAULT_MAX_PARTS: Final = 1000
DEFAULT_MAX_DEPTH: Final = 50
DEFAULT_MAX_TEXT_CHARS: Final = 1_000_000
DEFAULT_MAX_HEADER_BYTES: Final = 256 * 1024
DEFAULT_MAX_HEADERS: Final = 1000
DEFAULT_MAX_LINES: Final = 500_000

ParseErrorReason = Literal[
    "empty", "too-large", "not-email", "headers-too-large", "too-many-headers"
]
PARSE_ERROR_REASONS: Final[frozenset[str]] = frozenset(
    {"empty", "too-large", "not-email", "headers-too-large", "too-many-headers"}
)

# The defect vocabulary (besides "mime:<email package defect class>").
UNKNOWN_CHARSET: Final = "unknown-charset"
CHARSET_MISMATCH: Final = "charset-mismatch"
HEADER_8BIT: Final = "header-8bit"
BAD_ENCODED_WORD: Final = "bad-encoded-word"
BAD_DATE: Final = "bad-date"
BAD_MESSAGE_ID: Final = "bad-message-id"
NO_HEADERS: Final = "no-headers"
TOO_MANY_PARTS: Final = "too-many-parts"
TOO_DEEP: Final = "too-deep"
TEXT_TRUNCATED: Final = "text-truncated"
TOO_MANY_LINES: Final = "too-many-lines"
PAYLOAD_ERROR: Final = "payload-error"
PARSER_ERROR: Final = "parser-error"

_SNIFF_BYTES: Final = 4096
_BINARY_SHARE: Final = 0.05
# Bytes that never appear in text: C0 controls except \t \n \v \f \r and ESC, plus DEL.
_CONTROL_BYTES: Final = bytes(b for b in range(32) if b not in (9, 10, 11, 12, 13, 27)) + b"\x7f"
_HEADER_LINE = re.compile(rb"[!-9;-~]{1,76}:")
_MBOX_FROM = b"From "

# RFC 2047 encoded words, with an optional RFC 2231 language suffix on the charset.
# Spaces inside are tolerated (mailers write them); "?" is not, which also keeps
# the scan linear on hostile headers full of "=?".
_ENCODED_WORD = re.compile(r"=\?([^?*\s]+)(?:\*[^?]*)?\?([QqBb])\?([^?]*)\?=")
_ATOM = r"[^\s\"<>()\[\],;:\\@.]+"
_ADDR_SPEC = rf"{_ATOM}(?:\.{_ATOM})*@{_ATOM}(?:\.{_ATOM})*"
_SIMPLE_ADDRESS = re.compile(
    # "Name" <a@b> | Name <a@b> | <a@b>
    rf"""\s*(?:(?:"([^"\\]*)"|((?:{_ATOM}[ \t]+)*{_ATOM})?)[ \t]*<({_ADDR_SPEC})>"""
    # a@b | a@b (Name)
    rf"""|({_ADDR_SPEC})(?:[ \t]*\(([^()\\"]*)\))?)\s*"""
)
_FOLD = re.compile(r"\r?\n(?=[ \t])")
_SPACES = re.compile(r"\s+")
# Lone surrogates cannot be encoded as UTF-8 (JSON, parquet): never let one out.
_SURROGATES = re.compile("[\ud800-\udfff]")

# Longer address headers are counted by plain "@" (no quote stripping): the regex is
# quadratic on pathological quoting, and exactness is moot for huge recipient lists.
_MAX_ADDRESS_HEADER: Final = 4096
_QUOTED_OR_COMMENT = re.compile(r'"(?:[^"\\]|\\.)*"|\((?:[^()\\]|\\.)*\)')
_MAX_MESSAGE_ID: Final = 512
_MIN_YEAR: Final = 1970
_MAX_YEAR: Final = 2100

# Supersets the declared charset is really meant as (what browsers do, WHATWG).
_CHARSET_SUPERSETS: Final = {
    "ascii": "utf-8",  # 8-bit text labelled us-ascii is common; UTF-8 is a superset
    "latin-1": "cp1252",
    "iso8859-1": "cp1252",
    "gb2312": "gb18030",
    "gbk": "gb18030",
    "euc_kr": "cp949",
    "shift_jis": "cp932",
}
# Python codecs that are not mail charsets: treated like unknown charsets.
_NOT_CHARSETS: Final = frozenset(
    {"unicode-escape", "raw-unicode-escape", "idna", "punycode", "undefined", "mbcs", "oem"}
)
_codec_cache: dict[str, str | None] = {}
_CODEC_CACHE_MAX: Final = 1024


class MailParseError(ValueError):
    """The input is not an email at all (or a message bomb); the caller should dead-letter it.

    ``reason`` is one of ``PARSE_ERROR_REASONS``: ``"empty"``, ``"too-large"``,
    ``"not-email"``, ``"headers-too-large"``, ``"too-many-headers"``.
    """

    def __init__(self, reason: ParseErrorReason, detail: str = "") -> None:
        self.reason: ParseErrorReason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


@dataclass(frozen=True, slots=True)
class MailHeaders(Mapping[str, "str | int | None"]):
    """The header values features need; also readable as a mapping (``h["x_mailer"]``)."""

    header_count: int = 0
    received_count: int = 0
    cc_count: int = 0
    x_mailer: str | None = None
    user_agent: str | None = None
    reply_to: str | None = None
    reply_to_domain: str = ""
    return_path: str | None = None
    content_type: str = "text/plain"
    mime_version: str | None = None
    list_id: str | None = None
    in_reply_to: str | None = None
    x_priority: str | None = None

    def __getitem__(self, key: str) -> str | int | None:
        if key not in _HEADER_FIELDS:
            raise KeyError(key)
        value: str | int | None = getattr(self, key)
        return value

    def __iter__(self) -> Iterator[str]:
        return iter(_HEADER_FIELDS)

    def __len__(self) -> int:
        return len(_HEADER_FIELDS)


_HEADER_FIELDS: Final = tuple(f.name for f in fields(MailHeaders))


@dataclass(frozen=True, slots=True)
class ParsedEmail:
    """What the platform reads from one message.

    - ``message_id``: the Message-ID without ``<>``; None when missing or unusable
      as a key (whitespace, control characters, over 512 characters).
    - ``subject``: decoded, whitespace collapsed. ``sender``: the From address as
      written; ``sender_domain``: its domain in lower case ("" if none);
      ``sender_display_name``: the decoded From name.
    - ``to_count``: addresses in To (Cc is ``headers.cc_count``).
    - ``date``: the Date header as an aware UTC datetime; None when missing,
      unparseable or outside 1970-2099.
    - ``text`` / ``html``: every non-attachment text/plain / text/html part,
      decoded and joined with newlines (each at most ``max_text_chars``).
    - ``attachment_count``: non-text leaves plus text leaves marked or named as
      attachments. ``part_count``: MIME parts walked, the root included.
      ``max_depth``: deepest nesting reached (a single-part message is 0).
    - ``size_bytes``: length of the raw input. ``defects``: what was broken, in
      order of discovery, without repeats. ``charsets``: declared charsets of
      the decoded text parts.
    """

    message_id: str | None
    subject: str
    sender: str
    sender_domain: str
    sender_display_name: str
    to_count: int
    date: datetime | None
    headers: MailHeaders
    text: str
    html: str
    attachment_count: int
    part_count: int
    max_depth: int
    size_bytes: int
    defects: tuple[str, ...] = ()
    charsets: tuple[str, ...] = ()


# ------------------------------------------------------------------- decoding
def _codec(charset: str) -> str | None:
    """The Python codec for a declared charset, or None when it is unknown."""
    name = charset.strip().strip("\"'").lower()
    cached = _codec_cache.get(name, "")
    if cached != "":
        return cached
    codec: str | None
    try:
        if not name or len(name) > 64 or not name.isascii():
            raise LookupError(name)
        info = codecs.lookup(name)
        # Byte-to-byte codecs (zlib, bz2, base64, uu, hex...) are not charsets:
        # "charset=zlib" must never decompress anything.
        codec = info.name if getattr(info, "_is_text_encoding", True) else None
    except (LookupError, ValueError, TypeError):
        codec = None
    if codec is not None:
        codec = None if codec in _NOT_CHARSETS else _CHARSET_SUPERSETS.get(codec, codec)
    if len(_codec_cache) < _CODEC_CACHE_MAX:  # bounded: charset names come from input
        _codec_cache[name] = codec
    return codec


def _decode(data: bytes, charset: str | None, defects: list[str]) -> str:
    """Decode body or header bytes; never raises.

    Order: the declared charset; UTF-8; the declared charset with U+FFFD for the
    bad bytes (a multi-byte text with a few broken characters stays readable);
    Windows-1252, then Latin-1 (which cannot fail). When the declaration is
    UTF-8 or ASCII and the bytes are not UTF-8, the label is wrong and the bytes
    are most likely a legacy single-byte charset, so the replacement step is
    skipped for them.
    """
    codec = _codec(charset) if charset else None
    if charset and codec is None:
        defects.append(UNKNOWN_CHARSET)
    if codec is not None:
        try:
            text = data.decode(codec)
            if codec == "utf-7":  # the one charset that can yield lone surrogates
                text = _SURROGATES.sub("\ufffd", text)
            return text
        except UnicodeError:
            defects.append(CHARSET_MISMATCH)
        except Exception:  # a codec may fail in other ways on hostile input
            defects.append(UNKNOWN_CHARSET)
            codec = None
    if codec != "utf-8":
        try:
            return data.decode("utf-8")
        except UnicodeError:
            pass
    if codec is not None and codec != "utf-8":
        try:
            return _SURROGATES.sub("\ufffd", data.decode(codec, errors="replace"))
        except Exception:  # noqa: S110 - the fallbacks below always work
            pass
    try:
        return data.decode("cp1252")
    except UnicodeError:
        return data.decode("latin-1")


def _unescape_header(value: str, defects: list[str]) -> str:
    """compat32 keeps 8-bit header bytes as surrogates: read them as UTF-8, else Latin-1."""
    if value.isascii():
        return value
    try:
        data = value.encode("ascii", "surrogateescape")
    except UnicodeEncodeError:
        return value  # already real text (a caller-built message), nothing to undo
    defects.append(HEADER_8BIT)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _decode_words(value: str, defects: list[str]) -> str:
    """Decode RFC 2047 encoded words; adjacent words of one charset are joined first.

    Joining before decoding matters: mailers split multi-byte characters across
    encoded words, and whitespace between encoded words is not part of the text.
    """
    if "=?" not in value:
        return value
    out: list[str] = []
    pending = bytearray()  # not bytes: += on bytes would be quadratic in hostile headers
    pending_charset: str | None = None
    previous_was_word = False
    position = 0

    def flush() -> None:
        nonlocal pending, pending_charset
        if pending_charset is not None:
            out.append(_decode(bytes(pending), pending_charset, defects))
        pending, pending_charset = bytearray(), None

    for match in _ENCODED_WORD.finditer(value):
        between = value[position : match.start()]
        position = match.end()
        charset, kind, payload = match.group(1).lower(), match.group(2).upper(), match.group(3)
        data: bytes | None
        try:
            if kind == "B":
                data = binascii.a2b_base64(payload + "=" * (-len(payload) % 4))
            else:
                data = binascii.a2b_qp(payload.encode("ascii", "replace"), header=True)
        except (binascii.Error, ValueError):
            defects.append(BAD_ENCODED_WORD)
            data = None
        if data is None:  # keep a broken word as it was written
            flush()
            out.append(between + match.group(0))
            previous_was_word = False
            continue
        # RFC 2047 6.2: whitespace between two encoded words is not text.
        adjacent = previous_was_word and (not between or between.isspace())
        if adjacent and charset == pending_charset:
            pending += data
        else:
            flush()
            if not adjacent:
                out.append(between)
            pending, pending_charset = bytearray(data), charset
        previous_was_word = True
    flush()
    out.append(value[position:])
    return "".join(out)


def _header_text(value: str, defects: list[str]) -> str:
    """Unfold, undo 8-bit escapes and decode encoded words of one header value."""
    return _decode_words(_unescape_header(_FOLD.sub("", value), defects), defects).strip()


def _parseaddr(value: str) -> tuple[str, str]:
    """``email.utils.parseaddr`` with fast paths for the common simple forms.

    The stdlib address parser costs ~35 us a call, a sixth of the whole parse;
    ``Name <a@b>``, ``"Name" <a@b>``, ``a@b`` and ``a@b (Name)`` without special
    characters give exactly what it gives and skip it.
    """
    match = _SIMPLE_ADDRESS.fullmatch(value)
    if match is not None:
        quoted, bare, angle, plain, comment = match.groups()
        if angle is not None:
            return (quoted if quoted is not None else bare or "").strip(), angle
        return (comment or "").strip(), plain
    try:
        return email.utils.parseaddr(value)
    except Exception:
        return "", ""


def _address(value: str, defects: list[str]) -> tuple[str, str]:
    """(display name, address) of an address header, decoded."""
    raw = _unescape_header(_FOLD.sub("", value), defects)
    if "@" not in raw:  # e.g. "From: Mailer Daemon": a name, no address
        name, address = raw, ""
    else:
        name, address = _parseaddr(raw)
    return _SPACES.sub(" ", _decode_words(name, defects)).strip(), address.strip()


def _domain(address: str) -> str:
    """Lower-case domain of an address, "" when there is none."""
    _, at, domain = address.rpartition("@")
    if not at:
        return ""
    return domain.strip().strip("<>[].").lower()


def _count_addresses(values: list[str]) -> int:
    """Number of addresses in the given address headers: "@" outside quotes and comments.

    The stdlib address parser is a third of the parse time on the corpus and slow
    on huge spam recipient lists; counting is all the features need.
    """
    total = 0
    for value in values:
        if len(value) <= _MAX_ADDRESS_HEADER and ('"' in value or "(" in value):
            value = _QUOTED_OR_COMMENT.sub("", value)
        total += value.count("@")
    return total


def _parse_date(value: str | None, defects: list[str]) -> datetime | None:
    """The Date header as an aware UTC datetime; None when missing or unparseable."""
    if value is None:
        return None
    try:
        parts = email.utils.parsedate_tz(_FOLD.sub("", value).strip())
    except (TypeError, ValueError, OverflowError, IndexError):
        parts = None
    if parts is None:
        defects.append(BAD_DATE)
        return None
    year, month, day, hour, minute, second = parts[:6]
    if 100 <= year < 200:
        # Ratware with the Y2K bug writes 1900+102 as "0102": repair it, keep the defect.
        year += 1900
        defects.append(BAD_DATE)
    offset = parts[9]
    try:
        # No offset (or "-0000": local time unknown): RFC 5322 says read it as UTC.
        zone = UTC if offset is None else timezone(timedelta(seconds=offset))
        parsed = datetime(year, month, day, hour, minute, second, tzinfo=zone).astimezone(UTC)
    except (TypeError, ValueError, OverflowError):
        defects.append(BAD_DATE)
        return None
    if not _MIN_YEAR <= parsed.year < _MAX_YEAR:
        defects.append(BAD_DATE)
        return None
    return parsed


def _message_id(value: str | None, defects: list[str]) -> str | None:
    """The Message-ID without angle brackets; None if missing or unusable as a key."""
    if value is None:
        return None
    text = _unescape_header(_FOLD.sub("", value), defects).strip()
    start = text.find("<")
    if start >= 0:
        end = text.find(">", start + 1)
        text = text[start + 1 : end] if end > start else text[start + 1 :]
    text = text.strip()
    # It becomes a Kafka key and a parquet column: no whitespace, no controls, bounded.
    if not text or len(text) > _MAX_MESSAGE_ID or not text.isprintable() or " " in text:
        defects.append(BAD_MESSAGE_ID)
        return None
    return text


# ------------------------------------------------------------------- sniffing
def _looks_like_headers(raw: bytes) -> bool:
    """True when the first line (after an mbox ``From `` line) is a header line."""
    start = 0
    if raw.startswith(_MBOX_FROM):
        newline = raw.find(b"\n", 0, _SNIFF_BYTES)
        if newline < 0:
            return False
        start = newline + 1
    return _HEADER_LINE.match(raw, start, start + 80) is not None


def _looks_binary(sample: bytes) -> bool:
    """At least 5% control bytes: text in any charset has almost none."""
    controls = len(sample) - len(sample.translate(None, _CONTROL_BYTES))
    return controls >= _BINARY_SHARE * len(sample)


# ------------------------------------------------------------------- the walk
class _Body:
    """Accumulates what the MIME walk finds."""

    __slots__ = (
        "attachments",
        "charsets",
        "html",
        "html_chars",
        "max_depth",
        "parts",
        "text",
        "text_chars",
    )

    def __init__(self) -> None:
        self.text: list[str] = []
        self.html: list[str] = []
        self.text_chars = 0
        self.html_chars = 0
        self.attachments = 0
        self.parts = 0
        self.max_depth = 0
        self.charsets: list[str] = []


def _is_attachment(part: Message, maintype: str) -> bool:
    """Non-text leaves, and text leaves marked as attachments or named and not inline."""
    if maintype != "text":
        return True
    if part.get("content-disposition") is None:  # the common case, skip parsing
        return False
    try:
        disposition = part.get_content_disposition()
        if disposition == "attachment":
            return True
        return disposition != "inline" and part.get_filename() is not None
    except Exception:
        return False


def _content_charset(part: Message) -> str | None:
    """``part.get_content_charset()``, computed once per distinct Content-Type value.

    It depends on that header alone, and parsing its parameters was a tenth of
    parsing ordinary mail; the values repeat ("text/plain; charset=us-ascii").
    """
    value = part.get("content-type")
    if not isinstance(value, str):  # absent, or a Header (undecodable bytes): no caching
        return part.get_content_charset()
    return _charset_of(value)


@functools.lru_cache(maxsize=1024)
def _charset_of(content_type: str) -> str | None:
    probe = Message()
    probe["Content-Type"] = content_type
    return probe.get_content_charset()


def _walk(
    msg: Message,
    body: _Body,
    defects: list[str],
    *,
    max_parts: int,
    max_depth: int,
    max_text_chars: int,
) -> None:
    """Walk the MIME tree depth-first without recursion, within the limits."""
    stack: list[tuple[Message, int]] = [(msg, 0)]
    while stack:
        part, depth = stack.pop()
        if body.parts >= max_parts:
            defects.append(TOO_MANY_PARTS)
            return
        body.parts += 1
        body.max_depth = max(body.max_depth, depth)
        for defect in getattr(part, "defects", ()):
            defects.append("mime:" + type(defect).__name__.removesuffix("Defect"))
        if part.is_multipart():  # not get_payload(): for a leaf it may decode the whole body
            if depth >= max_depth:
                defects.append(TOO_DEEP)
                continue
            children = [child for child in part.get_payload() if isinstance(child, Message)]
            stack.extend((child, depth + 1) for child in reversed(children))
            continue
        ctype = part.get_content_type()
        maintype, _, subtype = ctype.partition("/")
        if maintype in ("multipart", "message"):
            # Declared a container but not parsed as one (no boundary, broken
            # headers): its content is most likely the visible text, so keep it.
            maintype, subtype = "text", "plain"
        if _is_attachment(part, maintype):
            body.attachments += 1
            continue
        if subtype not in ("plain", "html"):
            continue
        is_html = subtype == "html"
        used = body.html_chars if is_html else body.text_chars
        if used >= max_text_chars:
            defects.append(TEXT_TRUNCATED)
            continue
        try:
            data = part.get_payload(decode=True)
        except Exception:
            defects.append(PAYLOAD_ERROR)
            continue
        if not isinstance(data, bytes):
            continue
        try:
            charset = _content_charset(part)
        except Exception:
            charset = None
        if charset and charset not in body.charsets:
            body.charsets.append(charset)
        text = _decode(data, charset, defects)
        if used + len(text) > max_text_chars:
            text = text[: max_text_chars - used]
            defects.append(TEXT_TRUNCATED)
        if is_html:
            body.html.append(text)
            body.html_chars += len(text)
        else:
            body.text.append(text)
            body.text_chars += len(text)


# --------------------------------------------------------- the bounded parser
_FEED_CHUNK: Final = 64 * 1024
# What the stdlib feed parser takes for a header line (email.feedparser.headerRE).
_HEADER_LINE_START = re.compile(rb"From |[!-9;-~]*:|[ \t]")
_LINE_END = re.compile(rb"\r\n|\r|\n")


def _stdlib_boundary_pattern(separator: str) -> str:
    """The regex email.feedparser compiles for the delimiter lines of one multipart."""
    return (
        "(?P<sep>" + re.escape(separator) + r")(?P<end>--)?(?P<ws>[ \t]*)(?P<linesep>\r\n|\r|\n)?$"
    )


_BOUNDARY_PREFIX, _BOUNDARY_SUFFIX = _stdlib_boundary_pattern("@").split("@")
_UNESCAPE = re.compile(r"\\(.)", re.DOTALL)


def _separator_of(predicate: Any) -> str | None:
    """The delimiter ``--boundary`` a feed-parser end-of-part predicate matches, if it is one.

    The feed parser pushes ``re.compile(<_stdlib_boundary_pattern>).match``; the
    separator is read back from the pattern and checked by rebuilding it, so a
    different stdlib falls back to the slow, exact path instead of going wrong.
    """
    pattern = getattr(getattr(predicate, "__self__", None), "pattern", None)
    if not isinstance(pattern, str):
        return None
    if not (pattern.startswith(_BOUNDARY_PREFIX) and pattern.endswith(_BOUNDARY_SUFFIX)):
        return None
    escaped = pattern[len(_BOUNDARY_PREFIX) : len(pattern) - len(_BOUNDARY_SUFFIX)]
    separator = _UNESCAPE.sub(r"\1", escaped)
    if _stdlib_boundary_pattern(separator) != pattern or separator != separator.rstrip(" \t"):
        return None
    return separator


# Not in typeshed: the feed parser's line buffer and its blank-line regex.
_BufferedSubFile: Any = email.feedparser.BufferedSubFile  # type: ignore[attr-defined]
_BLANK_LINE_PREDICATE: Any = email.feedparser.NLCRE.match  # type: ignore[attr-defined]


class _LineBuffer(_BufferedSubFile):  # type: ignore[misc]
    """The feed parser's line buffer without its per-line scan of every open boundary.

    The stdlib checks each line against the end-of-part predicate of every
    enclosing multipart: depth x lines regex calls (50 levels around 10 MB of
    short lines: ~20 s). The predicates are boundary regexes (a line can match
    one only if it is ``--boundary`` plus ``--``/blanks) and, inside
    message/delivery-status, a blank-line regex; so a set lookup tells the
    lines that cannot match, and only the others take the exact stdlib path.
    """

    def __init__(self) -> None:
        super().__init__()
        self._separators: Counter[str] = Counter()
        self._blank_ends = 0  # blank-line predicates on the stack
        self._opaque = 0  # predicates of unknown shape: always the exact path

    def push_eof_matcher(self, pred: Any) -> None:
        separator = _separator_of(pred)
        if separator is not None:
            self._separators[separator] += 1
        elif pred == _BLANK_LINE_PREDICATE:
            self._blank_ends += 1
        else:
            self._opaque += 1
        super().push_eof_matcher(pred)

    def pop_eof_matcher(self) -> Any:
        pred = super().pop_eof_matcher()
        separator = _separator_of(pred)
        if separator is not None:
            self._separators[separator] -= 1
            if not self._separators[separator]:
                del self._separators[separator]
        elif pred == _BLANK_LINE_PREDICATE:
            self._blank_ends -= 1
        else:
            self._opaque -= 1
        return pred

    def _may_end_a_part(self, line: str) -> bool:
        if self._opaque:
            return True
        if self._blank_ends and line[:1] in ("\r", "\n"):
            return True
        if not self._separators or not line.startswith("--"):
            return False
        bare = line.rstrip("\r\n").rstrip(" \t")
        return bare in self._separators or (bare.endswith("--") and bare[:-2] in self._separators)

    def readline(self) -> Any:
        lines: Any = self._lines  # the stdlib's deque
        if lines and not self._may_end_a_part(lines[0]):
            return lines.popleft()
        return super().readline()


class _LimitReached(Exception):  # noqa: N818  (a control-flow signal)
    def __init__(self, defect: str) -> None:
        super().__init__(defect)
        self.defect = defect


class _BoundedParser(BytesFeedParser):
    """compat32 feed parser that stops at ``max_parts`` parts or ``max_depth`` levels.

    ``_new_message`` is where the stdlib creates every part; stopping there
    keeps the tree built so far (the root, its headers, the finished parts).
    One part and one level more than the limits are built, so the walk sees
    that a limit was passed and records the defect as before.
    """

    def __init__(self, max_parts: int, max_depth: int) -> None:
        super().__init__()
        self._input = _LineBuffer()
        self._max_parts = max_parts
        self._max_depth = max_depth
        self._built = 0
        self.root: Message | None = None

    def _new_message(self) -> None:
        if self._built > self._max_parts:
            raise _LimitReached(TOO_MANY_PARTS)
        if len(self._msgstack) > self._max_depth + 1:  # type: ignore[attr-defined]
            raise _LimitReached(TOO_DEEP)
        self._built += 1
        super()._new_message()  # type: ignore[misc]
        if self.root is None:
            self.root = self._msgstack[0]  # type: ignore[attr-defined]


# The header block of ordinary mail in one C-level match: complete header or
# continuation lines (by the feed parser's rule) from the start.
_HEADER_BLOCK = re.compile(rb"(?:(?:From |[!-9;-~]*:|[ \t])[^\r\n]*(?:\r\n|\r|\n))*")


def _check_headers(raw: bytes, max_header_bytes: int, max_headers: int) -> int | None:
    """Refuse a top-level header block over the limits, measured on the raw bytes.

    The block ends where the feed parser ends it: at the first line that is not
    a header or continuation line (normally the blank line). Reads at most
    ``max_header_bytes`` + 1 bytes, but for the field name of the line after them.
    Returns the offset of that line, or None when the input is all headers.

    Speed: one regex match finds the block of ordinary mail; when it ends at a
    line that is not a header line, within both limits (fields are at most the
    line ends), that is the answer. Anything else takes the line-by-line loop.
    """
    end = _HEADER_BLOCK.match(raw, 0, min(len(raw), max_header_bytes + 1))
    position = end.end() if end is not None else 0
    if (
        position < len(raw)
        and position <= max_header_bytes
        and _HEADER_LINE_START.match(raw, position) is None
        and raw.count(b"\n", 0, position) + raw.count(b"\r", 0, position) <= max_headers
    ):
        return position
    return _check_headers_by_line(raw, max_header_bytes, max_headers)


def _check_headers_by_line(raw: bytes, max_header_bytes: int, max_headers: int) -> int | None:
    """``_check_headers``, one line at a time (the exact rule, with its errors)."""
    position = 0
    fields = 0
    limit = min(len(raw), max_header_bytes + 1)
    while position < len(raw):
        # Unbounded, like the feed parser's: a field name may run past the limit
        # (then the line is too long below). Linear, also when there is no ":".
        if _HEADER_LINE_START.match(raw, position) is None:
            return position  # a blank line or the body: the header block ends here
        if raw[position] not in (0x20, 0x09):
            fields += 1
            if fields > max_headers:
                raise MailParseError("too-many-headers", f"more than {max_headers} header fields")
        end = _LINE_END.search(raw, position, limit)
        if end is None:
            if len(raw) <= max_header_bytes:
                return None  # the last line of an input that is all headers
            raise MailParseError("headers-too-large", f"header block over {max_header_bytes} bytes")
        position = end.end()
        if position > max_header_bytes:
            raise MailParseError("headers-too-large", f"header block over {max_header_bytes} bytes")
    return None


def _line_limit_cut(raw: bytes, max_lines: int) -> int:
    """Offset where line ``max_lines`` + 1 starts (as the feed parser splits lines), or len(raw)."""
    if raw.count(b"\n") + raw.count(b"\r") <= max_lines:  # CRLF counted twice: an upper bound
        return len(raw)
    last = next(itertools.islice(_LINE_END.finditer(raw), max_lines - 1, None), None)
    return len(raw) if last is None else last.end()


def _body_offset(raw: bytes, header_end: int | None, end: int) -> int | None:
    """Where the root's body starts, when the header block ends with a blank line ending in LF.

    ``header_end`` is where ``_check_headers`` saw the block end (the feed
    parser's rule and line splitting). A blank line there is the separator the
    feed parser consumes; anything else (no blank line, a lone CR) is left to it.
    """
    if header_end is None:
        return None
    if raw.startswith(b"\r\n", header_end):
        offset = header_end + 2
    elif raw.startswith(b"\n", header_end):
        offset = header_end + 1
    else:
        return None
    return offset if offset <= end else None


def _feed(parser: _BoundedParser, view: memoryview, start: int, end: int) -> None:
    for position in range(start, end, _FEED_CHUNK):
        parser.feed(bytes(view[position : min(position + _FEED_CHUNK, end)]))


# A field line and its continuation lines, lines split as the feed parser splits
# them (universal newlines): group 1 the name, group 2 compat32's value
# (``header_source_parse``: blanks after the colon stripped, line ends inside kept).
_FIELD = re.compile(r"([^\r\n:]*):[ \t]*([^\r\n]*(?:(?:\r\n|\r|\n)[ \t][^\r\n]*)*)(?:\r\n|\r|\n)")
_ENVELOPE = re.compile(r"From [^\r\n]*(?:\r\n|\r|\n)")
_CONTAINERS: Final = ("multipart", "message")


def _single_part_root(raw: bytes, header_end: int, body: int, end: int) -> Message | None:
    """The compat32 tree of a single-part message with an ordinary header block, or None.

    What the feed parser builds for it, without feeding it line by line: the
    fields as ``header_source_parse`` makes them and the rest of the input as
    the payload. Ordinary means no case the feed parser treats specially: no
    continuation as the first field line, no ``From `` line but an mbox envelope
    line first, no field with an empty name. For those, and for multipart and
    message/* roots, None: the caller feeds the parser.
    """
    block = raw[:header_end]
    if b"\nFrom " in block or b"\rFrom " in block or b"\n:" in block or b"\r:" in block:
        return None
    text = block.decode("ascii", "surrogateescape")
    msg = Message()
    position = 0
    envelope = _ENVELOPE.match(text)
    if envelope is not None:
        msg.set_unixfrom(envelope.group().rstrip("\r\n"))
        position = envelope.end()
    if text[position : position + 1] in (" ", "\t", ":"):
        return None
    fields: list[tuple[str, str]] = msg._headers  # type: ignore[attr-defined]
    for field in _FIELD.finditer(text, position):
        if field.start() != position:
            return None  # not the block _check_headers saw: let the parser decide
        fields.append(field.groups())  # type: ignore[arg-type]
        position = field.end()
    if position != len(text) or msg.get_content_maintype() in _CONTAINERS:
        return None
    msg.set_payload(raw[body:end].decode("ascii", "surrogateescape"))
    return msg


def _parse_tree(
    raw: bytes,
    defects: list[str],
    *,
    max_parts: int,
    max_depth: int,
    max_lines: int,
    header_end: int | None = None,
) -> Message:
    """The compat32 message tree of ``raw`` within the limits (partial past a limit).

    Speed: the feed parser takes every line in Python (most of its time on
    ordinary mail). A single-part message whose header block ends with a blank
    line and has nothing unusual in it is built directly instead
    (``_single_part_root``); anything else is fed to the parser. The tree is
    the same either way (tests compare them).
    """
    end = _line_limit_cut(raw, max_lines)
    if end < len(raw):
        defects.append(TOO_MANY_LINES)
    body = _body_offset(raw, header_end, end)
    if body is not None and header_end is not None:
        direct = _single_part_root(raw, header_end, body, end)
        if direct is not None:
            return direct
    parser = _BoundedParser(max_parts, max_depth)
    try:
        _feed(parser, memoryview(raw), 0, end)
        return parser.close()  # type: ignore[no-any-return]
    except _LimitReached as stop:
        defects.append(stop.defect)
        return parser.root if parser.root is not None else Message()


# ------------------------------------------------------------------ the parse
_WANTED: Final = frozenset(
    {
        "message-id",
        "subject",
        "from",
        "to",
        "cc",
        "date",
        "reply-to",
        "return-path",
        "x-mailer",
        "user-agent",
        "content-type",
        "mime-version",
        "list-id",
        "in-reply-to",
        "x-priority",
    }
)


def parse_email(
    raw: bytes,
    *,
    max_bytes: int | None = None,
    max_parts: int = DEFAULT_MAX_PARTS,
    max_depth: int = DEFAULT_MAX_DEPTH,
    max_text_chars: int = DEFAULT_MAX_TEXT_CHARS,
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES,
    max_headers: int = DEFAULT_MAX_HEADERS,
    max_lines: int = DEFAULT_MAX_LINES,
) -> ParsedEmail:
    """Parse one raw RFC 822 message; never raises on a malformed one.

    ``max_bytes`` (None: no limit) refuses larger input with
    ``MailParseError("too-large")``; a top-level header block over
    ``max_header_bytes`` bytes or ``max_headers`` fields is refused
    (``"headers-too-large"``, ``"too-many-headers"``). ``max_lines`` lines are
    parsed at most, ``max_parts`` MIME parts, ``max_depth`` levels of nesting,
    and ``max_text_chars`` characters are kept for each of ``text`` and
    ``html``; going past one of these stops there and records a defect. Raises
    ``MailParseError`` only for input that is not an email (empty, too large,
    binary garbage; see the module docstring for the rule) or is a header bomb.
    """
    if not isinstance(raw, bytes):
        raw = bytes(raw)  # bytearray / memoryview from a consumer
    if max_bytes is not None and len(raw) > max_bytes:
        raise MailParseError("too-large", f"{len(raw)} bytes > {max_bytes}")
    if not raw or raw.isspace():  # not raw.strip(): no copy of a huge input
        raise MailParseError("empty")
    defects: list[str] = []
    if not _looks_like_headers(raw):
        if _looks_binary(raw[:_SNIFF_BYTES]):
            raise MailParseError("not-email", "no header line and binary content")
        defects.append(NO_HEADERS)
    # By the feed parser's rule for header lines (looser than _looks_like_headers).
    header_end = _check_headers(raw, max_header_bytes, max_headers)
    try:
        msg = _parse_tree(
            raw,
            defects,
            max_parts=max_parts,
            max_depth=max_depth,
            max_lines=max(1, max_lines),
            header_end=header_end,
        )
    except RecursionError:
        # The stdlib parser recurses once per MIME level (~300 levels break it; only
        # reachable with a max_depth that high): keep the headers, give up on the body.
        defects.append(TOO_DEEP)
        msg = email.parser.BytesParser().parsebytes(raw, headersonly=True)
        msg.set_payload("")
    except Exception:
        defects.append(PARSER_ERROR)
        msg = Message()
    try:
        return _build(raw, msg, defects, max_parts, max_depth, max_text_chars)
    except Exception:
        # A last resort so a surprise in the stdlib never stops a stream.
        defects.append(PARSER_ERROR)
        return _build(raw, Message(), defects, max_parts, max_depth, max_text_chars)


def _build(
    raw: bytes,
    msg: Message,
    defects: list[str],
    max_parts: int,
    max_depth: int,
    max_text_chars: int,
) -> ParsedEmail:
    first: dict[str, str] = {}
    addresses: dict[str, list[str]] = {"to": [], "cc": []}
    received = 0
    header_count = 0
    # One pass over the raw header list: Message.get() rescans the list each call.
    for name, value in msg.raw_items():
        header_count += 1
        key = name.lower()
        if key == "received":
            received += 1
            continue
        if key not in _WANTED:
            continue
        if not isinstance(value, str):
            value = str(value)
        if key in addresses:
            addresses[key].append(value)
        first.setdefault(key, value)

    display_name, sender = _address(first.get("from", ""), defects)
    reply_name, reply_to = _address(first["reply-to"], defects) if "reply-to" in first else ("", "")
    return_path = _address(first["return-path"], defects)[1] if "return-path" in first else None

    def text_header(key: str) -> str | None:
        value = first.get(key)
        return None if value is None else _header_text(value, defects)

    body = _Body()
    _walk(
        msg,
        body,
        defects,
        max_parts=max_parts,
        max_depth=max_depth,
        max_text_chars=max_text_chars,
    )
    try:
        content_type = msg.get_content_type()
    except Exception:
        content_type = "text/plain"
    headers = MailHeaders(
        header_count=header_count,
        received_count=received,
        cc_count=_count_addresses(addresses["cc"]),
        x_mailer=text_header("x-mailer"),
        user_agent=text_header("user-agent"),
        reply_to=reply_to or (reply_name or None),
        reply_to_domain=_domain(reply_to),
        return_path=return_path,
        content_type=content_type,
        mime_version=text_header("mime-version"),
        list_id=text_header("list-id"),
        in_reply_to=text_header("in-reply-to"),
        x_priority=text_header("x-priority"),
    )
    subject = first.get("subject")
    return ParsedEmail(
        message_id=_message_id(first.get("message-id"), defects),
        subject="" if subject is None else _SPACES.sub(" ", _header_text(subject, defects)),
        sender=sender,
        sender_domain=_domain(sender),
        sender_display_name=display_name,
        to_count=_count_addresses(addresses["to"]),
        date=_parse_date(first.get("date"), defects),
        headers=headers,
        text="\n".join(body.text),
        html="\n".join(body.html),
        attachment_count=body.attachments,
        part_count=body.parts,
        max_depth=body.max_depth,
        size_bytes=len(raw),
        defects=tuple(dict.fromkeys(defects)),
        charsets=tuple(body.charsets),
    )


def message_key(raw: bytes, parsed: ParsedEmail | None) -> str:
    """The Kafka key of a message: its Message-ID without <>, else ``sha256:<hex>`` of the bytes."""
    if parsed is not None and parsed.message_id:
        return parsed.message_id
    return "sha256:" + hashlib.sha256(raw).hexdigest()
