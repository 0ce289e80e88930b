"""The one feature pipeline: the trainer fits it, the inference service loads it.

Model inputs, in this order (``FeatureSpec.names``):

* 500 TF-IDF terms, **chosen by how well they tell spam from ham** (chi² on the
  TRAINING split only) out of the training vocabulary: word unigrams and bigrams
  (sublinear tf, smooth idf) over the subject, the text part and the visible
  text of the HTML part, plus a few *meta tokens* (``meta_tokens``): the sender
  domain and its top-level domain, the mailer, the content type and the hosts
  linked from the body. The columns are l2-normalised over the 500 terms. None
  of the corpus's label-leaking headers (``X-Spam-*``, the collectors'
  ``Received`` chains) is read.
* the 24 handcrafted metadata and structural features of ``handcrafted.py``
  (500 + 24 = the design's 524 email features);
* the sender-domain reputation from Feast (``REPUTATION_NAMES``), passed in by
  the caller (``reputation.py``);
* ``EXTRA_NAMES``: ``text_linear_score``, the margin of an l2 logistic regression
  over the **whole** training vocabulary (the same tokens, l2-normalised over
  all terms). The trainer gives each TRAINING row the out-of-fold score of a
  model fitted on the other folds (``FeaturePipeline.train_linear_scores``), so
  no row ever sees a model that was fitted on it; every other row, and serving,
  get the score of the model fitted on all training rows, which is saved with
  the pipeline.

A fit without labels (or with one class) cannot select or fit a linear model: it
falls back to the most frequent terms and a zero linear model, with the same
input width.

``bounds`` (set by the trainer from the training matrix, ``with_bounds``) clip
every input at transform time to the range it had in training: a value a tree
never saw cannot take a path it never learned (and ``out_of_range`` counts the
values that needed it).

A saved pipeline is data, not a pickle: ``feature_pipeline.json`` (spec,
parameters, the vocabulary as a list of terms) and ``features.npz`` (float32
idf and linear weights, the selected term indices, the bounds; read with
``allow_pickle=False``). Loading rebuilds the same arrays, so a loaded pipeline
gives bit-identical output.

``FeatureSpec.version`` hashes ``FEATURE_CODE_VERSION``, the parameters, the
input names, a digest of the fitted arrays and a fingerprint of the pipeline's
output on built-in probe emails; any change to the parser or a feature function
that changes an output on the probes changes the version, and
``FeaturePipeline.load`` refuses a saved pipeline whose version this code no
longer reproduces (train/serve skew).
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from itertools import chain, islice, repeat
from pathlib import Path
from typing import Any, Final

import numpy as np
from scipy import sparse

from spamops_features.handcrafted import HANDCRAFTED_NAMES, handcrafted_matrix, prepare
from spamops_features.mail import ParsedEmail, parse_email

__all__ = [
    "EXTRA_NAMES",
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
    "meta_tokens",
]

# Bump when a feature's meaning changes in a way the probes might not show.
FEATURE_CODE_VERSION: Final = "2.0.0"
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
LINEAR_SCORE: Final = "text_linear_score"
EXTRA_NAMES: Final[tuple[str, ...]] = (LINEAR_SCORE,)

PIPELINE_FILE: Final = "feature_pipeline.json"
ARRAYS_FILE: Final = "features.npz"
_FORMAT: Final = "spamops.feature-pipeline"
_FORMAT_VERSION: Final = 2
META_PREFIX: Final = "meta:"  # ":" never occurs in a word token: no collision
SKLEARN_TOKEN_PATTERN: Final = r"(?u)\b\w\w+\b"  # noqa: S105 - TfidfVectorizer's default


class FeatureSpecMismatchError(RuntimeError):
    """A saved pipeline's spec version is not what this feature code computes."""


