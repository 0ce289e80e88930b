"""The RFC 822 parser: normal, broken, hostile and arbitrary input."""

from __future__ import annotations

import base64
import email
import email.message
import hashlib
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from spamops_features import mail
from spamops_features.mail import (
    PARSE_ERROR_REASONS,
    MailHeaders,
    MailParseError,
    ParsedEmail,
    message_key,
    parse_email,
)

NORMAL = (
    b"From alice@example.com  Thu Aug 22 12:36:23 2002\n"
    b"Return-Path: <bounce@lists.example.com>\n"
    b"Received: from mx1.example.com by mx2.example.org; Thu, 22 Aug 2002 07:36:16 -0400\n"
    b"Received: from localhost by mx1.example.com; Thu, 22 Aug 2002 07:36:10 -0400\n"
    b"From: Alice Example <Alice@Example.COM>\n"
    b'To: bob@example.org, "Carol, C." <carol@example.net>\n'
    b"Cc: dave@example.org\n"
    b"Reply-To: replies@Lists.Example.com\n"
    b"Subject: Hello\n  world\n"
    b"Date: Thu, 22 Aug 2002 18:26:25 +0700\n"
    b"Message-ID: <1029945287.4797.TMDA@deepeddy.vircio.com>\n"
    b"X-Mailer: Exmh version 2.5\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=us-ascii\n"
    b"\n"
    b"Hi Bob,\nsee you tomorrow.\n"
)


def _multipart() -> bytes:
    pdf = base64.encodebytes(b"%PDF-1.4 fake" * 10).decode()
    return (
        "From: shop@spam.example\n"
        "To: victim@example.org\n"
        "Subject: =?utf-8?B?R3LDvMOfZQ==?= und =?iso-8859-1?Q?M=E4rz?=\n"
        "Date: Sat, 05 Oct 2002 17:22:56 +0100\n"
        "MIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="outer"\n'
        "\n"
        "--outer\n"
        'Content-Type: multipart/alternative; boundary="inner"\n'
        "\n"
        "--inner\n"
        "Content-Type: text/plain; charset=utf-8\n"
        "Content-Transfer-Encoding: quoted-printable\n"
        "\n"
        "Gr=C3=BC=C3=9Fe, buy now\n"
        "--inner\n"
        "Content-Type: text/html; charset=iso-8859-1\n"
        "\n"
        "<p>Gr\xfc\xdfe, <b>buy</b> now</p>\n"
        "--inner--\n"
        "--outer\n"
        'Content-Type: application/pdf; name="offer.pdf"\n'
        "Content-Transfer-Encoding: base64\n"
        'Content-Disposition: attachment; filename="offer.pdf"\n'
        "\n"
        f"{pdf}"
        "--outer\n"
        "Content-Type: text/plain\n"
        'Content-Disposition: attachment; filename="notes.txt"\n'
        "\n"
        "attached notes, not body text\n"
        "--outer--\n"
    ).encode("latin-1")


def test_normal_message() -> None:
    parsed = parse_email(NORMAL)
    assert isinstance(parsed, ParsedEmail)
    assert parsed.message_id == "1029945287.4797.TMDA@deepeddy.vircio.com"
    assert parsed.subject == "Hello world"
    assert parsed.sender == "Alice@Example.COM"
    assert parsed.sender_domain == "example.com"
    assert parsed.sender_display_name == "Alice Example"
    assert parsed.to_count == 2
    assert parsed.headers.cc_count == 1
    assert parsed.date == datetime(2002, 8, 22, 11, 26, 25, tzinfo=UTC)
    assert parsed.date.tzinfo is UTC
    assert parsed.headers.received_count == 2
    assert parsed.headers.x_mailer == "Exmh version 2.5"
    assert parsed.headers.reply_to == "replies@Lists.Example.com"
    assert parsed.headers.reply_to_domain == "lists.example.com"
    assert parsed.headers.return_path == "bounce@lists.example.com"
    assert parsed.headers.content_type == "text/plain"
    assert parsed.text == "Hi Bob,\nsee you tomorrow.\n"
    assert parsed.html == ""
    assert (parsed.attachment_count, parsed.part_count, parsed.max_depth) == (0, 1, 0)
    assert parsed.size_bytes == len(NORMAL)
    assert parsed.defects == ()
    assert parsed.charsets == ("us-ascii",)


