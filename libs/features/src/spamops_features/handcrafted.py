"""The 24 handcrafted metadata and structural features of one email.

These are computed from a ``ParsedEmail`` and the visible text of its HTML part
(``prepare``), on the hot path of the streaming inference service, so each one
is a C-level operation per email (``str.count``, one ``re`` scan,
``bytes.translate``) rather than a Python loop over characters. Every regular expression
here is linear in the input: hostile mail (unclosed tags, huge runs of word
characters) must not make a verdict slow.

Missing values are encoded as numbers (``-1`` for an unknown Date hour and
weekday), never NaN, so every consumer (XGBoost, ONNX, Evidently) sees the same
finite matrix.
"""

from __future__ import annotations

import html as html_lib
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np

from spamops_features.mail import ParsedEmail

__all__ = [
    "FREE_MAIL_DOMAINS",
    "HANDCRAFTED_NAMES",
    "PreparedEmail",
    "handcrafted_matrix",
    "html_to_text",
    "prepare",
]

# The order is the column order in the model input: append new features at the end
# (and bump FEATURE_CODE_VERSION in pipeline.py), never reorder.
HANDCRAFTED_NAMES: Final[tuple[str, ...]] = (
    "url_count",  # URLs in the text part or the raw HTML, whichever has more
    "email_address_count",  # e-mail addresses in the body, same rule
    "ip_url_count",  # URLs whose host is a dotted-quad IP address
    "link_text_mismatch_count",  # <a> whose visible text is a URL to another host than href
    "html_ratio",  # HTML characters / (HTML + text characters) of the body parts
    "uppercase_ratio",  # A-Z / ASCII letters in the visible body
    "exclamation_count",  # "!" in the subject and the visible body
    "body_length",  # characters of the visible body
    "subject_length",
    "subject_uppercase_ratio",  # A-Z / ASCII letters in the subject
    "subject_is_reply",  # 1 when the subject starts with Re: (or AW:/SV:)
    "subject_money_words",  # 1 when the subject has money, "free", $n or n% words
    "received_hops",  # Received headers
    "has_x_mailer",
    "sender_local_digits",  # digits in the local part of the From address
    "sender_free_mail",  # 1 when the From domain is a free-mail provider
    "reply_to_differs",  # 1 when Reply-To has another domain than From
    "recipient_count",  # To + Cc addresses
    "date_hour",  # hour of the Date header in UTC, -1 when there is none
    "date_weekday",  # Monday=0 .. Sunday=6, -1 when there is no Date
    "attachment_count",
    "part_count",
    "mime_depth",
    "log_size",  # ln(1 + raw size in bytes)
)

# Visible text kept per email: bounds the cost of a pathological message.
MAX_VISIBLE_CHARS: Final = 200_000

FREE_MAIL_DOMAINS: Final = frozenset(
    {
        "gmail.com", "googlemail.com", "hotmail.com", "hotmail.co.uk", "hotmail.fr",
        "msn.com", "live.com", "outlook.com", "aol.com", "aim.com", "yahoo.com",
        "yahoo.co.uk", "yahoo.fr", "yahoo.de", "yahoo.ca", "yahoo.com.au", "yahoo.co.in",
        "mail.com", "email.com", "usa.net", "excite.com", "mailexcite.com", "lycos.com",
        "lycos.co.uk", "juno.com", "netzero.net", "netscape.net", "earthlink.net",
        "compuserve.com", "prodigy.net", "altavista.com", "hushmail.com", "gmx.net",
        "gmx.de", "web.de", "freenet.de", "t-online.de", "mail.ru", "yandex.ru",
        "rediffmail.com", "qq.com", "163.com", "126.com", "sina.com", "sohu.com",
        "hanmail.net", "naver.com", "btinternet.com", "virgin.net", "tiscali.co.uk",
        "libero.it", "wanadoo.fr", "laposte.net", "caramail.com", "iname.com",
        "bigfoot.com", "zdnetmail.com", "operamail.com", "icqmail.com", "mymail.com",
    }
)  # fmt: skip
_FREE_MAIL_FAMILY = re.compile(r"(?:yahoo|hotmail|msn|live|aol|gmx)\.[a-z]{2,3}(?:\.[a-z]{2})?")