@dataclass(frozen=True)
class TfidfParams:
    """Text settings; all of them are part of the spec version."""

    max_features: int = N_TFIDF  # TF-IDF columns (selected terms)
    ngram_max: int = 2
    # No stop-word list: chi² keeps the function words that discriminate ("you", "your").
    stop_words: str | None = None
    sublinear_tf: bool = True
    token_pattern: str = SKLEARN_TOKEN_PATTERN
    # Each document is cut here: bounds the cost of a huge message on the hot path.
    max_doc_chars: int = 100_000
    # Vocabulary: terms in at least min_df training emails, at most max_vocabulary
    # of them (the most frequent), 0 = no cap.
    min_df: int = 2
    max_vocabulary: int = 50_000
    selection: str = "chi2"  # "chi2" | "frequency" (the 1.x behaviour)
    meta_tokens: bool = True
    # Logistic regression behind text_linear_score (C = inverse l2 strength). 30 against
    # 10: mean F1 0.9905 vs 0.9892 over 5 splits at a 0.5 threshold, 0.9901 vs 0.9879
    # with the out-of-fold threshold (issue 15; fixed XGBoost, benchmarks/train_quality).
    linear_c: float = 30.0
    linear_folds: int = 5


@dataclass(frozen=True)
class FeatureSpec:
    """The model inputs, by name and in order, and the version of the code producing them."""

    names: tuple[str, ...]
    n_tfidf: int
    n_handcrafted: int
    n_reputation: int
    code_version: str
    version: str
    n_extra: int = 0

    @property
    def n_email_features(self) -> int:
        """TF-IDF + handcrafted columns (524)."""
        return self.n_tfidf + self.n_handcrafted

    @property
    def n_inputs(self) -> int:
        """All model inputs, reputation and extra inputs included (528)."""
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
        """Names of the reputation columns (after the email features)."""
        return self.names[self.n_email_features : self.n_email_features + self.n_reputation]

    @property
    def extra_names(self) -> tuple[str, ...]:
        """Names of the extra inputs (last): the linear text score."""
        return self.names[self.n_email_features + self.n_reputation :]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "names": list(self.names),
            "n_tfidf": self.n_tfidf,
            "n_handcrafted": self.n_handcrafted,
            "n_reputation": self.n_reputation,
            "n_extra": self.n_extra,
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
            n_extra=int(data.get("n_extra", 0)),
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
    """Tokens exactly as sklearn's word analyzer makes them (lowercase, stop words, n-grams)."""

    def __init__(self, params: TfidfParams) -> None:
        # sklearn's default pattern, spelt without the word boundaries: findall
        # scans left to right and \w\w+ is greedy, so a match can only start at a
        # word's start and ends at its end (same tokens, ~30% faster).
        pattern = params.token_pattern
        self.token = re.compile(r"\w\w+" if pattern == SKLEARN_TOKEN_PATTERN else pattern)
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


# What ``(?:https?://|www\.)(?:[^\s/@<>"']{0,64}@)?([a-z0-9\-]+(?:\.[a-z0-9\-]+)+)`` with
# re.I matches, spelt out so the engine scans for its first character instead of
# trying the pattern at every position (2.5x faster); the class lists the four
# non-ASCII letters re.I folds into [a-z] (tests check it against the re.I form).
_HOST_CHAR: Final = r"[a-zA-Z0-9\-\u0130\u0131\u017f\u212a]"
_URL_HOST: Final = re.compile(
    r"[hHwW](?:(?<=[hH])[tT][tT][pP][sS\u017f]?://|(?<=[wW])[wW][wW]\.)"
    rf"(?:[^\s/@<>\"']{{0,64}}@)?({_HOST_CHAR}+(?:\.{_HOST_CHAR}+)+)"
)
_WORD: Final = re.compile(r"[a-z]+")
_MAX_HOSTS: Final = 20
_MAX_META_CHARS: Final = 200_000


def _site(host: str) -> str:
    """The last two labels of a host name (``www.example.org`` -> ``example.org``)."""
    labels = host.lower().strip(".").split(".")
    return ".".join(labels[-2:])


def meta_tokens(email: ParsedEmail) -> list[str]:
    """Structural tokens of one email: sender domain and TLD, mailer, content type, linked sites.

    Read from the sender address, ``X-Mailer``/``User-Agent``, ``Content-Type``
    and the URLs of the body; never from the corpus's own spam-filter headers.
    """
    domain = email.sender_domain.lower()
    mailer = email.headers.x_mailer or email.headers.user_agent or ""
    words = _WORD.findall(mailer.lower()[:200])
    tokens = [
        f"{META_PREFIX}from={domain or '-'}",
        f"{META_PREFIX}tld={domain.rsplit('.', 1)[-1] if '.' in domain else '-'}",
        f"{META_PREFIX}mailer={words[0] if words else '-'}",
        f"{META_PREFIX}type={email.headers.content_type.lower()[:60]}",
    ]
    sites: list[str] = []
    for match in _URL_HOST.finditer(
        f"{email.text[:_MAX_META_CHARS]} {email.html[:_MAX_META_CHARS]}"
    ):
        site = _site(match.group(1))
        if site not in sites:
            sites.append(site)
            if len(sites) >= _MAX_HOSTS:
                break
    tokens += [f"{META_PREFIX}site={s}" for s in sites]
    return tokens