def test_headers_read_as_a_mapping_too() -> None:
    headers = parse_email(NORMAL).headers
    assert isinstance(headers, MailHeaders)
    assert headers["received_count"] == 2
    assert headers.get("x_mailer") == "Exmh version 2.5"
    assert dict(headers)["content_type"] == "text/plain"
    with pytest.raises(KeyError):
        headers["nope"]


def test_parsed_email_is_frozen() -> None:
    parsed = parse_email(NORMAL)
    with pytest.raises(AttributeError):
        parsed.subject = "changed"  # type: ignore[misc]


def test_multipart_text_html_and_attachments() -> None:
    parsed = parse_email(_multipart())
    assert parsed.subject == "Grüße und März"
    # The line break before a boundary belongs to the boundary (RFC 2046).
    assert parsed.text == "Grüße, buy now"
    assert parsed.html == "<p>Grüße, <b>buy</b> now</p>"
    assert parsed.attachment_count == 2  # the PDF and the text part marked as attachment
    assert parsed.part_count == 6  # mixed, alternative, plain, html, pdf, notes
    assert parsed.max_depth == 2
    assert parsed.headers.content_type == "multipart/mixed"
    assert parsed.defects == ()
    assert set(parsed.charsets) == {"utf-8", "iso-8859-1"}


def test_missing_headers() -> None:
    parsed = parse_email(b"Subject: only a subject\n\nbody\n")
    assert parsed.message_id is None
    assert (parsed.sender, parsed.sender_domain, parsed.sender_display_name) == ("", "", "")
    assert parsed.to_count == 0
    assert parsed.date is None
    assert parsed.headers.received_count == 0
    assert parsed.headers.x_mailer is None
    assert parsed.text == "body\n"
    assert parsed.defects == ()


def test_text_without_headers_parses_with_a_defect() -> None:
    parsed = parse_email(b"just some text, no headers at all\nsecond line\n")
    assert "no-headers" in parsed.defects
    assert "just some text" in parsed.text


def test_unknown_and_wrong_charsets_fall_back() -> None:
    raw = (
        b"From: =?x-unknown-cs?Q?J=E9r=F4me?= <j@example.fr>\n"
        b"Subject: =?klingon?B?SGVsbG8=?= \xe9t\xe9\n"
        b"Content-Type: multipart/mixed; boundary=b\n"
        b"\n--b\n"
        b"Content-Type: text/plain; charset=x-klingon\n\ncaf\xc3\xa9\n"
        b"--b\n"
        b"Content-Type: text/plain; charset=utf-8\n\nna\xefve\n"  # Latin-1 bytes, says utf-8
        b"--b\n"
        b"Content-Type: text/plain; charset=rot13\n\nplain\n"  # a Python codec, not a charset
        b"--b--\n"
    )
    parsed = parse_email(raw)
    assert parsed.sender == "j@example.fr"
    assert parsed.sender_display_name == "Jérôme"  # unknown charset: UTF-8 fails, Latin-1
    assert parsed.subject == "Hello été"  # 8-bit header bytes read as Latin-1
    # x-klingon: unknown, UTF-8 works; utf-8 label on Latin-1 bytes: Windows-1252.
    assert parsed.text.split("\n") == ["café", "naïve", "plain"]
    assert {"unknown-charset", "charset-mismatch", "header-8bit"} <= set(parsed.defects)


def test_lying_single_byte_charset_does_not_raise() -> None:
    raw = b"Content-Type: text/plain; charset=us-ascii\n\n\xfcber \xe4rger\n"
    parsed = parse_email(raw)
    assert parsed.text == "über ärger\n"  # not ASCII, not UTF-8: Latin-1
    assert "charset-mismatch" in parsed.defects