# --------------------------------------------------------------------- regexes
# All patterns start on a fixed literal or a single character class and end
# without backtracking into an unbounded run: linear scans.
#
# Speed (the hot path): these are the case-insensitive patterns
#   _URL     (?:https?://|www\.)[^\s<>"'()]+                                 re.IGNORECASE
#   _IP_URL  https?://(?:[^\s/@<>"']*@)?\d{1,3}(?:\.\d{1,3}){3}(?![\w.])      re.IGNORECASE
#   _EMAIL   (?<=[\w.+\-])@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+
# written so that the regex engine can skip ahead to the first character of a
# match instead of trying the whole pattern at every position: IGNORECASE spelt
# out as classes (Python's IGNORECASE also matches U+017F, the long s, to "s";
# nothing else for h, t, p, w), a leading character class that the engine uses
# as a prefix scan, and the lookbehind of _EMAIL moved after its literal "@"
# (it looked back from every position of the text). They match exactly the same
# substrings (tests/unit/test_features.py checks them against the originals).
_URL = re.compile(r"[hHwW](?:(?<=[hH])[tT][tT][pP][sS\u017f]?://|(?<=[wW])[wW][wW]\.)[^\s<>\"'()]+")
_IP_URL = re.compile(
    r"[hH][tT][tT][pP][sS\u017f]?://(?:[^\s/@<>\"']*@)?\d{1,3}(?:\.\d{1,3}){3}(?![\w.])"
)
# A necessary condition for an _IP_URL match, found by a fast literal search.
_IP_HINT = re.compile(r"://(?:[^\s/@<>\"']*@)?\d")
# Anchored on "@" (a pattern starting with [\w.]+@ is quadratic on long word runs).
_EMAIL = re.compile(r"@(?<=[\w.+\-]@)[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
_ANCHOR = re.compile(
    r"<a\s[^<>]*?href\s*=\s*[\"']?\s*(https?://[^\"'\s<>]+)[^<>]*>\s*([^<]{0,300})",
    re.IGNORECASE,
)
_HOST = re.compile(r"(?:https?://)?(?:[^\s/@]*@)?([a-z0-9.\-]+\.[a-z]{2,})", re.IGNORECASE)
_LINKISH = re.compile(r"^\s*(?:https?://|www\.)|^\s*[a-z0-9\-]+(?:\.[a-z0-9\-]+)+\s*$", re.I)
_REPLY = re.compile(r"\s*(?:re|aw|sv)\s*(?:\[\d+\])?\s*:", re.IGNORECASE)
_MONEY = re.compile(
    r"\$\s?\d|\d\s?%|\b(?:free|money|cash|win|winner|won|prize|offer|credit|loans?|"
    r"mortgage|income|earn|profit|discount|cheap|save|million|dollars?|bonus|rich|debt|"
    r"investment|refinance|guarantee[d]?)\b",
    re.IGNORECASE,
)
# HTML to visible text: blocks whose content is not text, then tags, then entities.
_HIDDEN_START = re.compile(r"<!--|<(script|style|head)\b", re.IGNORECASE)
_COMMENT_END = re.compile(r"-->")
_BLOCK_END = {
    "script": re.compile(r"</script\s*>", re.IGNORECASE),
    "style": re.compile(r"</style\s*>", re.IGNORECASE),
    "head": re.compile(r"</head\s*>", re.IGNORECASE),
}
# [^<>] instead of [^>]: an unclosed "<" stops at the next "<", keeping this linear.
_TAG = re.compile(r"<[^<>]*>")
_BLANKS = re.compile(r"\s{2,}")


@dataclass(frozen=True, slots=True)
class PreparedEmail:
    """Per-email text computed once and shared by the TF-IDF and handcrafted features.

    ``html_text`` is the visible text of the HTML parts; ``body`` is the visible
    body used for ratios and counts: the longer of the text part and
    ``html_text`` (a multipart/alternative message carries the same text twice,
    which must not double its counts).
    """

    html_text: str
    body: str


def html_to_text(markup: str) -> str:
    """Visible text of HTML: comments, script/style/head blocks and tags removed, entities decoded.

    Linear in the input, unlike ``<script.*?</script>`` (quadratic on many
    unclosed blocks): an unclosed comment or block hides the rest, as in a browser.
    """
    if not markup:
        return ""
    if len(markup) > MAX_VISIBLE_CHARS * 2:
        markup = markup[: MAX_VISIBLE_CHARS * 2]
    pieces: list[str] = []
    position = 0
    while True:
        start = _HIDDEN_START.search(markup, position)
        if start is None:
            pieces.append(markup[position:])
            break
        pieces.append(markup[position : start.start()])
        block = start.group(1)
        end_pattern = _COMMENT_END if block is None else _BLOCK_END[block.lower()]
        end = end_pattern.search(markup, start.end())
        if end is None:
            break
        pieces.append(" ")
        position = end.end()
    visible = _TAG.sub(" ", "".join(pieces))
    if "&" in visible:
        visible = html_lib.unescape(visible)
    return _BLANKS.sub(" ", visible).strip()


def prepare(email: ParsedEmail) -> PreparedEmail:
    """The visible texts of one email (see ``PreparedEmail``)."""
    html_text = html_to_text(email.html)
    text = email.text
    body = text if len(text) >= len(html_text) else html_text
    return PreparedEmail(html_text=html_text, body=body[:MAX_VISIBLE_CHARS])


# ------------------------------------------------------------------ features
def _count_urls(text: str) -> int:
    return len(_URL.findall(text)) if "://" in text or "www." in text.lower() else 0


def _count_ip_urls(text: str) -> int:
    return len(_IP_URL.findall(text)) if _IP_HINT.search(text) else 0


def _count_emails(text: str) -> int:
    return len(_EMAIL.findall(text)) if "@" in text else 0


def _host(value: str) -> str:
    match = _HOST.search(value)
    if match is None:
        return ""
    host = match.group(1).lower().rstrip(".")
    return host.removeprefix("www.")


def _count_link_mismatches(markup: str) -> int:
    """Anchors whose visible text is itself a URL or domain pointing at another host.

    The classic phishing shape: ``<a href="http://evil.example/">www.bank.com</a>``.
    """
    if "<a" not in markup and "<A" not in markup:
        return 0
    mismatches = 0
    for href, label in _ANCHOR.findall(markup):
        label = html_lib.unescape(label).strip()
        if not label or _LINKISH.search(label) is None:
            continue
        shown, target = _host(label), _host(href)
        if shown and target and shown != target and not target.endswith("." + shown):
            mismatches += 1
    return mismatches


_NOT_UPPER: Final = bytes(b for b in range(256) if not 65 <= b <= 90)
_NOT_LOWER: Final = bytes(b for b in range(256) if not 97 <= b <= 122)


def _ascii_case_counts(text: str) -> tuple[int, int]:
    """(A-Z count, ASCII letter count) of the UTF-8 bytes (multi-byte sequences have no ASCII)."""
    if not text:
        return 0, 0
    # bytes.translate deleting every other byte: two C loops, no per-call numpy overhead.
    data = text.encode("utf-8", "surrogatepass")
    upper = len(data.translate(None, _NOT_UPPER))
    return upper, upper + len(data.translate(None, _NOT_LOWER))


def _ratio(part: int, whole: int) -> float:
    return part / whole if whole > 0 else 0.0


def _is_free_mail(domain: str) -> bool:
    return domain in FREE_MAIL_DOMAINS or _FREE_MAIL_FAMILY.fullmatch(domain) is not None


def _local_part_digits(address: str) -> int:
    local, at, _ = address.rpartition("@")
    if not at:
        return 0
    return sum(map(str.isdigit, local[:256]))


def _row(email: ParsedEmail, prepared: PreparedEmail) -> list[float]:
    """The 24 values of one email, in ``HANDCRAFTED_NAMES`` order."""
    text, markup, body, subject = email.text, email.html, prepared.body, email.subject
    headers = email.headers
    upper, letters = _ascii_case_counts(body)
    subject_upper, subject_letters = _ascii_case_counts(subject)
    date = email.date
    reply_domain = headers.reply_to_domain
    return [
        max(_count_urls(text), _count_urls(markup)),
        max(_count_emails(text), _count_emails(markup)),
        max(_count_ip_urls(text), _count_ip_urls(markup)),
        _count_link_mismatches(markup),
        _ratio(len(markup), len(markup) + len(text)),
        _ratio(upper, letters),
        subject.count("!") + body.count("!"),
        len(body),
        len(subject),
        _ratio(subject_upper, subject_letters),
        1.0 if _REPLY.match(subject) else 0.0,
        1.0 if _MONEY.search(subject) else 0.0,
        headers.received_count,
        1.0 if headers.x_mailer else 0.0,
        _local_part_digits(email.sender),
        1.0 if _is_free_mail(email.sender_domain) else 0.0,
        1.0 if reply_domain and reply_domain != email.sender_domain else 0.0,
        email.to_count + headers.cc_count,
        -1.0 if date is None else date.hour,
        -1.0 if date is None else date.weekday(),
        email.attachment_count,
        email.part_count,
        email.max_depth,
        math.log1p(email.size_bytes),
    ]


def handcrafted_matrix(
    emails: Sequence[ParsedEmail], prepared: Sequence[PreparedEmail]
) -> np.ndarray:
    """float32 ``[n, 24]`` matrix of the handcrafted features, columns in ``HANDCRAFTED_NAMES``."""
    out = np.zeros((len(emails), len(HANDCRAFTED_NAMES)), dtype=np.float32)
    for i, (email, prep) in enumerate(zip(emails, prepared, strict=True)):
        out[i] = _row(email, prep)
    return out
