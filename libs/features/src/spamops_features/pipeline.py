"""The one feature pipeline: the trainer fits it, the inference service loads it.

Model inputs, in this order (``FeatureSpec.names``):

* 500 TF-IDF terms (unigrams and bigrams, English stop words removed, sublinear
  tf, l2-normalised rows) over the subject, the text part and the visible text
  of the HTML part, fitted on the TRAINING split only;
* the 24 handcrafted metadata and structural features of ``handcrafted.py``;
* the sender-domain reputation from Feast (``REPUTATION_NAMES``), passed in by
  the caller (``reputation.py`` computes it point-in-time for training and from
  Redis for serving).

scikit-learn's ``TfidfVectorizer`` only *fits* (vocabulary and idf); the
transform is reimplemented here with a per-email dictionary lookup and numpy,
about 4x faster than ``TfidfVectorizer.transform`` on mail and the same numbers
(to float32 rounding; ``tests/unit/test_features.py`` compares them). A saved
pipeline is data, not a pickle: ``feature_pipeline.json`` (spec, parameters,
vocabulary term -> index) and ``idf.npz`` (float32 idf weights, read with
``allow_pickle=False``). Loading rebuilds the same arrays, so a loaded pipeline
gives bit-identical output.

``FeatureSpec.version`` hashes ``FEATURE_CODE_VERSION``, the parameters, the
input names and a fingerprint of the pipeline's output on built-in probe
emails; any change to the parser or a feature function that changes an output
on the probes changes the version, and ``FeaturePipeline.load`` refuses a saved
pipeline whose version this code no longer reproduces (train/serve skew).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Any, Final

import numpy as np

from spamops_features.handcrafted import HANDCRAFTED_NAMES, handcrafted_matrix, prepare
from spamops_features.mail import ParsedEmail, parse_email

__all__ = [
    "FEATURE_CODE_VERSION",
    "N_EMAIL_FEATURES",
    "N_TFIDF",
    "REPUTATION_DEFAULTS",
    "REPUTATION_NAMES",
    "FeaturePipeline",
    "FeatureSpec",
    "FeatureSpecMismatchError",
    "TfidfParams",
    "check_features",
]

# Bump when a feature's meaning changes in a way the probes might not show.
FEATURE_CODE_VERSION: Final = "1.0.0"
N_TFIDF: Final = 500
N_EMAIL_FEATURES: Final = N_TFIDF + len(HANDCRAFTED_NAMES)  # 524
TFIDF_PREFIX: Final = "tfidf:"
REPUTATION_NAMES: Final[tuple[str, ...]] = (
    "rep_messages_seen",
    "rep_spam_rate",
    "rep_days_since_first_seen",
)
# What an unseen sender domain gets: nothing seen, the (1+0)/(2+0) prior, new.
REPUTATION_DEFAULTS: Final = np.array([0.0, 0.5, 0.0], dtype=np.float32)

PIPELINE_FILE: Final = "feature_pipeline.json"
IDF_FILE: Final = "idf.npz"
_FORMAT: Final = "spamops.feature-pipeline"
_FORMAT_VERSION: Final = 1


class FeatureSpecMismatchError(RuntimeError):
    """A saved pipeline's spec version is not what this feature code computes."""


@dataclass(frozen=True)
class TfidfParams:
    """TF-IDF settings; all of them are part of the spec version."""

    max_features: int = N_TFIDF
    ngram_max: int = 2
    # English stop words removed: keeping them scored 0.984 vs 0.981 with a fixed XGBoost
    # but 0.970 vs 0.973 (and more false positives) through the tuned training.
    stop_words: str | None = "english"
    sublinear_tf: bool = True
    token_pattern: str = r"(?u)\b\w\w+\b"  # noqa: S105 - a regex, not a secret
    # Each document is cut here: bounds the cost of a huge message on the hot path.
    max_doc_chars: int = 100_000