def test_multibyte_charset_with_broken_bytes_keeps_the_text() -> None:
    text = "免费发票".encode("gb2312")
    raw = b"Content-Type: text/plain; charset=gb2312\n\n" + text + b"\xff\xff" + text
    parsed = parse_email(raw)
    assert parsed.text.startswith("免费发票\ufffd")
    assert parsed.text.endswith("\ufffd免费发票")
    assert "charset-mismatch" in parsed.defects


def test_encoded_words_split_inside_a_character_are_joined() -> None:
    # "€uro" in UTF-8 split across two B words; whitespace between words is dropped.
    first = base64.b64encode("€".encode()[:2]).decode()
    second = base64.b64encode("€".encode()[2:] + b"uro").decode()
    subject = f"=?UTF-8?B?{first}?=\n =?utf-8?B?{second}?= plain =?bad?Q?caf=E9?="
    raw = f"Subject: {subject}\n\nx".encode()
    parsed = parse_email(raw)
    assert parsed.subject == "€uro plain café"  # unknown charset: not UTF-8, so Windows-1252
    assert parsed.defects == ("unknown-charset",)


def test_multipart_without_boundary_keeps_its_text() -> None:
    parsed = parse_email(b"Subject: x\nContent-Type: multipart/mixed\n\nvisible text\n")
    assert parsed.text == "visible text\n"
    assert parsed.attachment_count == 0
    assert "mime:NoBoundaryInMultipart" in parsed.defects


def test_attached_message_is_walked() -> None:
    raw = (
        b"Subject: fwd\nContent-Type: multipart/mixed; boundary=b\n\n"
        b"--b\nContent-Type: text/plain\n\nsee below\n"
        b"--b\nContent-Type: message/rfc822\n\n"
        b"Subject: inner\nContent-Type: text/html\n\n<i>inner</i>\n"
        b"--b--\n"
    )
    parsed = parse_email(raw)
    assert parsed.subject == "fwd"
    assert parsed.text == "see below"
    assert parsed.html == "<i>inner</i>"
    assert (parsed.part_count, parsed.max_depth) == (4, 2)


@pytest.mark.parametrize(
    "raw",
    [
        bytes(range(256)) * 8,
        b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x01\x00" + bytes(500),
        b"PK\x03\x04\x14\x00\x00\x00\x08\x00" + bytes(range(40)) * 20,
        b"\x00",
    ],
)
def test_binary_garbage_is_not_an_email(raw: bytes) -> None:
    with pytest.raises(MailParseError) as info:
        parse_email(raw)
    assert info.value.reason == "not-email"


@pytest.mark.parametrize("raw", [b"", b"   \r\n\t\n"])
def test_empty_input(raw: bytes) -> None:
    with pytest.raises(MailParseError) as info:
        parse_email(raw)
    assert info.value.reason == "empty"


def test_over_max_bytes_is_too_large() -> None:
    with pytest.raises(MailParseError) as info:
        parse_email(NORMAL, max_bytes=100)
    assert info.value.reason == "too-large"
    assert parse_email(NORMAL, max_bytes=len(NORMAL)).size_bytes == len(NORMAL)


def test_five_megabyte_message() -> None:
    attachment = base64.encodebytes(bytes(range(256)) * 13_000).decode()  # ~4.5 MB encoded
    body = "spam spam lovely spam\n" * 30_000  # ~0.7 MB of text
    raw = (
        "From: big@example.com\nSubject: big\n"
        'Content-Type: multipart/mixed; boundary="B"\n\n'
        f"--B\nContent-Type: text/plain\n\n{body}"
        f"--B\nContent-Type: application/octet-stream\nContent-Transfer-Encoding: base64\n\n"
        f"{attachment}--B--\n"
    ).encode()
    assert len(raw) > 4_900_000
    started = time.perf_counter()
    parsed = parse_email(raw)
    elapsed = time.perf_counter() - started
    assert parsed.size_bytes == len(raw)
    assert parsed.attachment_count == 1
    assert parsed.text.startswith("spam spam lovely spam\n")
    assert len(parsed.text) == len(body) - 1  # the last newline belongs to the boundary
    assert elapsed < 10  # a generous bound: it runs in well under a second


