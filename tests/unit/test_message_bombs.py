"""Message bombs (issue 9, part 2): refused with a reason, or parsed in bounded time and memory.

Each bomb is built here (the decompression bombs by streaming, never expanded)
and parsed with the inference service's default limits
(``InferenceSettings``); then its features are computed. For each: the
outcome is the expected refusal reason or a parse with the expected defect;
the wall time of parse + features is under ``TIME_BOUND_S`` (generous: a slow,
shared 2-core machine; most take well under a second); the peak of Python
allocations (tracemalloc, a second run) is under 4x the input + 50 MB; the
features are finite. Then a batch through the inference handler: the bombs
become dead letters with their reason, the rest of the batch gets verdicts.
"""

from __future__ import annotations

import base64
import bz2
import gzip
import io
import lzma
import time
import tracemalloc
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import numpy as np
import pytest
from spamops_features.mail import MailParseError, ParsedEmail, parse_email
from spamops_features.pipeline import FeaturePipeline, _probe_emails
from spamops_inference.handlers import (
    H_DEAD_LETTER_HEADERS_DROPPED,
    H_DEAD_LETTER_SHA256,
    H_DEAD_LETTER_TRUNCATED,
    InboxRecord,
    classify_batch,
    fit_dead_letter,
)
from spamops_inference.settings import InferenceSettings

from tests.unit.test_inference import deps_for, email, record

PIPELINE = FeaturePipeline.fit(_probe_emails())
SETTINGS = InferenceSettings()
LIMITS: dict[str, Any] = {
    "max_bytes": SETTINGS.max_message_bytes,
    "max_header_bytes": SETTINGS.max_header_bytes,
    "max_headers": SETTINGS.max_headers,
    "max_lines": SETTINGS.max_lines,
    "max_parts": SETTINGS.max_mime_parts,
    "max_depth": SETTINGS.max_mime_depth,
    "max_text_chars": SETTINGS.max_text_chars,
}
MB = 2**20
TIME_BOUND_S = 10.0
HEAD = (
    b"From: Bomber <bomber@spam.example>\r\nTo: victim@example.org\r\nSubject: bomb\r\n"
    b"Date: Tue, 1 Oct 2002 10:00:00 +0000\r\nMessage-ID: <bomb@spam.example>\r\n"
)
MULTIPART = b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"


