"""The feature pipeline: spec, determinism, versioning, parity with sklearn, data checks.

Made-With-ML style: tests of the data contract (names, widths, value ranges) and
of the model-input code (bit-identical round trips, no fit on held-out data,
robustness on hostile input). Small synthetic emails only, no corpus, no network.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from sklearn.feature_extraction.text import TfidfVectorizer
from spamops_features import handcrafted, pipeline
from spamops_features.handcrafted import HANDCRAFTED_NAMES, prepare
from spamops_features.mail import MailParseError, ParsedEmail, parse_email
from spamops_features.pipeline import (
    EXTRA_NAMES,
    N_EMAIL_FEATURES,
    N_TFIDF,
    REPUTATION_DEFAULTS,
    REPUTATION_NAMES,
    FeaturePipeline,
    FeatureSpecMismatchError,
    TfidfParams,
    check_features,
    meta_tokens,
)

# ------------------------------------------------------------ synthetic mail
HAM_WORDS: tuple[str, ...] = (
    "meeting", "notes", "project", "review", "kernel", "release", "patch", "build", "server",
    "schedule", "agenda", "lunch", "report", "budget", "draft", "minutes", "team", "deadline",
    "python", "debian", "package", "mirror", "thanks", "regards", "question", "answer", "bug",
    "fix", "commit", "branch", "merge",
)  # fmt: skip
SPAM_WORDS: tuple[str, ...] = (
    "free", "money", "prize", "winner", "click", "offer", "cash", "viagra", "mortgage",
    "refinance", "cheap", "discount", "guaranteed", "income", "investment", "lottery", "claim",
    "urgent", "bonus", "casino", "pills",
)  # fmt: skip


def make_raw(
    i: int,
    *,
    spam: bool,
    extra: str = "",
    domain: str | None = None,
    html: bool = False,
) -> bytes:
    """A plausible RFC 822 message; deterministic in ``i``."""
    rng = random.Random(i)
    words = SPAM_WORDS if spam else HAM_WORDS
    body = " ".join(rng.choice(words) for _ in range(rng.randint(15, 60)))
    subject = " ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))
    if spam:
        subject = subject.upper() + "!!!"
        body += f" http://offers{i}.example.biz/claim"
    sender = domain or ("freemail-offers.biz" if spam else "lists.example.org")
    headers = (
        f"From: user{i}@{sender}\r\n"
        f"To: someone{i}@example.net\r\n"
        f"Subject: {subject}\r\n"
        f"Date: Tue, {1 + i % 28:d} Aug 2002 {i % 24:02d}:03:07 +0000\r\n"
        f"Message-ID: <m{i}@{sender}>\r\n"
    )
    if html:
        headers += "MIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n"
        body = f"<html><body><p>{body} {extra}</p><a href='http://x.example/'>go</a></body></html>"
    else:
        body = f"{body} {extra}"
    return (headers + "\r\n" + body + "\r\n").encode()


def corpus(n: int = 40) -> list[ParsedEmail]:
    """``n`` parsed emails, half spam, some HTML."""
    return [parse_email(make_raw(i, spam=i % 2 == 0, html=i % 5 == 0)) for i in range(n)]


@pytest.fixture(scope="module")
def emails() -> list[ParsedEmail]:
    return corpus(40)


@pytest.fixture(scope="module")
def fitted(emails: list[ParsedEmail]) -> FeaturePipeline:
    return FeaturePipeline.fit(emails, LABELS)


LABELS = np.array([int(i % 2 == 0) for i in range(40)])  # corpus(): even = spam


def rebuild(fitted: FeaturePipeline, **changes: object) -> FeaturePipeline:
    """The same fitted data through the constructor (recomputes the spec)."""
    return replace(fitted, **changes)  # type: ignore[arg-type]


# ------------------------------------------------------------------ the spec
def test_spec_has_524_email_features_plus_reputation_and_the_linear_score(
    fitted: FeaturePipeline,
) -> None:
    spec = fitted.spec
    assert N_EMAIL_FEATURES == 524
    assert spec.n_tfidf == N_TFIDF == 500
    assert spec.n_handcrafted == len(HANDCRAFTED_NAMES) == 24
    assert spec.n_email_features == 524
    assert spec.n_reputation == 3
    assert spec.n_extra == 1
    assert spec.n_inputs == 528 == len(spec.names)
    assert len(set(spec.names)) == len(spec.names)
    assert spec.handcrafted_names == HANDCRAFTED_NAMES
    assert spec.reputation_names == REPUTATION_NAMES
    assert spec.extra_names == EXTRA_NAMES == ("text_linear_score",)
    assert all(name.startswith("tfidf:") for name in spec.tfidf_names)
    # The TF-IDF names follow the selected vocabulary terms, column by column.
    terms = fitted.terms()
    for column, index in enumerate(fitted.selected.tolist()):
        assert spec.names[column] == f"tfidf:{terms[index]}"


def test_terms_are_chosen_by_chi2_on_the_labels(emails: list[ParsedEmail]) -> None:
    # Few columns: the most discriminating terms win over the most frequent ones.
    small = TfidfParams(max_features=10)
    by_chi2 = FeaturePipeline.fit(emails, LABELS, small)
    by_frequency = FeaturePipeline.fit(emails, LABELS, replace(small, selection="frequency"))
    chosen = {n.removeprefix("tfidf:") for n in by_chi2.spec.tfidf_names}
    assert chosen != {n.removeprefix("tfidf:") for n in by_frequency.spec.tfidf_names}
    words = set(HAM_WORDS) | set(SPAM_WORDS) | {f"{a} {b}" for a in HAM_WORDS for b in HAM_WORDS}
    assert any(term in words or term.startswith("meta:") for term in chosen)
    # Without labels the fit cannot use chi²: frequency, and a zero linear model.
    unsupervised = FeaturePipeline.fit(emails, None, small)
    assert unsupervised.spec.tfidf_names == by_frequency.spec.tfidf_names
    assert not unsupervised.coef.any()


def test_the_linear_score_is_out_of_fold_for_training_rows(emails: list[ParsedEmail]) -> None:
    pipe = FeaturePipeline.fit(emails, LABELS)
    oof = pipe.train_linear_scores
    assert oof is not None and oof.shape == (len(emails),)
    served = pipe.transform(emails)[:, -1]
    # Not the score of the model fitted on every row (which has seen each row)...
    assert not np.allclose(oof, served)
    # ...but it still separates the classes on this easy synthetic mail.
    assert (oof[LABELS == 1].min() > oof[LABELS == 0].max()) or (
        np.mean((oof > 0) == (LABELS == 1)) > 0.9
    )
    # The trainer's override puts it in the last column, where finite.
    given = np.full(len(emails), np.nan, dtype=np.float32)
    given[:5] = oof[:5]
    x = pipe.transform(emails, linear_scores=given)
    assert np.array_equal(x[:5, -1], oof[:5])
    assert np.array_equal(x[5:, -1], served[5:])


def test_bounds_clip_every_input_to_its_training_range(
    fitted: FeaturePipeline, emails: list[ParsedEmail]
) -> None:
    rep = np.array([[i, 0.5, i * 2.0] for i in range(20)], dtype=np.float32)
    bounded = fitted.with_bounds(fitted.transform(emails[:20], rep))
    assert bounded.spec.version != fitted.spec.version
    far = np.array([[5, 0.5, 9_000.0]], dtype=np.float32)  # the wall-clock skew of issue 15
    unclipped = fitted.transform(emails[:1], far)
    assert bounded.out_of_range(unclipped) == {"rep_days_since_first_seen": 1}
    x = bounded.transform(emails[:1], far)
    assert x[0, fitted.spec.names.index("rep_days_since_first_seen")] == 38.0
    # TF-IDF columns stay l2-normalised weights in [0, 1].
    assert bounded.lower is not None and bounded.upper is not None
    assert bounded.upper[:N_TFIDF].tolist() == [1.0] * N_TFIDF
    assert (
        check_features(bounded.transform(emails, np.zeros((40, 3), np.float32)), bounded.spec) == []
    )


def test_spec_round_trips_through_dict(fitted: FeaturePipeline) -> None:
    spec = fitted.spec
    assert type(spec).from_dict(spec.to_dict()) == spec


def test_transform_shape_and_dtype(fitted: FeaturePipeline, emails: list[ParsedEmail]) -> None:
    x = fitted.transform(emails[:7])
    assert x.shape == (7, 528)
    assert x.dtype == np.float32
    # No reputation given: the unseen-domain defaults.
    assert np.array_equal(x[:, 524:527], np.broadcast_to(REPUTATION_DEFAULTS, (7, 3)))
    rep = np.array([[3, 0.25, 10.5]] * 7, dtype=np.float32)
    rep[2, 1] = np.nan  # non-finite -> default for that value
    y = fitted.transform(emails[:7], rep)
    assert np.array_equal(y[:, :524], x[:, :524])
    assert y[0, 524:527].tolist() == [3.0, 0.25, 10.5]
    assert np.array_equal(y[:, 527], x[:, 527])
    assert y[2, 525] == 0.5
    with pytest.raises(ValueError, match="reputation must be"):
        fitted.transform(emails[:7], rep[:3])


# ---------------------------------------------------------------- determinism
def test_save_load_is_bit_identical(
    fitted: FeaturePipeline, emails: list[ParsedEmail], tmp_path: Path
) -> None:
    one = emails[3:4]
    before = fitted.transform(one)
    fitted.save(tmp_path / "pipe")
    loaded = FeaturePipeline.load(tmp_path / "pipe")
    after = loaded.transform(one)
    assert before.dtype == after.dtype == np.float32
    assert before.tobytes() == after.tobytes()
    assert np.array_equal(before, after)
    assert loaded.spec == fitted.spec
    # Saving is data, not a pickle.
    assert sorted(p.name for p in (tmp_path / "pipe").iterdir()) == [
        "feature_pipeline.json",
        "features.npz",
    ]


def test_fit_is_deterministic(emails: list[ParsedEmail]) -> None:
    a, b = FeaturePipeline.fit(emails), FeaturePipeline.fit(emails)
    assert a.spec == b.spec
    assert a.vocabulary == b.vocabulary
    assert a.idf.tobytes() == b.idf.tobytes()
    assert a.coef.tobytes() == b.coef.tobytes()
    assert a.selected.tolist() == b.selected.tolist()


def test_tampered_idf_is_refused(fitted: FeaturePipeline, tmp_path: Path) -> None:
    fitted.save(tmp_path)
    with np.load(tmp_path / "features.npz") as stored:
        arrays = {name: stored[name].copy() for name in stored.files}
    arrays["idf"][0] += 1
    np.savez(tmp_path / "features.npz", **arrays)
    with pytest.raises(ValueError, match="sha256"):
        FeaturePipeline.load(tmp_path)


# ----------------------------------------------------------------- versioning
def test_version_changes_when_a_handcrafted_feature_changes(
    fitted: FeaturePipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fitted.save(tmp_path)
    original = handcrafted._count_urls
    # A "bug fix" in one feature function: every URL count on the probes moves by one.
    monkeypatch.setattr(handcrafted, "_count_urls", lambda text: original(text) + 1)
    changed = rebuild(fitted)
    assert changed.spec.version != fitted.spec.version
    assert changed.spec.code_version == fitted.spec.code_version  # only the probes moved
    with pytest.raises(FeatureSpecMismatchError):
        FeaturePipeline.load(tmp_path)
    # verify=False is the escape hatch (e.g. to inspect an old pipeline).
    assert FeaturePipeline.load(tmp_path, verify=False).vocabulary == fitted.vocabulary


def test_version_changes_with_the_code_version(
    fitted: FeaturePipeline, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fitted.save(tmp_path)
    monkeypatch.setattr(pipeline, "FEATURE_CODE_VERSION", "999.0.0")
    changed = rebuild(fitted)
    assert changed.spec.version.startswith("999.0.0+")
    assert changed.spec.version != fitted.spec.version
    with pytest.raises(FeatureSpecMismatchError):
        FeaturePipeline.load(tmp_path)


def test_version_changes_with_a_parameter(fitted: FeaturePipeline) -> None:
    params = TfidfParams(sublinear_tf=False)
    changed = rebuild(fitted, params=params)
    assert changed.spec.version != fitted.spec.version


def test_version_is_stable_without_changes(fitted: FeaturePipeline) -> None:
    again = rebuild(fitted)
    assert again.spec == fitted.spec


# ---------------------------------------------------------- parity with sklearn
def test_fast_tfidf_equals_sklearn(fitted: FeaturePipeline, emails: list[ParsedEmail]) -> None:
    # sklearn's own word analyzer and TF-IDF, configured like TfidfParams (plus the
    # meta tokens): an independent reference for the vocabulary, idf, the selected
    # columns and the linear score.
    params = fitted.params
    words = TfidfVectorizer(ngram_range=(1, params.ngram_max)).build_analyzer()

    def analyzer(email: ParsedEmail) -> list[str]:
        return [*words(pipeline._document(email, prepare(email).html_text)), *meta_tokens(email)]

    reference = TfidfVectorizer(
        analyzer=analyzer, sublinear_tf=True, min_df=params.min_df, dtype=np.float64
    ).fit(emails)
    assert reference.vocabulary_ == fitted.vocabulary
    np.testing.assert_allclose(fitted.idf, reference.idf_, rtol=1e-6)
    held = [parse_email(make_raw(1000 + i, spam=i % 2 == 1, extra="qwertyzz")) for i in range(8)]
    for batch in (emails, held):  # held-out text too: unknown terms are ignored
        full = reference.transform(batch).toarray()
        block = full[:, fitted.selected]
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        expected = np.divide(block, norms, out=np.zeros_like(block), where=norms > 0)
        got = fitted.transform(batch)
        np.testing.assert_allclose(got[:, : len(fitted.selected)], expected, atol=1e-6, rtol=0)
        score = full @ fitted.coef.astype(np.float64) + fitted.intercept
        np.testing.assert_allclose(got[:, -1], score, atol=1e-4, rtol=0)


# --------------------------------------------------------------- no data leak
def test_fit_sees_only_the_emails_passed(emails: list[ParsedEmail]) -> None:
    train = emails[:30]
    held_out = parse_email(make_raw(999, spam=False, extra="heldoutonlyterm zzyzx"))
    pipe = FeaturePipeline.fit(train, LABELS[:30])
    assert "heldoutonlyterm" not in pipe.vocabulary
    assert "zzyzx" not in pipe.vocabulary
    # Transforming held-out mail does not change the fitted state.
    vocab, idf = dict(pipe.vocabulary), pipe.idf.copy()
    pipe.transform([held_out])
    assert pipe.vocabulary == vocab
    assert pipe.idf.tobytes() == idf.tobytes()
    # A term in two training emails (min_df) is in the vocabulary (the test is not vacuous).
    with_term = FeaturePipeline.fit([*train, held_out, held_out])
    assert "heldoutonlyterm" in with_term.vocabulary


def test_tiny_corpus_pads_the_vocabulary() -> None:
    one = parse_email(make_raw(1, spam=False))
    pipe = FeaturePipeline.fit([one, one])  # min_df=2: the terms of both copies
    assert 0 < len(pipe.vocabulary) < N_TFIDF
    assert pipe.spec.n_inputs == 528
    assert len(set(pipe.spec.names)) == 528
    assert sum(n.startswith("tfidf:<unused-") for n in pipe.spec.names) == N_TFIDF - len(
        pipe.vocabulary
    )
    assert FeaturePipeline.fit([one]).spec.n_inputs == 528  # an empty vocabulary too


def test_fit_refuses_no_emails() -> None:
    with pytest.raises(ValueError, match="no emails"):
        FeaturePipeline.fit([])


# ---------------------------------------------------------------- data checks
def test_check_features_passes_on_real_looking_mail(
    fitted: FeaturePipeline, emails: list[ParsedEmail]
) -> None:
    rep = np.array([[i, (1 + i % 3) / (2 + i), 0.5 * i] for i in range(len(emails))], np.float32)
    x = fitted.transform(emails, rep)
    assert check_features(x, fitted.spec) == []


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        ("rep_spam_rate", 1.5, "rep_spam_rate outside"),
        ("html_ratio", -0.1, "html_ratio"),
        ("url_count", -3.0, "negative values"),
        ("date_hour", 24.0, "date_hour outside"),
        ("tfidf", 7.0, "l2-normalised"),
        ("body_length", np.inf, "non-finite"),
    ],
)
def test_check_features_finds_a_planted_violation(
    fitted: FeaturePipeline, emails: list[ParsedEmail], column: str, value: float, message: str
) -> None:
    x = fitted.transform(emails[:5])
    j = 0 if column == "tfidf" else fitted.spec.names.index(column)
    x[2, j] = value
    problems = check_features(x, fitted.spec)
    assert any(message in p for p in problems), problems


def test_check_features_shape_and_dtype(fitted: FeaturePipeline, emails: list[ParsedEmail]) -> None:
    x = fitted.transform(emails[:3])
    assert check_features(x[:, :524], fitted.spec)[0].startswith("shape")
    assert any("dtype" in p for p in check_features(x.astype(np.float64), fitted.spec))


# ----------------------------------------------------------------- robustness
def test_garbage_is_refused_by_the_parser_not_the_pipeline() -> None:
    rng = random.Random(7)
    garbage = bytes(rng.randrange(256) for _ in range(4096))
    with pytest.raises(MailParseError):
        parse_email(garbage)
    with pytest.raises(MailParseError):
        parse_email(b"")


def test_transform_survives_hostile_input(fitted: FeaturePipeline) -> None:
    rng = random.Random(11)
    binary_body = bytes(rng.randrange(256) for _ in range(20_000))
    raws = [
        # Headers, then binary junk declared as text in an unknown charset.
        b"From: x@junk.example\r\nSubject: \xff\xfe\x00\r\n"
        b"Content-Type: text/plain; charset=x-unknown-42\r\n\r\n" + binary_body,
        # Empty body and no useful header.
        b"Subject: \r\n\r\n",
        b"From: a@b.example\r\n\r\n",
        # Text without headers.
        b"just some words, no headers at all\n",
        # Huge: 8 MB of words, long runs of word characters and unclosed tags.
        b"From: big@huge.example\r\nSubject: big\r\nContent-Type: text/html\r\n\r\n"
        + b"<p>free money " * 200_000
        + b"A" * 2_000_000
        + b"<a href='http://a.example/'" * 50_000,
        # Broken MIME: a boundary that never appears, a bad base64 payload.
        b"From: m@mime.example\r\nContent-Type: multipart/mixed; boundary=zz\r\n\r\n"
        b"--nope\r\nContent-Transfer-Encoding: base64\r\n\r\n!!!notbase64!!!\r\n",
    ]
    parsed = [parse_email(raw) for raw in raws]
    x = fitted.transform(parsed)
    assert x.shape == (len(raws), 528)
    assert np.isfinite(x).all()
    assert check_features(x, fitted.spec) == []
    # And an empty batch.
    assert fitted.transform([]).shape == (0, 528)


# ------------------------------------------------- fast regexes == the originals
# The handcrafted regexes are spelt for speed (handcrafted.py); these are the
# readable originals they must match exactly, substring for substring.
_ORIGINAL_URL = r"(?:https?://|www\.)[^\s<>\"'()]+"
_ORIGINAL_IP_URL = r"https?://(?:[^\s/@<>\"']*@)?\d{1,3}(?:\.\d{1,3}){3}(?![\w.])"
_ORIGINAL_EMAIL = r"(?<=[\w.+\-])@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+"
# pipeline.meta_tokens' linked-site pattern (one group: the host).
_ORIGINAL_URL_HOST = r"(?:https?://|www\.)(?:[^\s/@<>\"']{0,64}@)?([a-z0-9\-]+(?:\.[a-z0-9\-]+)+)"


def _tricky_texts(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    pieces = [
        "http://", "HTTPS://", "hTtP\u017f://", "www.", "WwW.", "ww.", "http:/", "://", "@", "a@",
        ".@", "+@", "-@", "é@", "x@y", "@b.c", "10.0.0.1", "256.1.2.3", "1.2.3.4.5", "u:p@",
        "example.com", " ", "\n", "<", ">", '"', "'", "(", ")", "/", ".", "-", "h", "w", "s",
        "\u017f", "K", "1", "A", "ü", "\u212a", "\u0130", "\u0131", "a.b", "x-y.org",
    ]  # fmt: skip
    return ["".join(rng.choice(pieces) for _ in range(rng.randint(0, 40))) for _ in range(count)]


@pytest.mark.parametrize(
    ("fast", "original", "flags"),
    [
        (handcrafted._URL, _ORIGINAL_URL, re.IGNORECASE),
        (handcrafted._IP_URL, _ORIGINAL_IP_URL, re.IGNORECASE),
        (handcrafted._EMAIL, _ORIGINAL_EMAIL, 0),
        (pipeline._URL_HOST, _ORIGINAL_URL_HOST, re.IGNORECASE),
    ],
)
def test_fast_regexes_match_the_originals(fast: re.Pattern[str], original: str, flags: int) -> None:
    slow = re.compile(original, flags)
    for text in _tricky_texts(5000, seed=len(original)):
        assert fast.findall(text) == slow.findall(text), text


def test_counts_use_guards_that_never_hide_a_match() -> None:
    for text in _tricky_texts(5000, seed=3):
        assert handcrafted._count_urls(text) == len(re.findall(_ORIGINAL_URL, text, re.I))
        assert handcrafted._count_ip_urls(text) == len(re.findall(_ORIGINAL_IP_URL, text, re.I))
        assert handcrafted._count_emails(text) == len(re.findall(_ORIGINAL_EMAIL, text))


def test_ascii_case_counts() -> None:
    for text in ["", "abcXYZ", "ÄÖÜ äöü AZaz", "\udcff broken surrogate A", "\u017fK\u212a"]:
        upper = sum(1 for c in text if "A" <= c <= "Z")
        lower = sum(1 for c in text if "a" <= c <= "z")
        assert handcrafted._ascii_case_counts(text) == (upper, upper + lower)


def test_tokenizer_without_word_boundaries_finds_sklearns_tokens() -> None:
    analyzer = pipeline._Analyzer(pipeline.TfidfParams(stop_words=None))
    sklearn_tokens = re.compile(pipeline.SKLEARN_TOKEN_PATTERN)
    rng = random.Random(7)
    pieces = ["a", "ab", "Éé", "_", "1", "x2", " ", "-", "'", "\u0301", "ß", "\u212a", "日本", "."]
    for _ in range(5000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 30)))
        assert analyzer.token.findall(text) == sklearn_tokens.findall(text), text