def test_decoded_text_is_bounded() -> None:
    raw = b"Subject: long\n\n" + b"x" * 5000
    parsed = parse_email(raw, max_text_chars=1000)
    assert len(parsed.text) == 1000
    assert "text-truncated" in parsed.defects


def _nested(levels: int) -> bytes:
    head = b"From: deep@example.com\nSubject: deep\n"
    tail = b""
    for level in range(levels):
        head += b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (level, level)
        tail = b"\n--b%d--\n" % level + tail
    return head + b"Content-Type: text/plain\n\ninnermost\n" + tail


def test_deep_nesting_is_bounded() -> None:
    parsed = parse_email(_nested(200))
    assert "too-deep" in parsed.defects
    assert parsed.max_depth == 50  # the default limit
    assert parsed.part_count == 51
    assert parsed.text == ""  # the text sits below the limit
    shallow = parse_email(_nested(200), max_depth=500)
    assert shallow.max_depth == 200
    assert "innermost" in shallow.text


def test_nesting_beyond_the_stdlib_recursion_limit() -> None:
    parsed = parse_email(_nested(3000))  # the stdlib parser raises RecursionError here
    assert "too-deep" in parsed.defects
    assert parsed.subject == "deep"
    assert parsed.sender_domain == "example.com"


def test_too_many_parts() -> None:
    parts = b"".join(b"--b\nContent-Type: text/plain\n\npart %d\n" % i for i in range(50))
    raw = b"Content-Type: multipart/mixed; boundary=b\n\n" + parts + b"--b--\n"
    parsed = parse_email(raw, max_parts=10)
    assert parsed.part_count == 10
    assert "too-many-parts" in parsed.defects


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("Thu, 22 Aug 2002 18:26:25 -0000", datetime(2002, 8, 22, 18, 26, 25, tzinfo=UTC)),
        ("22 Aug 02 18:26 GMT", datetime(2002, 8, 22, 18, 26, tzinfo=UTC)),
        ("Thu, 22 Aug 0102 12:07:35 +0800", datetime(2002, 8, 22, 4, 7, 35, tzinfo=UTC)),
        ("2002/09/14 Sat 02:29:32 CDT", None),
        ("yesterday", None),
        ("Thu, 22 Aug 9999 18:26:25 +0000", None),
    ],
)
def test_dates(header: str, expected: datetime | None) -> None:
    parsed = parse_email(f"Date: {header}\nSubject: d\n\nx\n".encode())
    assert parsed.date == expected
    if expected is None or "0102" in header:
        assert "bad-date" in parsed.defects  # "0102": the ratware Y2K bug, repaired


def test_message_key() -> None:
    parsed = parse_email(NORMAL)
    assert message_key(NORMAL, parsed) == "1029945287.4797.TMDA@deepeddy.vircio.com"
    no_id = b"Subject: x\n\nbody\n"
    expected = "sha256:" + hashlib.sha256(no_id).hexdigest()
    assert message_key(no_id, parse_email(no_id)) == expected
    assert message_key(NORMAL, None) == "sha256:" + hashlib.sha256(NORMAL).hexdigest()


def test_unusable_message_id_falls_back_to_the_hash() -> None:
    raw = b"Message-ID: <a b@        .>\nSubject: x\n\nbody\n"
    parsed = parse_email(raw)
    assert parsed.message_id is None
    assert "bad-message-id" in parsed.defects
    assert message_key(raw, parsed).startswith("sha256:")


def test_accepts_bytearray_and_memoryview() -> None:
    assert parse_email(bytearray(NORMAL)).subject == "Hello world"  # type: ignore[arg-type]
    assert parse_email(memoryview(NORMAL)).subject == "Hello world"  # type: ignore[arg-type]