# ------------------------------------------------------------------ the bombs
def deep_mime(levels: int) -> bytes:
    """``levels`` nested multipart/mixed, each with its own boundary."""
    out = [HEAD, b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b0\r\n\r\n"]
    out += [
        b"--b%d\r\nContent-Type: multipart/mixed; boundary=b%d\r\n\r\n" % (i - 1, i)
        for i in range(1, levels)
    ]
    out.append(b"--b%d\r\nContent-Type: text/plain\r\n\r\ninnermost\r\n" % (levels - 1))
    out += [b"--b%d--\r\n" % i for i in reversed(range(levels))]
    return b"".join(out)


def deep_rfc822(levels: int) -> bytes:
    """``levels`` message/rfc822 parts, each inside the previous one."""
    level = b"Content-Type: message/rfc822\r\n\r\nSubject: forwarded\r\n"
    return HEAD + level * levels + b"Content-Type: text/plain\r\n\r\ninnermost\r\n"


def deep_with_lines(levels: int, lines: int) -> bytes:
    """Short lines inside ``levels`` of nesting: quadratic for the stdlib's boundary scan."""
    raw = deep_mime(levels)
    cut = raw.index(b"innermost")
    return raw[:cut] + b"x\r\n" * lines + raw[cut:]


def many_parts(count: int, part: bytes = b"Content-Type: text/plain\r\n\r\npart\r\n") -> bytes:
    return HEAD + MULTIPART + (b"--zz\r\n" + part) * count + b"--zz--\r\n"


def boundary_flood(size: int) -> bytes:
    """Nothing but delimiter lines: a part each for the stdlib parser."""
    return HEAD + MULTIPART + b"--zz\n" * (size // 5)


def text_message(size: int) -> bytes:
    line = b"Buy cheap meds now, limited offer, click here http://spam.example/\r\n"
    return HEAD + b"\r\n" + line * (size // len(line))


def long_header_line(size: int) -> bytes:
    return HEAD + b"X-Bomb: " + b"x" * size + b"\r\n\r\nbody\r\n"


def many_headers(count: int) -> bytes:
    return HEAD + b"".join(b"X-H%d: v\r\n" % i for i in range(count)) + b"\r\nbody\r\n"


def folded_header(lines: int) -> bytes:
    """One header field folded over ``lines`` continuation lines."""
    return HEAD + b"X-Bomb: v\r\n" + b" folded continuation\r\n" * lines + b"\r\nbody\r\n"


def part_header_line(size: int) -> bytes:
    """The 9 MB header line in a MIME part (only the top-level header block is limited)."""
    return many_parts(1, b"Content-Type: text/plain\r\nX-Bomb: " + b"y" * size + b"\r\n\r\nhi\r\n")


def body_line(size: int) -> bytes:
    return HEAD + b"\r\n" + b"y" * size


def short_lines(size: int, line: bytes = b"ab\n") -> bytes:
    return HEAD + b"\r\n" + line * (size // len(line))


def eight_bit(size: int) -> bytes:
    return HEAD + b"\r\n" + (bytes(range(128, 228)) + b"\n") * (size // 101)


def base64_text(size: int) -> bytes:
    """A text/plain part that is 7 MB of base64: 5 MB of text once decoded."""
    data = base64.encodebytes(b"word " * (size * 3 // 4 // 5))
    return HEAD + b"Content-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n" + data


MEMBER_ZEROS = MB
MEMBERS = 10 * 1024  # 10 GiB of zeros in all


@cache
def gzip_member() -> bytes:
    """One gzip member of 1 MiB of zeros (~1 KB)."""
    return gzip.compress(bytes(MEMBER_ZEROS), 9)


@cache
def gzip_bomb() -> bytes:
    """~25 KB of gzip holding a 10 MB gzip of 10,240 members: 10 GiB of zeros.

    Built by streaming the members through a compressor: neither the 10 GiB nor
    the 10 MB middle layer is ever in memory.
    """
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)  # wbits 31: the gzip format
    member = gzip_member()
    return b"".join(packer.compress(member) for _ in range(MEMBERS)) + packer.flush()


@cache
def zip_bomb() -> bytes:
    """A zip whose one entry, zeros.gz, is the 10 MB gzip of 10 GiB of zeros (streamed)."""
    buffer = io.BytesIO()
    with (
        zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive,
        archive.open("zeros.gz", "w", force_zip64=True) as entry,
    ):
        member = gzip_member()
        for _ in range(MEMBERS):
            entry.write(member)
    return buffer.getvalue()


def attachment(data: bytes, content_type: bytes, filename: bytes) -> bytes:
    return (
        HEAD + MULTIPART + b"--zz\r\nContent-Type: text/plain\r\n\r\nsee the attachment\r\n"
        b"--zz\r\nContent-Type: " + content_type + b"\r\nContent-Transfer-Encoding: base64\r\n"
        b"Content-Disposition: attachment; filename=" + filename + b"\r\n\r\n"
        + base64.encodebytes(data) + b"--zz--\r\n"
    )  # fmt: skip


def zlib_charset_text() -> bytes:
    """A text part whose declared charset is the zlib codec: must not be decompressed."""
    data = zlib.compress(bytes(100 * MB), 9)  # ~100 KB -> 100 MB if it were decoded with zlib
    return (
        HEAD + b"Content-Type: text/plain; charset=zlib\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\n" + base64.encodebytes(data)
    )


@dataclass(frozen=True)
class Bomb:
    name: str
    build: Callable[[], bytes]
    refused: str | None = None  # the MailParseError reason, or None: parsed
    defect: str | None = None  # a defect the parse must record
    check: Callable[[ParsedEmail], bool] = lambda email: True


BOMBS = [
    Bomb("deep-mime-10k-levels", lambda: deep_mime(10_000), defect="too-deep",
         check=lambda e: e.max_depth == 50 and e.subject == "bomb"),
    Bomb("deep-rfc822-10k-levels", lambda: deep_rfc822(10_000), defect="too-deep",
         check=lambda e: e.max_depth == 50),
    Bomb("deep-50-levels-around-450k-lines", lambda: deep_with_lines(50, 450_000),
         check=lambda e: e.max_depth == 50 and e.text.startswith("x\r\nx")),
    Bomb("parts-10k", lambda: many_parts(10_000), defect="too-many-parts",
         check=lambda e: e.part_count == 1000),
    Bomb("parts-1m-empty", lambda: many_parts(1_200_000, b"\r\n"), defect="too-many-parts"),
    Bomb("boundary-flood-9mb", lambda: boundary_flood(9 * MB), defect="too-many-lines"),
    Bomb("message-50mb", lambda: text_message(50 * MB), refused="too-large"),
    Bomb("message-9mb", lambda: text_message(9 * MB), defect="text-truncated",
         check=lambda e: len(e.text) == 1_000_000),
    Bomb("header-line-1mb", lambda: long_header_line(MB), refused="headers-too-large"),
    Bomb("header-line-9mb", lambda: long_header_line(9 * MB), refused="headers-too-large"),
    Bomb("header-line-50mb", lambda: long_header_line(50 * MB), refused="too-large"),
    Bomb("header-name-9mb", lambda: b"X" * (9 * MB) + b": v\r\n\r\nbody\r\n",
         refused="headers-too-large"),
    Bomb("headers-100k", lambda: many_headers(100_000), refused="too-many-headers"),
    Bomb("folded-header-100k-lines", lambda: folded_header(100_000),
         refused="headers-too-large"),
    Bomb("headers-5k", lambda: many_headers(5_000), refused="too-many-headers"),
    Bomb("part-header-line-9mb", lambda: part_header_line(9 * MB),
         check=lambda e: e.text == "hi"),
    Bomb("body-line-9mb", lambda: body_line(9 * MB), defect="text-truncated"),
    Bomb("short-lines-9mb", lambda: short_lines(9 * MB), defect="too-many-lines"),
    Bomb("bare-cr-9mb", lambda: short_lines(9 * MB, b"\r"), defect="too-many-lines"),
    Bomb("8-bit-9mb", lambda: eight_bit(9 * MB), defect="text-truncated"),
    Bomb("base64-text-7mb", lambda: base64_text(7 * MB), defect="text-truncated"),
    Bomb("gzip-bomb-attachment", lambda: attachment(gzip_bomb(), b"application/gzip", b"a.gz"),
         check=lambda e: e.attachment_count == 1 and e.text == "see the attachment"),
    Bomb("zip-bomb-attachment", lambda: attachment(zip_bomb(), b"application/zip", b"a.zip"),
         check=lambda e: e.attachment_count == 1),
    Bomb("gzip-bomb-as-text-part", lambda: attachment(gzip_bomb(), b"text/plain", b"a.txt"),
         check=lambda e: e.attachment_count == 1 and e.text == "see the attachment"),
    Bomb("zlib-charset-text", zlib_charset_text, defect="unknown-charset",
         check=lambda e: len(e.text) < 200_000),
    Bomb("binary-9mb", lambda: bytes(range(256)) * (9 * MB // 256), refused="not-email"),
]  # fmt: skip


# ------------------------------------------------------------------ the tests
def test_the_decompression_bombs_are_real() -> None:
    """~25 KB that really expand to 10 GiB (checked one layer down: 10 MB, not 10 GiB)."""
    assert len(gzip.decompress(gzip_member())) == MEMBER_ZEROS
    for bomb in (gzip_bomb(), zip_bomb()):
        assert len(bomb) < 64 * 1024
    middle = gzip.decompress(gzip_bomb())
    assert middle == gzip_member() * MEMBERS  # 10,240 members of 1 MiB of zeros each
    with zipfile.ZipFile(io.BytesIO(zip_bomb())) as archive:
        assert archive.read("zeros.gz") == middle


def _outcome(raw: bytes) -> ParsedEmail | MailParseError:
    try:
        parsed = parse_email(raw, **LIMITS)
    except MailParseError as exc:
        return exc
    x = PIPELINE.transform([parsed])
    assert x.shape == (1, PIPELINE.spec.n_inputs)
    assert np.isfinite(x).all()
    return parsed


@pytest.mark.parametrize("bomb", BOMBS, ids=[b.name for b in BOMBS])
def test_a_bomb_is_refused_or_parsed_in_bounded_time_and_memory(bomb: Bomb) -> None:
    raw = bomb.build()
    began = time.perf_counter()
    outcome = _outcome(raw)
    elapsed = time.perf_counter() - began

    tracemalloc.start()
    try:
        _outcome(raw)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"\n{bomb.name}: {len(raw) / MB:.2f} MB, {elapsed:.2f} s, peak {peak / MB:.1f} MB")

    if bomb.refused is not None:
        assert isinstance(outcome, MailParseError), f"parsed: {outcome}"
        assert outcome.reason == bomb.refused
    else:
        assert isinstance(outcome, ParsedEmail), f"refused: {outcome}"
        assert bomb.defect is None or bomb.defect in outcome.defects, outcome.defects
        assert bomb.check(outcome)
    assert elapsed < TIME_BOUND_S
    assert peak < 4 * len(raw) + 50 * MB


def test_nothing_is_ever_decompressed(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every decompressor of the stdlib fails if called: the decompression bombs still parse."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("the parser decompressed something")

    for module, names in (
        (zlib, ["decompress", "decompressobj"]),
        (gzip, ["decompress", "GzipFile", "open"]),
        (zipfile, ["ZipFile"]),
        (bz2, ["decompress", "BZ2Decompressor"]),
        (lzma, ["decompress", "LZMADecompressor"]),
    ):
        for name in names:
            monkeypatch.setattr(module, name, refuse)
    for bomb in BOMBS:
        if "zip" in bomb.name or "zlib" in bomb.name:
            outcome = _outcome(bomb.build())
            assert isinstance(outcome, ParsedEmail) and bomb.check(outcome), bomb.name


def test_without_a_size_limit_a_50mb_header_line_is_still_refused_at_once() -> None:
    raw = long_header_line(50 * MB)
    began = time.perf_counter()
    with pytest.raises(MailParseError) as info:
        parse_email(raw, **{**LIMITS, "max_bytes": None})
    assert info.value.reason == "headers-too-large"
    assert time.perf_counter() - began < 1.0  # reads max_header_bytes, not 50 MB


def _bomb(name: str) -> bytes:
    return next(b for b in BOMBS if b.name == name).build()


async def test_bombs_in_a_batch_become_dead_letters_and_the_rest_gets_verdicts() -> None:
    deps = await deps_for({"production": 2})
    records = [
        record(email(0), 0),
        record(_bomb("message-50mb"), 1),
        record(_bomb("header-line-1mb"), 2),
        record(email(3), 3),
        record(_bomb("headers-5k"), 4),
        record(_bomb("binary-9mb"), 5),
        record(_bomb("gzip-bomb-attachment"), 6),  # parsed: a verdict
        record(_bomb("deep-mime-10k-levels"), 7),  # parsed: a verdict
        record(email(8), 8),
    ]
    began = time.perf_counter()
    result = await classify_batch(records, deps)
    assert time.perf_counter() - began < TIME_BOUND_S
    reasons = {r.record.offset: r.reason for r in result.refused}
    assert reasons == {
        1: "too-large",
        2: "headers-too-large",
        4: "too-many-headers",
        5: "not-email",
    }
    assert all(r.message for r in result.refused)  # the x-error-message header
    assert [r.offset for r, _ in result.verdicts] == [0, 3, 6, 7, 8]


async def test_a_bomb_is_refused_before_any_model_is_looked_up() -> None:
    """Without a model, a normal message waits as ``no-model``; a bomb has the parser's reason."""
    result = await classify_batch(
        [record(email(0), 0), record(_bomb("header-line-1mb"), 1)], await deps_for({})
    )
    assert {r.record.offset: r.reason for r in result.refused} == {
        0: "no-model",
        1: "headers-too-large",
    }


async def test_the_parser_limits_come_from_the_settings() -> None:
    deps = await deps_for(
        {"production": 2}, max_headers=8, max_header_bytes=10_000, max_mime_parts=5
    )
    records = [
        record(many_headers(5), 0),  # HEAD has 5 already
        record(long_header_line(20_000), 1),
        record(many_parts(50), 2),
    ]
    result = await classify_batch(records, deps)
    assert {r.record.offset: r.reason for r in result.refused} == {
        0: "too-many-headers",
        1: "headers-too-large",
    }
    [(_, verdict)] = result.verdicts
    assert verdict.inbox_offset == 2


def test_a_dead_letter_fits_the_dead_letter_topic() -> None:
    small = record(email(0), 0)
    assert fit_dead_letter(small, SETTINGS.dead_letter_max_bytes) == (small.value, {})
    raw = text_message(50 * MB)
    big = InboxRecord("emails.inbox", 0, 1, "k", raw, {"traceparent": "00-x"}, 1)
    value, headers = fit_dead_letter(big, SETTINGS.dead_letter_max_bytes)
    assert len(value) + sum(len(k) + len(v) for k, v in headers.items()) + 8 * 1024 <= (
        SETTINGS.dead_letter_max_bytes
    )
    assert raw.startswith(value) and len(value) > 10 * MB
    assert headers[H_DEAD_LETTER_TRUNCATED] == str(len(raw))
    assert len(headers[H_DEAD_LETTER_SHA256]) == 64
    assert headers["traceparent"] == "00-x"
    huge_headers = InboxRecord("t", 0, 1, None, b"x", {"h": "v" * 11 * MB}, 1)
    value, headers = fit_dead_letter(huge_headers, SETTINGS.dead_letter_max_bytes)
    assert value == b"x" and headers == {H_DEAD_LETTER_HEADERS_DROPPED: "1"}