@dataclass(frozen=True)
class FeatureSpec:
    """The model inputs, by name and in order, and the version of the code producing them."""

    names: tuple[str, ...]
    n_tfidf: int
    n_handcrafted: int
    n_reputation: int
    code_version: str
    version: str

    @property
    def n_email_features(self) -> int:
        """TF-IDF + handcrafted columns (524)."""
        return self.n_tfidf + self.n_handcrafted

    @property
    def n_inputs(self) -> int:
        """All model inputs, reputation included (527)."""
        return len(self.names)

    @property
    def tfidf_names(self) -> tuple[str, ...]:
        """Names of the TF-IDF columns (``tfidf:<term>``)."""
        return self.names[: self.n_tfidf]

    @property
    def handcrafted_names(self) -> tuple[str, ...]:
        """Names of the handcrafted columns."""
        return self.names[self.n_tfidf : self.n_email_features]

    @property
    def reputation_names(self) -> tuple[str, ...]:
        """Names of the reputation columns (last)."""
        return self.names[self.n_email_features :]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "names": list(self.names),
            "n_tfidf": self.n_tfidf,
            "n_handcrafted": self.n_handcrafted,
            "n_reputation": self.n_reputation,
            "code_version": self.code_version,
            "version": self.version,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        """Inverse of ``to_dict``."""
        return cls(
            names=tuple(str(n) for n in data["names"]),
            n_tfidf=int(data["n_tfidf"]),
            n_handcrafted=int(data["n_handcrafted"]),
            n_reputation=int(data["n_reputation"]),
            code_version=str(data["code_version"]),
            version=str(data["version"]),
        )


# ------------------------------------------------------------------- analyzer
def _stop_words(name: str | None) -> frozenset[str]:
    if name is None:
        return frozenset()
    if name != "english":
        raise ValueError(f"unsupported stop word list {name!r}")
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


class _Analyzer:
    """Tokens exactly as sklearn's word analyzer makes them (lowercase, stop words, n-grams).

    One implementation serves the fit (as ``TfidfVectorizer(analyzer=...)``) and
    the fast transform, so they cannot disagree.
    """

    def __init__(self, params: TfidfParams) -> None:
        self.token = re.compile(params.token_pattern)
        self.stop = _stop_words(params.stop_words)
        self.ngram_max = params.ngram_max
        self.max_chars = params.max_doc_chars

    def unigrams(self, doc: str) -> list[str]:
        tokens = self.token.findall(doc[: self.max_chars].lower())
        stop = self.stop
        return [t for t in tokens if t not in stop] if stop else tokens

    def ngrams(self, unigrams: list[str]) -> Iterator[str]:
        """Unigrams, then bigrams, ... of the stop-word-free tokens (sklearn's order)."""
        grams: list[Iterator[str]] = [iter(unigrams)]
        for n in range(2, self.ngram_max + 1):
            shifted = [islice(unigrams, k, None) for k in range(n)]
            grams.append(map(" ".join, zip(*shifted, strict=False)))
        return chain.from_iterable(grams)

    def __call__(self, doc: str) -> list[str]:
        return list(self.ngrams(self.unigrams(doc)))


def _document(email: ParsedEmail, html_text: str) -> str:
    """What TF-IDF reads: subject, text part and visible HTML text."""
    return f"{email.subject}\n{email.text}\n{html_text}"


def tfidf_document(email: ParsedEmail) -> str:
    """The text TF-IDF reads from one email (also what text baselines should read)."""
    return _document(email, prepare(email).html_text)


def _pad_name(k: int) -> str:
    # "<" never occurs in a token, so this cannot collide with a real term.
    return f"{TFIDF_PREFIX}<unused-{k}>"