def _pad_name(k: int) -> str:
    # "<" never occurs in a token, so this cannot collide with a real term.
    return f"{TFIDF_PREFIX}<unused-{k}>"


# ------------------------------------------------------------------- pipeline
@dataclass
class FeaturePipeline:
    """Fitted features: ``fit`` on training emails, ``transform`` anywhere, saved as data."""

    params: TfidfParams
    vocabulary: dict[str, int]  # term -> index into idf / coef (the whole training vocabulary)
    idf: np.ndarray  # float32 [V]
    selected: np.ndarray  # int64 [<= max_features]: vocabulary index of each TF-IDF column
    coef: np.ndarray  # float32 [V]: the linear text model's weights
    intercept: float = 0.0
    lower: np.ndarray | None = None  # float32 [n_inputs]: clip bounds (None = no clipping)
    upper: np.ndarray | None = None
    spec: FeatureSpec = field(init=False)
    # Out-of-fold linear scores of the emails ``fit`` saw, in their order (not saved).
    train_linear_scores: np.ndarray | None = field(default=None, init=False, repr=False)
    _analyzer: _Analyzer = field(init=False, repr=False)
    _column: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        n, v = self.params.max_features, len(self.vocabulary)
        if self.idf.shape != (v,) or self.idf.dtype != np.float32:
            raise ValueError(f"idf must be float32[{v}], got {self.idf.dtype}{self.idf.shape}")
        if self.coef.shape != (v,) or self.coef.dtype != np.float32:
            raise ValueError(f"coef must be float32[{v}], got {self.coef.dtype}{self.coef.shape}")
        if sorted(self.vocabulary.values()) != list(range(v)):
            raise ValueError("vocabulary indices must be 0..len-1")
        self.selected = np.asarray(self.selected, dtype=np.int64)
        k = len(self.selected)
        if (
            k > n
            or len(set(self.selected.tolist())) != k
            or (k and not 0 <= self.selected.min() <= self.selected.max() < v)
        ):
            raise ValueError(f"selected must be <= {n} distinct vocabulary indices")
        self.intercept = float(np.float32(self.intercept))
        self._analyzer = _Analyzer(self.params)
        self._column = np.full(v, -1, dtype=np.int64)
        self._column[self.selected] = np.arange(k)
        self.spec = self._make_spec()

    # ------------------------------------------------------------------ fit
    @classmethod
    def fit(
        cls,
        emails: Sequence[ParsedEmail],
        labels: Sequence[int] | np.ndarray | None = None,
        params: TfidfParams | None = None,
        *,
        seed: int = 0,
    ) -> FeaturePipeline:
        """Fit on these emails (pass the TRAINING split only) and their labels (1 = spam).

        Vocabulary and idf; the ``max_features`` terms of highest chi² (or the most
        frequent, ``selection="frequency"`` or without two classes of labels); the
        linear text model on all of them, and ``train_linear_scores``: each email's
        score from a model fitted on the other ``linear_folds`` folds.
        Fewer than ``max_features`` distinct terms leaves the remaining columns as
        always-zero padding, so the input width is fixed.
        """
        params = params or TfidfParams()
        if not emails:
            raise ValueError("cannot fit the feature pipeline on no emails")
        analyzer = _Analyzer(params)
        grams = [_grams(analyzer, params, e, prepare(e).html_text) for e in emails]
        vocabulary = _fit_vocabulary(grams, params)
        v = len(vocabulary)
        counts = _counts(grams, vocabulary)
        df = np.bincount(counts.indices, minlength=v).astype(np.float64)
        n = len(emails)
        idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
        x = _weights(counts, idf, params.sublinear_tf)
        y = None if labels is None else np.asarray(labels, dtype=np.int64)
        if y is not None and y.shape != (n,):
            raise ValueError(f"{n} emails but {y.shape} labels")
        supervised = y is not None and len(np.unique(y)) == 2
        if supervised and params.selection == "chi2":
            from sklearn.feature_selection import chi2

            score = np.nan_to_num(chi2(x, y)[0], nan=0.0)
        elif params.selection in ("chi2", "frequency"):
            score = np.asarray(counts.sum(axis=0)).ravel().astype(np.float64)
        else:
            raise ValueError(f"unknown selection {params.selection!r}")
        # Highest score first; ties by vocabulary (alphabetical) order: deterministic.
        selected = np.lexsort((np.arange(v), -score))[: params.max_features]
        coef = np.zeros(v, dtype=np.float32)
        intercept = 0.0
        oof = np.zeros(n, dtype=np.float32)
        if supervised and v:
            assert y is not None
            coef, intercept = _fit_linear(x, y, params.linear_c)
            oof = _out_of_fold(x, y, params, seed)
        pipeline = cls(
            params=params,
            vocabulary=vocabulary,
            idf=idf,
            selected=selected,
            coef=coef,
            intercept=intercept,
        )
        pipeline.train_linear_scores = oof
        return pipeline

    def with_bounds(self, x_train: np.ndarray) -> FeaturePipeline:
        """This pipeline, clipping every input to its range in ``x_train`` (the training rows).

        TF-IDF columns keep [0, 1]; every other input is clipped to [min, max] of
        the training rows. For trees this changes no prediction (a split never
        lies outside the training range) but it keeps a skewed or corrupted input
        (a wall-clock ``rep_days_since_first_seen``, a huge count) in the range
        the model knows, and ``out_of_range`` counts what needed clipping.
        """
        if x_train.ndim != 2 or x_train.shape[1] != self.spec.n_inputs or not len(x_train):
            raise ValueError(f"bounds need a non-empty [n, {self.spec.n_inputs}] matrix")
        lower = x_train.min(axis=0).astype(np.float32)
        upper = x_train.max(axis=0).astype(np.float32)
        # TF-IDF values are l2-normalised weights: [0, 1] by construction, and a
        # clipped weight would break the row norm (check_features).
        lower[: self.spec.n_tfidf], upper[: self.spec.n_tfidf] = 0.0, 1.0
        bounded = replace(self, lower=lower, upper=upper)
        bounded.train_linear_scores = self.train_linear_scores
        return bounded

    # ------------------------------------------------------------ transform
    def transform(
        self,
        emails: Sequence[ParsedEmail],
        reputation: np.ndarray | None = None,
        *,
        linear_scores: np.ndarray | None = None,
    ) -> np.ndarray:
        """float32 ``[n, spec.n_inputs]``: TF-IDF, handcrafted, reputation, extra columns.

        ``reputation`` is ``[n, len(REPUTATION_NAMES)]`` (``reputation.py``);
        None, or a non-finite value, means the unseen-domain defaults.
        ``linear_scores`` (training only) replaces the linear text score where it
        is finite: the trainer passes the out-of-fold scores of the training rows.
        Every column is then clipped to ``bounds`` when they are set.
        """
        n = len(emails)
        spec = self.spec
        out = np.empty((n, spec.n_inputs), dtype=np.float32)
        prepared = [prepare(e) for e in emails]
        grams = [
            _grams(self._analyzer, self.params, e, p.html_text)
            for e, p in zip(emails, prepared, strict=True)
        ]
        block, score = self._text(grams)
        out[:, : spec.n_tfidf] = block
        out[:, spec.n_tfidf : spec.n_email_features] = handcrafted_matrix(emails, prepared)
        rep_end = spec.n_email_features + spec.n_reputation
        out[:, spec.n_email_features : rep_end] = _reputation_block(reputation, n)
        if linear_scores is not None:
            given = np.asarray(linear_scores, dtype=np.float32)
            if given.shape != (n,):
                raise ValueError(f"linear_scores must be [{n}], got {given.shape}")
            score = np.where(np.isfinite(given), given, score)
        out[:, rep_end] = score
        if self.lower is not None and self.upper is not None:
            np.clip(out, self.lower, self.upper, out=out)
        return out

    def out_of_range(self, x: np.ndarray) -> dict[str, int]:
        """Per input, how many values of an *unclipped* matrix lie outside the training range."""
        if self.lower is None or self.upper is None:
            return {}
        outside = ((x < self.lower) | (x > self.upper)).sum(axis=0)
        return {self.spec.names[j]: int(c) for j, c in enumerate(outside) if c}

    def _text(self, grams: Sequence[list[str]]) -> tuple[np.ndarray, np.ndarray]:
        """The ``[n, max_features]`` TF-IDF block and the ``[n]`` linear score."""
        width = self.params.max_features
        n = len(grams)
        x = _weights(_counts(grams, self.vocabulary), self.idf, self.params.sublinear_tf)
        score = np.asarray(x @ self.coef, dtype=np.float32).ravel() + np.float32(self.intercept)
        block = np.zeros((n, width), dtype=np.float32)
        columns = self._column[x.indices]
        keep = columns >= 0
        rows = np.repeat(np.arange(n), np.diff(x.indptr))
        block[rows[keep], columns[keep]] = x.data[keep]
        norms = np.sqrt(np.einsum("ij,ij->i", block, block, dtype=np.float32))
        np.divide(block, norms[:, None], out=block, where=norms[:, None] > 0)
        return block, score.astype(np.float32)

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
    def terms(self) -> list[str]:
        """The vocabulary in index order."""
        out = [""] * len(self.vocabulary)
        for term, index in self.vocabulary.items():
            out[index] = term
        return out

    def _names(self) -> tuple[str, ...]:
        terms = self.terms()
        selected = [TFIDF_PREFIX + terms[i] for i in self.selected.tolist()]
        pads = [_pad_name(k) for k in range(self.params.max_features - len(selected))]
        return (*selected, *pads, *HANDCRAFTED_NAMES, *REPUTATION_NAMES, *EXTRA_NAMES)

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {
            "idf": self.idf,
            "coef": self.coef,
            "intercept": np.array([self.intercept], dtype=np.float32),
            "selected": self.selected,
        }
        if self.lower is not None and self.upper is not None:
            arrays["lower"], arrays["upper"] = self.lower, self.upper
        return arrays

    def _digest(self) -> str:
        digest = hashlib.sha256()
        for name, array in sorted(self._arrays().items()):
            digest.update(name.encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def _make_spec(self) -> FeatureSpec:
        names = self._names()
        if len(set(names)) != len(names):
            raise ValueError("feature names are not unique")
        n_inputs = len(names)
        for bound in (self.lower, self.upper):
            if bound is not None and (bound.shape != (n_inputs,) or bound.dtype != np.float32):
                raise ValueError(f"bounds must be float32[{n_inputs}]")
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
            n_extra=len(EXTRA_NAMES),
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
                "data": self._digest(),
                "probe": hashlib.sha256(rounded.tobytes()).hexdigest(),
            },
            sort_keys=True,
        )
        digest = hashlib.sha256(payload.encode()).hexdigest()[:16]
        return replace(self.spec, version=f"{FEATURE_CODE_VERSION}+{digest}")

    # -------------------------------------------------------------- save/load
    def save(self, directory: str | Path) -> Path:
        """Write ``feature_pipeline.json`` and ``features.npz`` into ``directory`` (created)."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        with (path / ARRAYS_FILE).open("wb") as handle:
            np.savez_compressed(handle, **self._arrays())  # type: ignore[arg-type]
        document = {
            "format": _FORMAT,
            "format_version": _FORMAT_VERSION,
            "spec": self.spec.to_dict(),
            "params": asdict(self.params),
            "terms": self.terms(),
            "arrays_file": ARRAYS_FILE,
            "arrays_sha256": self._digest(),
            "saved_at": datetime.now(UTC).isoformat(),
        }
        (path / PIPELINE_FILE).write_text(
            json.dumps(document, ensure_ascii=False, separators=(",", ":")), encoding="utf-8"
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
            raise ValueError(
                f"{path / PIPELINE_FILE} is not a spamops feature pipeline v{_FORMAT_VERSION}"
            )
        with np.load(path / str(document["arrays_file"]), allow_pickle=False) as stored:
            arrays = {name: np.array(stored[name]) for name in stored.files}
        terms = [str(t) for t in document["terms"]]
        pipeline = cls(
            params=TfidfParams(**document["params"]),
            vocabulary={t: i for i, t in enumerate(terms)},
            idf=arrays["idf"].astype(np.float32),
            selected=arrays["selected"].astype(np.int64),
            coef=arrays["coef"].astype(np.float32),
            intercept=float(arrays["intercept"][0]),
            lower=arrays["lower"].astype(np.float32) if "lower" in arrays else None,
            upper=arrays["upper"].astype(np.float32) if "upper" in arrays else None,
        )
        if pipeline._digest() != document["arrays_sha256"]:
            raise ValueError(f"{path / ARRAYS_FILE} does not match its recorded sha256")
        saved = FeatureSpec.from_dict(document["spec"])
        if verify and pipeline.spec != saved:
            raise FeatureSpecMismatchError(
                f"saved feature spec {saved.version} (code {saved.code_version}) is not "
                f"reproduced by this code: {pipeline.spec.version}"
            )
        return pipeline


# ------------------------------------------------------------------- text math
def _grams(
    analyzer: _Analyzer, params: TfidfParams, email: ParsedEmail, html_text: str
) -> list[str]:
    grams = list(analyzer.ngrams(analyzer.unigrams(_document(email, html_text))))
    if params.meta_tokens:
        grams += meta_tokens(email)
    return grams


def _fit_vocabulary(grams: Sequence[list[str]], params: TfidfParams) -> dict[str, int]:
    """Terms in at least ``min_df`` documents (the ``max_vocabulary`` most frequent), sorted."""
    document_frequency = Counter(chain.from_iterable(map(set, grams)))
    kept = [t for t, d in document_frequency.items() if d >= params.min_df]
    if params.max_vocabulary and len(kept) > params.max_vocabulary:
        total = Counter(chain.from_iterable(grams))
        kept.sort(key=lambda t: (-total[t], t))
        kept = kept[: params.max_vocabulary]
    return {t: i for i, t in enumerate(sorted(kept))}


def _counts(grams: Sequence[list[str]], vocabulary: Mapping[str, int]) -> sparse.csr_matrix:
    """Term counts ``[n, V]`` (CSR, sorted indices); unknown terms are ignored."""
    lengths = np.fromiter(map(len, grams), dtype=np.int64, count=len(grams))
    flat = np.fromiter(
        map(vocabulary.get, chain.from_iterable(grams), repeat(-1)),
        dtype=np.int64,
        count=int(lengths.sum()),
    )
    rows = np.repeat(np.arange(len(grams), dtype=np.int64), lengths)
    known = flat >= 0
    matrix = sparse.csr_matrix(
        (np.ones(int(known.sum()), dtype=np.float32), (rows[known], flat[known])),
        shape=(len(grams), len(vocabulary)),
    )
    matrix.sum_duplicates()
    return matrix


def _weights(counts: sparse.csr_matrix, idf: np.ndarray, sublinear: bool) -> sparse.csr_matrix:
    """TF-IDF with rows l2-normalised over the whole vocabulary (float32 CSR)."""
    x = counts.copy()
    if sublinear:
        np.log(x.data, out=x.data)
        x.data += np.float32(1.0)
    x.data *= idf[x.indices]
    lengths = np.diff(x.indptr)
    rows = np.repeat(np.arange(x.shape[0]), lengths)
    squares = np.bincount(rows, weights=x.data.astype(np.float64) ** 2, minlength=x.shape[0])
    norms = np.sqrt(squares).astype(np.float32)
    x.data /= np.repeat(np.where(norms > 0, norms, np.float32(1.0)), lengths)
    return x


def _fit_linear(x: sparse.csr_matrix, y: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=c, solver="liblinear", max_iter=1000)
    model.fit(x, y)
    return model.coef_.ravel().astype(np.float32), float(model.intercept_[0])


def _out_of_fold(x: sparse.csr_matrix, y: np.ndarray, params: TfidfParams, seed: int) -> np.ndarray:
    """Each row's linear score from a model fitted on the other folds (stratified)."""
    from sklearn.model_selection import StratifiedKFold

    folds = min(params.linear_folds, int(np.bincount(y).min()))
    oof = np.zeros(len(y), dtype=np.float32)
    if folds < 2:
        return oof
    splitter = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for fit_rows, score_rows in splitter.split(np.zeros(len(y)), y):
        if len(np.unique(y[fit_rows])) < 2:
            continue
        coef, intercept = _fit_linear(x[fit_rows], y[fit_rows], params.linear_c)
        oof[score_rows] = np.asarray(x[score_rows] @ coef).ravel() + np.float32(intercept)
    return oof


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
    # -1 encodes a missing Date; the linear score is a margin of either sign.
    signed = {"date_hour", "date_weekday", *spec.extra_names}
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