_email_like = st.builds(
    lambda headers, body: b"".join(headers) + b"\n" + body,
    st.lists(
        st.sampled_from(
            [
                b"Subject: =?utf-8?B?w6k=?= =?bogus?Q?=E9?=\n",
                b'From: "x\\" (y" <a@b>\n',
                b"To: ,,, <@>, (((\n",
                b"Date: Mon, 99 Foo 12345 99:99:99 +9999\n",
                b'Content-Type: multipart/mixed; boundary="z"\n',
                b"Content-Type: text/plain; charset*=x''%FF\n",
                b"Content-Transfer-Encoding: base64\n",
                b"Message-ID: <\xff\xfe>\n",
                b"Subject: =?utf-7?Q?+2D0-?= \xed\xa0\xbd\n",
                b"Content-Type: text/plain; charset=utf-7\n",
                b"--z\n",
            ]
        ),
        max_size=8,
    ),
    st.binary(max_size=300),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(st.binary(max_size=2000), _email_like))
def test_arbitrary_bytes_parse_or_raise_mail_parse_error(raw: bytes) -> None:
    try:
        parsed = parse_email(raw)
    except MailParseError as exc:
        assert exc.reason in PARSE_ERROR_REASONS
        return
    assert isinstance(parsed, ParsedEmail)
    assert parsed.size_bytes == len(raw)
    assert parsed.date is None or parsed.date.tzinfo is UTC
    assert message_key(raw, parsed)
    # Every string must survive UTF-8 (JSON events, parquet): no lone surrogates.
    strings = [parsed.subject, parsed.sender, parsed.sender_domain, parsed.text, parsed.html]
    strings += [parsed.sender_display_name, parsed.message_id or "", *parsed.defects]
    strings += [value for value in parsed.headers.values() if isinstance(value, str)]
    for value in strings:
        value.encode("utf-8")


# ------------------------------------------------------- limits against bombs
# (each bomb at full size, with time and memory: tests/unit/test_message_bombs.py)
def test_header_block_limits() -> None:
    headers = b"".join(b"X-%d: v\n" % i for i in range(10))
    assert parse_email(headers + b"\nbody\n", max_headers=10).headers.header_count == 10
    with pytest.raises(MailParseError) as info:
        parse_email(headers + b"\nbody\n", max_headers=9)
    assert info.value.reason == "too-many-headers"
    block = b"Subject: " + b"x" * 100 + b"\n"
    assert parse_email(block + b"\nbody\n", max_header_bytes=len(block)).subject.startswith("x")
    for raw in (block + b"\nbody\n", block, b"Subject: x\n  folded\n" * 20 + b"\nbody\n"):
        with pytest.raises(MailParseError) as info:
            parse_email(raw, max_header_bytes=len(block) - 1)
        assert info.value.reason == "headers-too-large"


def test_header_limits_apply_to_the_header_block_only() -> None:
    body = b"X-Looks-Like: a header\n" * 100
    parsed = parse_email(b"Subject: s\n\n" + body, max_headers=5, max_header_bytes=100)
    assert parsed.text == body.decode()
    no_headers = parse_email(b"just text " * 100, max_header_bytes=10)
    assert "no-headers" in no_headers.defects


@pytest.mark.parametrize("newline", [b"\n", b"\r\n", b"\r"])
def test_lines_past_the_limit_are_not_parsed(newline: bytes) -> None:
    raw = b"Subject: s" + newline + newline + newline.join(b"line %d" % i for i in range(100))
    parsed = parse_email(raw, max_lines=12)  # 2 header lines + 10 body lines
    assert "too-many-lines" in parsed.defects
    assert parsed.text.split() == " ".join(f"line {i}" for i in range(10)).split()
    assert "too-many-lines" not in parse_email(raw, max_lines=102).defects


def test_a_byte_codec_as_charset_is_never_run() -> None:
    import zlib

    data = zlib.compress(b"A" * 100_000)
    raw = (
        b"Subject: =?zlib?B?" + base64.b64encode(data) + b"?=\n"
        b"Content-Type: text/plain; charset=zlib\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(data)
    )
    parsed = parse_email(raw)
    assert "unknown-charset" in parsed.defects
    assert "A" * 100 not in parsed.text and "A" * 100 not in parsed.subject
    assert len(parsed.text) == len(data)