# ------------------------------------------------------------------- pipeline
@dataclass
class FeaturePipeline:
    """Fitted features: ``fit`` on training emails, ``transform`` anywhere, saved as data."""

    params: TfidfParams
    vocabulary: dict[str, int]  # term -> TF-IDF column
    idf: np.ndarray  # float32 [N_TFIDF]; 0 for padding columns
    spec: FeatureSpec = field(init=False)
    _analyzer: _Analyzer = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n = self.params.max_features
        if self.idf.shape != (n,) or self.idf.dtype != np.float32:
            raise ValueError(f"idf must be float32[{n}], got {self.idf.dtype}{self.idf.shape}")
        if sorted(self.vocabulary.values()) != list(range(len(self.vocabulary))):
            raise ValueError("vocabulary indices must be 0..len-1")
        if len(self.vocabulary) > n:
            raise ValueError(f"vocabulary has {len(self.vocabulary)} terms > {n}")
        self._analyzer = _Analyzer(self.params)
        self.spec = self._make_spec()

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(
        cls, emails: Sequence[ParsedEmail], params: TfidfParams | None = None
    ) -> FeaturePipeline:
        """Fit TF-IDF (vocabulary, idf) on these emails: pass the TRAINING split only.

        Fewer than ``max_features`` distinct terms (a tiny corpus) leaves the
        remaining columns as always-zero padding, so the input width is fixed.
        """
        from sklearn.feature_extraction.text import TfidfVectorizer

        params = params or TfidfParams()
        if not emails:
            raise ValueError("cannot fit the feature pipeline on no emails")
        analyzer = _Analyzer(params)
        docs = [_document(e, prepare(e).html_text) for e in emails]
        vectorizer = TfidfVectorizer(
            analyzer=analyzer,
            lowercase=False,  # the analyzer lowercases
            token_pattern=None,
            max_features=params.max_features,
            sublinear_tf=params.sublinear_tf,
            dtype=np.float32,
        )
        idf = np.zeros(params.max_features, dtype=np.float32)
        vocabulary: dict[str, int] = {}
        try:
            vectorizer.fit(docs)
        except ValueError as exc:  # every document empty or only stop words
            if "empty vocabulary" not in str(exc):
                raise
        else:
            vocabulary = {str(t): int(i) for t, i in vectorizer.vocabulary_.items()}
            idf[: len(vocabulary)] = vectorizer.idf_.astype(np.float32)
        return cls(params=params, vocabulary=vocabulary, idf=idf)

    # ------------------------------------------------------------ transform
    def transform(
        self, emails: Sequence[ParsedEmail], reputation: np.ndarray | None = None
    ) -> np.ndarray:
        """float32 ``[n, spec.n_inputs]``: TF-IDF, handcrafted, reputation columns.

        ``reputation`` is ``[n, len(REPUTATION_NAMES)]`` (``reputation.py``);
        None, or a non-finite value, means the unseen-domain defaults.
        """
        n = len(emails)
        out = np.empty((n, self.spec.n_inputs), dtype=np.float32)
        prepared = [prepare(e) for e in emails]
        docs = [_document(e, p.html_text) for e, p in zip(emails, prepared, strict=True)]
        out[:, : self.spec.n_tfidf] = self._tfidf(docs)
        out[:, self.spec.n_tfidf : self.spec.n_email_features] = handcrafted_matrix(
            emails, prepared
        )
        out[:, self.spec.n_email_features :] = _reputation_block(reputation, n)
        return out

    def _tfidf(self, docs: Sequence[str]) -> np.ndarray:
        """Dense float32 ``[n, max_features]`` TF-IDF, computed like sklearn's transform."""
        width = self.params.max_features
        counts = np.zeros((len(docs), width + 1), dtype=np.float32)  # last column: unknown terms
        lookup = self.vocabulary.get
        analyzer = self._analyzer
        for row, doc in enumerate(docs):
            grams = analyzer.ngrams(analyzer.unigrams(doc))
            ids = np.fromiter(map(lookup, grams, repeat(width)), dtype=np.intp)
            if ids.size:
                counts[row] = np.bincount(ids, minlength=width + 1)
        tf = counts[:, :width]
        present = tf > 0
        if self.params.sublinear_tf:
            np.log(tf, out=tf, where=present)
            np.add(tf, np.float32(1.0), out=tf, where=present)
        tf *= self.idf
        norms = np.sqrt(np.einsum("ij,ij->i", tf, tf, dtype=np.float32))
        np.divide(tf, norms[:, None], out=tf, where=norms[:, None] > 0)
        return tf

    def handcrafted(self, email: ParsedEmail) -> dict[str, float]:
        """The handcrafted feature values of one email (for verdicts and drift monitoring).

        The values are float32-rounded exactly like the model input columns.
        """
        row = handcrafted_matrix([email], [prepare(email)])[0]
        return dict(zip(HANDCRAFTED_NAMES, map(float, row), strict=True))

    def handcrafted_from_matrix(self, x: np.ndarray) -> list[dict[str, float]]:
        """The handcrafted values of rows already transformed (no recomputation)."""
        block = x[:, self.spec.n_tfidf : self.spec.n_email_features]
        names = self.spec.handcrafted_names
        return [dict(zip(names, map(float, row), strict=True)) for row in block]

    # ------------------------------------------------------------- versioning
    def _names(self) -> tuple[str, ...]:
        terms = [""] * len(self.vocabulary)
        for term, index in self.vocabulary.items():
            terms[index] = TFIDF_PREFIX + term
        pads = [_pad_name(k) for k in range(self.params.max_features - len(terms))]
        return (*terms, *pads, *HANDCRAFTED_NAMES, *REPUTATION_NAMES)

    def _make_spec(self) -> FeatureSpec:
        names = self._names()
        if len(set(names)) != len(names):
            raise ValueError("feature names are not unique")
        probes = _probe_emails()
        reputation = np.array(
            [[i, (i % 3 + 1) / (i + 2), 1.5 * i] for i in range(len(probes))], dtype=np.float32
        )
        # Without the spec yet: transform needs spec widths, so use a provisional one.
        self.spec = FeatureSpec(
            names=names,
            n_tfidf=self.params.max_features,
            n_handcrafted=len(HANDCRAFTED_NAMES),
            n_reputation=len(REPUTATION_NAMES),
            code_version=FEATURE_CODE_VERSION,
            version="",
        )
        output = self.transform(probes, reputation)
        # Rounded so that last-bit float differences between machines do not
        # change the version; any real change in a feature moves a value by more.
        rounded = np.round(output.astype(np.float64), 5) + 0.0
        payload = json.dumps(
            {
                "code": FEATURE_CODE_VERSION,
                "params": asdict(self.params),
                "names": names,
                "probe": hashlib.sha256(rounded.tobytes()).hexdigest(),
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
        return FeatureSpec(
            names=names,
            n_tfidf=self.params.max_features,
            n_handcrafted=len(HANDCRAFTED_NAMES),
            n_reputation=len(REPUTATION_NAMES),
            code_version=FEATURE_CODE_VERSION,
            version=f"{FEATURE_CODE_VERSION}+{digest}",
        )

    # -------------------------------------------------------------- save/load
    def save(self, directory: str | Path) -> Path:
        """Write ``feature_pipeline.json`` and ``idf.npz`` into ``directory`` (created)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        idf_path = path / IDF_FILE
        with idf_path.open("wb") as handle:
            np.savez(handle, idf=self.idf)
        document = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "spec": self.spec.to_dict(),
            "params": asdict(self.params),
            "vocabulary": self.vocabulary,
            "idf_file": IDF_FILE,
            "idf_sha256": hashlib.sha256(self.idf.tobytes()).hexdigest(),
            "saved_at": datetime.now(UTC).isoformat(),
        }
        (path / PIPELINE_FILE).write_text(
            json.dumps(document, ensure_ascii=False, indent=1), encoding="utf-8"
        )
        return path

    @classmethod
    def load(cls, directory: str | Path, *, verify: bool = True) -> FeaturePipeline:
        """Rebuild a saved pipeline; its output is bit-identical to the one saved.

        With ``verify`` (the default) raises ``FeatureSpecMismatchError`` when this
        feature code no longer reproduces the saved spec version, i.e. it would
        compute different inputs than the model was trained on.
        """
        path = Path(directory)
        document = json.loads((path / PIPELINE_FILE).read_text(encoding="utf-8"))
        if document.get("format") != _FORMAT or document.get("format_version") != _FORMAT_VERSION:
            raise ValueError(f"{path / PIPELINE_FILE} is not a spamops feature pipeline v1")
        with np.load(path / str(document["idf_file"]), allow_pickle=False) as arrays:
            idf = np.ascontiguousarray(arrays["idf"], dtype=np.float32)
        if hashlib.sha256(idf.tobytes()).hexdigest() != document["idf_sha256"]:
            raise ValueError(f"{path / IDF_FILE} does not match its recorded sha256")
        pipeline = cls(
            params=TfidfParams(**document["params"]),
            vocabulary={str(t): int(i) for t, i in document["vocabulary"].items()},
            idf=idf,
        )
        saved = FeatureSpec.from_dict(document["spec"])
        if verify and pipeline.spec != saved:
            raise FeatureSpecMismatchError(
                f"saved feature spec {saved.version} (code {saved.code_version}) is not "
                f"reproduced by this code: {pipeline.spec.version}"
            )
        return pipeline


def _reputation_block(reputation: np.ndarray | None, n: int) -> np.ndarray:
    width = len(REPUTATION_NAMES)
    if reputation is None:
        return np.broadcast_to(REPUTATION_DEFAULTS, (n, width))
    block = np.asarray(reputation, dtype=np.float32)
    if block.shape != (n, width):
        raise ValueError(f"reputation must be [{n}, {width}], got {block.shape}")
    return np.where(np.isfinite(block), block, REPUTATION_DEFAULTS)


# --------------------------------------------------------------- data checks
def check_features(x: np.ndarray, spec: FeatureSpec) -> list[str]:
    """Expectations on a feature matrix; returns the violations (empty when all hold).

    Shape and dtype, finiteness, TF-IDF rows of l2 norm 0 or 1, non-negative
    counts, ratios in [0, 1], hour/weekday ranges, spam rate in [0, 1].
    """
    problems: list[str] = []
    if x.ndim != 2 or x.shape[1] != spec.n_inputs:
        return [f"shape {x.shape} is not [n, {spec.n_inputs}]"]
    if x.dtype != np.float32:
        problems.append(f"dtype {x.dtype} is not float32")
    if not np.isfinite(x).all():
        problems.append("non-finite values")
        return problems
    column = {name: i for i, name in enumerate(spec.names)}
    norms = np.linalg.norm(x[:, : spec.n_tfidf].astype(np.float64), axis=1)
    if not np.all((norms < 1e-6) | (np.abs(norms - 1) < 1e-4)):
        problems.append("TF-IDF rows not l2-normalised")
    signed = {"date_hour", "date_weekday"}  # -1 encodes a missing Date
    negative = [
        name
        for j, name in enumerate(spec.names)
        if name not in signed and bool((x[:, j] < 0).any())
    ]
    if negative:
        problems.append(f"negative values in {negative}")
    bounds = {
        "html_ratio": (0, 1),
        "uppercase_ratio": (0, 1),
        "subject_uppercase_ratio": (0, 1),
        "date_hour": (-1, 23),
        "date_weekday": (-1, 6),
        "rep_spam_rate": (0, 1),
    }
    for name, (low, high) in bounds.items():
        if name in column:
            values = x[:, column[name]]
            if values.size and (values.min() < low or values.max() > high):
                problems.append(f"{name} outside [{low}, {high}]")
    return problems


# --------------------------------------------------------------------- probes
# Fixed messages whose outputs fingerprint the feature code: together they make
# every handcrafted feature take a non-trivial value.
_PROBES: Final[tuple[bytes, ...]] = (
    b"From: Alice Example <alice@example.org>\r\n"
    b"To: bob@example.net, carol@example.net\r\n"
    b"Cc: dave@example.net\r\n"
    b"Subject: Re: meeting notes for the project review\r\n"
    b"Date: Tue, 20 Aug 2002 14:03:07 +0200\r\n"
    b"Received: from a.example.org by b.example.net; Tue, 20 Aug 2002 14:03:09 +0200\r\n"
    b"Received: from c.example.org by a.example.org; Tue, 20 Aug 2002 14:03:08 +0200\r\n"
    b"X-Mailer: Probe Mail 1.0\r\n"
    b"Message-ID: <probe-1@example.org>\r\n"
    b"\r\n"
    b"Hi Bob,\r\n\r\nthe notes of the project review are at http://www.example.org/notes.\r\n"
    b"Please send comments to alice@example.org before Friday. Thanks!\r\n",
    b'From: "WIN BIG" <winner12345@freemail-offers.biz>\r\n'
    b"To: undisclosed-recipients:;\r\n"
    b"Reply-To: claims@prize-office.example\r\n"
    b"Subject: FREE MONEY!!! Claim your $1,000,000 prize now\r\n"
    b"Date: Sun, 1 Sep 2002 03:17:00 -0500\r\n"
    b"MIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="outer"\r\n'
    b"\r\n"
    b"--outer\r\n"
    b'Content-Type: multipart/alternative; boundary="inner"\r\n'
    b"\r\n"
    b"--inner\r\n"
    b"Content-Type: text/plain\r\n\r\n"
    b"CLICK HERE NOW to claim your FREE prize: http://192.168.10.20/claim\r\n"
    b"--inner\r\n"
    b"Content-Type: text/html\r\n\r\n"
    b"<html><head><style>p {color: red}</style></head><body>"
    b"<p>CLICK <b>HERE</b> NOW &amp; claim your <i>FREE</i> prize!!!</p>"
    b'<a href="http://192.168.10.20/claim">www.yourbank.com</a> '
    b'<a href="http://prize-office.example/unsubscribe">unsubscribe</a>'
    b"<!-- hidden words --><script>var x = 1;</script></body></html>\r\n"
    b"--inner--\r\n"
    b"--outer\r\n"
    b'Content-Type: application/octet-stream; name="claim.exe"\r\n'
    b"Content-Transfer-Encoding: base64\r\n"
    b'Content-Disposition: attachment; filename="claim.exe"\r\n\r\n'
    b"TVqQAAMAAAAEAAAA//8AALgAAAAAAAAAQAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\r\n"
    b"--outer--\r\n",
    b"From: someone@yahoo.com\r\nSubject: \r\n\r\n",
    b"From: list-bot@lists.example.com\r\n"
    b"To: subscribers@lists.example.com\r\n"
    b"Subject: [digest] weekly summary: 30% off hosting, kernel release notes\r\n"
    b"Date: Mon, 7 Oct 2002 23:59:59 +0000\r\n"
    b"Content-Type: text/html; charset=utf-8\r\n"
    b"\r\n"
    b"<p>Kernel 2.4.20 release notes: see <a href='https://kernel.example.org/'>"
    b"https://kernel.example.org/</a> and write to maintainers@kernel.example.org.</p>",
)


def _probe_emails() -> list[ParsedEmail]:
    """The probe emails, parsed each time: the parser is part of the fingerprint."""
    return [parse_email(raw) for raw in _PROBES]