def test_nesting_past_the_stdlib_recursion_limit_when_max_depth_allows_it() -> None:
    parsed = parse_email(_nested(3000), max_depth=5000)
    assert "too-deep" in parsed.defects  # RecursionError: the headers are kept
    assert parsed.subject == "deep"


_MIME_LINES = [
    b'Content-Type: multipart/mixed; boundary="z"\n',
    b"Content-Type: multipart/alternative; boundary=y\n",
    b'Content-Type: multipart/digest; boundary="d d"\n',
    b'Content-Type: multipart/mixed; boundary="a-"\n',
    b"Content-Type: message/rfc822\n",
    b"Content-Type: message/delivery-status\n",
    b"Content-Type: text/plain\n",
    b"--z\n", b"--z--\n", b"--z \r\n", b"--zz\n", b"--y\n", b"--y--  \n", b"--y--\r",
    b"--d d\n", b"--d d--\n", b"--a-\n", b"--a---\n", b"--a-- \n", b"--\n", b"----\n",
    b"\n", b"\r\n", b"-- \n", b"hello\n", b"X: y\n", b" folded\n",
]  # fmt: skip
_mime_lines = st.lists(st.sampled_from(_MIME_LINES), max_size=40)


@settings(max_examples=500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(top=st.sampled_from(_MIME_LINES[:7]), lines=_mime_lines, limit=st.integers(1, 6))
def test_the_fast_boundary_check_parses_exactly_like_the_stdlib(
    top: bytes, lines: list[bytes], limit: int, monkeypatch_module: pytest.MonkeyPatch
) -> None:
    """_LineBuffer skips the stdlib's scan only for lines no open boundary can match."""
    from spamops_features import mail

    raw = b"From: a@b.example\n" + top + b"\n" + b"".join(lines)
    fast = [parse_email(raw), parse_email(raw, max_parts=3 * limit, max_depth=limit)]
    with monkeypatch_module.context() as patch:
        patch.setattr(mail._LineBuffer, "_may_end_a_part", lambda self, line: True)
        exact = [parse_email(raw), parse_email(raw, max_parts=3 * limit, max_depth=limit)]
    assert fast == exact


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


# ------------------------------------------- the single-part fast path (speed only)
def _tree(msg: email.message.Message) -> list[object]:
    out: list[object] = []
    stack = [msg]
    while stack:
        part = stack.pop()
        out.append(
            (
                tuple(part.raw_items()),
                tuple(type(d).__name__ for d in part.defects),
                part.get_unixfrom(),
                part.preamble,
                part.epilogue,
            )
        )
        payload = part.get_payload()
        if isinstance(payload, list):
            stack.extend(p for p in payload if isinstance(p, email.message.Message))
        else:
            out.append(payload)
    return out


@pytest.mark.parametrize(
    "raw",
    [
        b"Subject: a\nFrom: x@y.example\n\nbody line 1\nline 2\n",
        b"Subject: a\r\nFrom: x@y.example\r\n\r\nbody\r\nline 2\r\nno newline at the end",
        b"Subject: a\rFrom: x@y.example\r\rbody\rline 2\r",  # CR only: left to the feed parser
        b"Subject: a\nnot a header line\nbody\n",  # no blank line
        b"Subject: a\n \nbody after a blank-looking continuation\n",
        b"From someone Sat Jan  1 00:00:00 2000\nSubject: mbox\n\nbody\n",
        b"Subject: a\nContent-Type: text/html\n\n<p>\xe9t\xe9</p>\n\n\n",
        b"Subject: a\nContent-Type: multipart/mixed; boundary=b\n\n"
        b"--b\nContent-Type: text/plain\n\none\n"
        b"--b\nContent-Type: text/html\n\n<b>two</b>\n--b--\n",
        b"Subject: a\nContent-Type: message/rfc822\n\nSubject: inner\n\ninner body\n",
        b"Subject: a\nContent-Type: message/delivery-status\n\nA: 1\n\nB: 2\n",
        b"Subject: only headers\n",
        b"Subject: only headers and a blank line\n\n",
    ],
)
def test_single_part_fast_path_builds_the_same_tree(raw: bytes) -> None:
    header_end = mail._check_headers(raw, 1 << 20, 1000)
    limits = {"max_parts": 100, "max_depth": 10, "max_lines": 10_000}
    fast = mail._parse_tree(raw, [], header_end=header_end, **limits)
    slow = mail._parse_tree(raw, [], header_end=None, **limits)
    assert _tree(fast) == _tree(slow)
    assert _tree(fast) == _tree(email.message_from_bytes(raw))


def test_single_part_fast_path_on_random_header_blocks() -> None:
    # The direct build of single-part roots against the feed parser: envelope
    # lines anywhere, continuations first, empty names, lone CRs, containers.
    import random

    rng = random.Random(11)
    pieces = [
        b"Subject: hi", b"From: a@b", b"From x", b"Content-Type: multipart/mixed; boundary=b",
        b"Content-Type: message/rfc822", b"Content-Type: text/html", b": empty", b" cont",
        b"\tcont", b"X-A:", b"X-B:  v  ", b"\xff\xfe", b"bad line", b"", b"--b", b"=?utf-8?q?x?=",
    ]  # fmt: skip
    ends = [b"\r\n", b"\n", b"\r", b""]
    limits = {"max_parts": 100, "max_depth": 10, "max_lines": 10_000}
    for _ in range(3000):
        raw = b"".join(rng.choice(pieces) + rng.choice(ends) for _ in range(rng.randint(1, 12)))
        if not raw.strip():
            continue
        header_end = mail._check_headers(raw, 1 << 20, 1000)
        fast = mail._parse_tree(raw, [], header_end=header_end, **limits)
        assert _tree(fast) == _tree(email.message_from_bytes(raw)), raw


def test_fast_path_respects_the_line_limit() -> None:
    raw = b"Subject: a\n\n" + b"line\n" * 100
    header_end = mail._check_headers(raw, 1 << 20, 1000)
    for max_lines in (1, 2, 3, 50):
        fast = mail._parse_tree(raw, [], max_parts=9, max_depth=9, max_lines=max_lines,
                                header_end=header_end)  # fmt: skip
        slow = mail._parse_tree(raw, [], max_parts=9, max_depth=9, max_lines=max_lines)
        assert _tree(fast) == _tree(slow)


def test_header_block_fast_match_equals_the_line_loop() -> None:
    import random

    rng = random.Random(5)
    pieces = [b"Subject: x", b"From a@b", b"From ", b" cont", b"\tcont", b"X-A:", b"no colon",
              b"\r\n", b"\n", b"\r", b":", b"body", b"A" * 40]  # fmt: skip
    for _ in range(3000):
        raw = b"".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        for max_bytes, max_headers in ((1 << 20, 1000), (60, 1000), (1 << 20, 3), (25, 2)):
            try:
                fast: object = mail._check_headers(raw, max_bytes, max_headers)
            except MailParseError as exc:
                fast = exc.reason
            try:
                slow: object = mail._check_headers_by_line(raw, max_bytes, max_headers)
            except MailParseError as exc:
                slow = exc.reason
            assert fast == slow, (raw, max_bytes, max_headers)


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/plain; charset=US-ASCII",
        'text/html; charset="iso-8859-1"',
        "text/plain; charset*=utf-8''%E2%82%AC",  # RFC 2231
        "text/plain; charset*=bogus''x",
        "text/plain; charset=caf\udce9",  # undecodable bytes: a Header, not cached
        "text/plain; charset=",
        "text/plain; charset",
    ],
)
def test_cached_charset_equals_the_stdlibs(content_type: str | None) -> None:
    part = email.message.Message()
    if content_type is not None:
        part["Content-Type"] = content_type
    for _ in range(2):  # the second read comes from the cache
        assert mail._content_charset(part) == part.get_content_charset()
