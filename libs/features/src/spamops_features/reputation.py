"""Sender-domain reputation through Feast: one implementation for training and serving.

The three model inputs ``REPUTATION_NAMES`` (``pipeline.py``) describe what was
known about an email's sender domain when it is classified (see below):

* ``rep_messages_seen``: labelled messages of the domain known so far;
* ``rep_spam_rate``: ``(1 + spam) / (2 + seen)``, a Laplace prior, so an unseen
  domain gets 0.5 exactly like ``REPUTATION_DEFAULTS``;
* ``rep_days_since_first_seen``: days from the domain's first labelled message
  to the email (computed at request time from ``rep_first_seen_ts``), >= 0.

Feast objects (``feature_definitions``): the entity ``sender_domain``; a
``FileSource`` over a parquet file of reputation *states*; a ``PushSource``
``sender_reputation_push`` wrapping it; the feature view ``sender_reputation``.
Each offline row is the cumulative state of one domain right after a label
became known: (sender_domain, event_timestamp = label time, rep_messages_seen,
rep_spam_count, rep_spam_rate, rep_first_seen_ts). A point-in-time join at an
email's Date therefore returns the state of its domain as of that Date.

Training and serving see the same thing (issue 15). Serving reads a domain's
*latest* state from Redis: every label known so far, whatever the email's Date
(the online store keeps one state per domain, so it cannot answer "as of a past
Date"). Training therefore uses those semantics too, instead of a point-in-time
join that serving could never reproduce for a replayed or back-filled mail:

* only the TRAIN split of the snapshot produces label events (the event file
  that ``materialize`` copies into Redis): validation and test labels never
  inform any feature, so the held-out metrics are honest;
* validation and test rows get their domain's latest state over all train
  labels, exactly what the inference service reads after the training;
* each TRAIN row gets the latest state over the train labels of the *other*
  ``TRAIN_FOLDS`` folds (by a hash of its message key): no row sees its own
  label (a leave-one-out count would let the model read the label back);
* ``rep_days_since_first_seen`` is counted at ``reputation_times``: min(now,
  the email's Date) on both paths, so a replayed mail of 2002 is not 8,000 days
  old at serving; no plausible Date (missing, before ``MIN_PLAUSIBLE_DATE``)
  counts 0 days;
* train emails without a Date produce no event (they cannot be placed in
  time); emails without a sender domain ("") get ``REPUTATION_DEFAULTS``.

``lookup`` still answers point-in-time questions through Feast's join for
analysis. ``historical`` rewrites the store's event file from the snapshot, so
training features are a pure function of the snapshot (feedback reaches
training through the next snapshot, docs/DESIGN.md §1, not through this file).
The feature pipeline additionally clips every input to its training range
(``FeaturePipeline.with_bounds``).

Serving (``ReputationStore.online``) reads Redis through
``get_online_features``; an unseen domain gets the defaults, and a Redis error
gives the defaults for the whole batch plus ``degraded=True`` and a logged
warning (a verdict without reputation beats no verdict). ``push_label`` turns an
EmailLabeled into the next state of the domain and pushes it online and
offline. ``materialize`` copies the latest states of the event file (e.g. the
training snapshot's) into Redis.

Each process keeps its own repo directory (registry and event file, written by
``write_feature_repo`` + ``apply_repo``); Redis is the state they share.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final, NamedTuple
from urllib.parse import urlparse

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from feast import Entity, FeatureStore, FeatureView, Field, FileSource, PushSource, ValueType
from feast.data_source import PushMode
from feast.types import Float32, Float64

from spamops_features.pipeline import REPUTATION_DEFAULTS, REPUTATION_NAMES

__all__ = [
    "ENTITY_NAME",
    "EVENTS_FILE",
    "FEATURE_VIEW_NAME",
    "LABEL_DELAY",
    "PROJECT",
    "PUSH_SOURCE_NAME",
    "STATE_COLUMNS",
    "OnlineReputation",
    "ReputationState",
    "ReputationStore",
    "apply_repo",
    "feature_definitions",
    "redis_connection_string",
    "reputation_rows",
    "train_label_events",
    "write_feature_repo",
]

logger = logging.getLogger(__name__)

PROJECT: Final = "spamops"
ENTITY_NAME: Final = "sender_domain"
FEATURE_VIEW_NAME: Final = "sender_reputation"
PUSH_SOURCE_NAME: Final = "sender_reputation_push"
FILE_SOURCE_NAME: Final = "sender_reputation_events"
EVENTS_FILE: Final = "sender_reputation_events.parquet"
TIMESTAMP_COLUMN: Final = "event_timestamp"
# A label is known this long after its email's Date (see the module docstring).
LABEL_DELAY: Final = timedelta(seconds=1)
# States never expire: the corpus is from 2002, and a ttl is checked against "now"
# by some online paths. Feast reads a ttl of 0 as "lives forever".
FEATURE_TTL: Final = timedelta(0)
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECONDS_PER_DAY: Final = 86_400.0
# Redis socket timeouts (seconds): a hung Redis must not stall the verdict path.
DEFAULT_REDIS_TIMEOUT: Final = 0.5
# After an online failure, skip Redis this long (seconds) instead of paying a
# timeout on every batch while it is down.
DEFAULT_COOLDOWN: Final = 5.0

# Columns of the event file, in file order (a push must carry exactly these).
STATE_COLUMNS: Final[tuple[str, ...]] = (
    ENTITY_NAME,
    TIMESTAMP_COLUMN,
    "rep_messages_seen",
    "rep_spam_count",
    "rep_spam_rate",
    "rep_first_seen_ts",  # unix seconds of the domain's first labelled message
)
_FEATURES: Final[tuple[str, ...]] = STATE_COLUMNS[2:]
_FEATURE_REFS: Final = [f"{FEATURE_VIEW_NAME}:{name}" for name in _FEATURES]
_EVENTS_SCHEMA: Final = pa.schema(
    [
        pa.field(ENTITY_NAME, pa.string()),
        pa.field(TIMESTAMP_COLUMN, pa.timestamp("us", tz="UTC")),
        pa.field("rep_messages_seen", pa.float32()),
        pa.field("rep_spam_count", pa.float32()),
        pa.field("rep_spam_rate", pa.float32()),
        # float64: float32 seconds since 1970 would be off by up to a minute.
        pa.field("rep_first_seen_ts", pa.float64()),
    ]
)
_LABELS: Final = frozenset({"spam", "ham"})
# Dates before this are not believed (a zeroed or forged Date header): no time.
MIN_PLAUSIBLE_DATE: Final = datetime(1990, 1, 1, tzinfo=UTC)
# Training rows see the labels of the other folds only (see ``historical``).
TRAIN_FOLDS: Final = 5


# ------------------------------------------------------------------ feature repo
def redis_connection_string(url: str, timeout: float = DEFAULT_REDIS_TIMEOUT) -> str:
    """Feast's Redis ``connection_string`` (``host:port,db=N,...``) for a ``redis://`` URL.

    A plain ``host:port`` is accepted as well. Socket timeouts are added, and
    redis-py's default retries are turned off (``retry=null``: its exponential
    backoff made a stopped Redis cost about 8 s per call), so that a Redis that
    is down or hangs fails fast instead of stalling the caller.
    """
    if "://" in url:
        parsed = urlparse(url)
        host, port = parsed.hostname or "127.0.0.1", parsed.port or 6379
        db = parsed.path.strip("/") or "0"
        options = [f"{host}:{port}", f"db={int(db)}"]
        if parsed.password:
            options.append(f"password={parsed.password}")
        if parsed.scheme == "rediss":
            options.append("ssl=true")
    else:
        options = [url]
    options += [f"socket_timeout={timeout}", f"socket_connect_timeout={timeout}", "retry=null"]
    return ",".join(options)


def write_feature_repo(
    directory: str | Path,
    redis: str | None,
    *,
    redis_timeout: float = DEFAULT_REDIS_TIMEOUT,
) -> FeatureStore:
    """Write ``feature_store.yaml`` into ``directory`` (created) and open the store.

    ``redis`` is a ``redis://host:port/db`` URL or ``host:port``; None uses a
    SQLite online store in the directory instead (offline-only use, tests).
    The registry and the event file live in ``directory``. Call ``apply_repo``
    on the result before using it (idempotent).
    """
    path = Path(directory).resolve()
    path.mkdir(parents=True, exist_ok=True)
    online: dict[str, Any]
    if redis is None:
        online = {"type": "sqlite", "path": str(path / "online_store.db")}
    else:
        online = {
            "type": "redis",
            "connection_string": redis_connection_string(redis, redis_timeout),
        }
    config = {
        "project": PROJECT,
        "provider": "local",
        "registry": {
            "registry_type": "file",
            "path": str(path / "registry.db"),
            "cache_ttl_seconds": 60,
        },
        "offline_store": {"type": "file"},
        "online_store": online,
        # Feast 0.67 defaults to 3 and warns below it.
        "entity_key_serialization_version": 3,
    }
    # JSON is valid YAML: no YAML writer needed.
    (path / "feature_store.yaml").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return FeatureStore(repo_path=str(path))


def _events_path(store: FeatureStore) -> Path:
    return Path(store.repo_path) / EVENTS_FILE


def feature_definitions(events_path: str | Path) -> list[Any]:
    """The Feast objects: entity, file source, push source, feature view (in apply order)."""
    entity = Entity(
        name=ENTITY_NAME,
        join_keys=[ENTITY_NAME],
        value_type=ValueType.STRING,
        description="The domain of the From address, lower case.",
    )
    events = FileSource(
        name=FILE_SOURCE_NAME,
        path=str(Path(events_path).resolve()),
        timestamp_field=TIMESTAMP_COLUMN,
        description="Cumulative reputation states, one row per label event.",
    )
    push = PushSource(name=PUSH_SOURCE_NAME, batch_source=events)
    view = FeatureView(
        name=FEATURE_VIEW_NAME,
        entities=[entity],
        ttl=FEATURE_TTL,
        schema=[
            Field(name="rep_messages_seen", dtype=Float32),
            Field(name="rep_spam_count", dtype=Float32),
            Field(name="rep_spam_rate", dtype=Float32),
            Field(name="rep_first_seen_ts", dtype=Float64),
        ],
        source=push,
        online=True,
        description="Sender-domain reputation as known at each label event.",
    )
    return [entity, events, push, view]


def _write_events(path: Path, rows: pd.DataFrame) -> None:
    """Replace the event file atomically (a reader never sees half a file)."""
    table = pa.Table.from_pandas(rows.loc[:, list(STATE_COLUMNS)], preserve_index=False)
    table = table.cast(_EVENTS_SCHEMA)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=".events-", suffix=".parquet")
    os.close(handle)
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def apply_repo(store: FeatureStore) -> None:
    """Register the definitions (``store.apply``) and create an empty event file if none.

    Called by the services at start-up (and by tests); idempotent.
    """
    path = _events_path(store)
    if not path.exists():
        # The file store's push appends to the existing file: it must exist.
        _write_events(path, _empty_rows())
    store.apply(feature_definitions(path))


# ---------------------------------------------------------------- offline rows
def _empty_rows() -> pd.DataFrame:
    rows: pd.DataFrame = _EVENTS_SCHEMA.empty_table().to_pandas()
    return rows


def _normalize_domains(values: pd.Series) -> pd.Series:
    return values.fillna("").astype(str).str.strip().str.lower()


def _normalize_domain_list(values: Sequence[str | None]) -> list[str]:
    """``_normalize_domains`` of a list, without pandas when every value is a str or None."""
    if all(v is None or type(v) is str for v in values):
        return ["" if v is None else v.strip().lower() for v in values]
    return list(_normalize_domains(pd.Series(list(values), dtype=object)).tolist())


def _utc(values: pd.Series) -> pd.Series:
    return pd.to_datetime(values, utc=True).astype("datetime64[us, UTC]")


def _spam_rate(spam: np.ndarray, seen: np.ndarray) -> np.ndarray:
    return ((1.0 + spam) / (2.0 + seen)).astype(np.float32)


def reputation_rows(labels: pd.DataFrame) -> pd.DataFrame:
    """Cumulative reputation states from label events: the offline rows of the feature view.

    ``labels`` has ``sender_domain``, ``date`` (the email's Date, UTC) and
    ``label`` (spam | ham). Rows without a Date or a domain are dropped (they
    cannot be placed in time / belong to no sender). Each remaining email's label
    becomes known at ``date + LABEL_DELAY``; the result has one row per
    (domain, label time) with the state after every label known by then:
    messages seen, spam count, ``(1 + spam) / (2 + seen)`` and the unix time of
    the domain's first labelled Date. Columns ``STATE_COLUMNS``, sorted by
    domain and time; deterministic for the same input in any order.
    """
    if not set(labels["label"].dropna().unique()) <= _LABELS:
        raise ValueError(f"labels must be spam|ham, got {sorted(labels['label'].unique())}")
    frame = pd.DataFrame(
        {
            ENTITY_NAME: _normalize_domains(labels["sender_domain"]),
            "date": _utc(labels["date"]),
            "spam": (labels["label"] == "spam").astype(np.int64),
        }
    )
    frame = frame[frame["date"].notna() & (frame[ENTITY_NAME] != "")]
    if frame.empty:
        return _empty_rows()
    # Per (domain, instant): how many labels, how many spam. Ties collapse into one
    # state, so their order in the input cannot matter.
    grouped = (
        frame.groupby([ENTITY_NAME, "date"], sort=True)["spam"].agg(["size", "sum"]).reset_index()
    )
    by_domain = grouped.groupby(ENTITY_NAME, sort=False)
    seen = by_domain["size"].cumsum().to_numpy(dtype=np.float64)
    spam = by_domain["sum"].cumsum().to_numpy(dtype=np.float64)
    first = by_domain["date"].transform("min")
    rows = pd.DataFrame(
        {
            ENTITY_NAME: grouped[ENTITY_NAME].astype(str),
            TIMESTAMP_COLUMN: grouped["date"] + LABEL_DELAY,
            "rep_messages_seen": seen.astype(np.float32),
            "rep_spam_count": spam.astype(np.float32),
            "rep_spam_rate": _spam_rate(spam, seen),
            "rep_first_seen_ts": _unix_seconds(first),
        }
    )
    return rows.reset_index(drop=True)


def _unix_seconds(values: pd.Series) -> np.ndarray:
    micros = values.astype("datetime64[us, UTC]").astype("int64").to_numpy()
    return np.asarray(micros, dtype=np.float64) / 1e6


def train_label_events(frame: pd.DataFrame) -> pd.DataFrame:
    """The label events of a snapshot frame: its TRAIN split only."""
    train = frame[frame["split"] == "train"]
    return train.loc[:, ["sender_domain", "date", "label"]]


def _features(
    seen: np.ndarray, rate: np.ndarray, first_seen_ts: np.ndarray, at_ts: np.ndarray
) -> np.ndarray:
    """``[n, 3]`` float32 in REPUTATION_NAMES order; NaN state (unseen) -> defaults.

    An unknown time (``at_ts`` NaN: no plausible Date) counts 0 days.
    """
    with np.errstate(invalid="ignore"):
        days = np.maximum((at_ts - first_seen_ts) / _SECONDS_PER_DAY, 0.0)
    days = np.where(np.isnan(at_ts), 0.0, days)
    out = np.column_stack([seen, rate, days]).astype(np.float32)
    unseen = ~np.isfinite(out).all(axis=1)
    out[unseen] = REPUTATION_DEFAULTS
    return out


def reputation_times(dates: Sequence[Any] | pd.Series, now: datetime) -> np.ndarray:
    """The instant each email's reputation is read at: ``min(now, its Date)``, unix seconds.

    A missing Date or one before ``MIN_PLAUSIBLE_DATE`` is no time at all (NaN:
    the email's domain state still applies, with 0 days since first seen). The
    trainer and the inference service both use this, so a replayed or
    back-filled mail's ``rep_days_since_first_seen`` is counted at its Date, not
    at the wall clock.
    """
    if not isinstance(dates, pd.Series) and all(map(_is_plain_date, dates)):
        return _plain_reputation_times(dates, _aware(now).timestamp())
    values = _utc(pd.Series(list(dates), dtype=object))
    seconds = _unix_seconds(values.fillna(_EPOCH))
    seconds = np.where(values.isna().to_numpy(), np.nan, seconds)
    with np.errstate(invalid="ignore"):
        seconds = np.where(seconds < MIN_PLAUSIBLE_DATE.timestamp(), np.nan, seconds)
    return np.asarray(np.minimum(seconds, _aware(now).timestamp()), dtype=np.float64)


_MICROSECOND: Final = timedelta(microseconds=1)
# pandas' nanosecond range, inside which both ways of computing agree (outside it pandas raises).
_PANDAS_YEARS: Final = range(1678, 2262)


def _is_plain_date(value: object) -> bool:
    return value is None or (type(value) is datetime and value.year in _PANDAS_YEARS)


def _plain_reputation_times(dates: Sequence[datetime | None], now_ts: float) -> np.ndarray:
    """``reputation_times`` of datetimes and Nones without pandas (serving: a batch at a time).

    The same arithmetic: whole microseconds since the epoch, as float64 / 1e6
    (tests check it against the pandas path); pandas' per-call overhead was a
    tenth of the inference service's CPU at 300 emails/s.
    """
    floor = MIN_PLAUSIBLE_DATE.timestamp()
    out = np.full(len(dates), np.nan)
    for i, value in enumerate(dates):
        if value is None:
            continue
        seconds = ((_aware(value) - _EPOCH) // _MICROSECOND) / 1e6
        if seconds >= floor:
            out[i] = min(seconds, now_ts)
    return out


def _latest_states(rows: pd.DataFrame) -> pd.DataFrame:
    """Each domain's last state of ``reputation_rows`` output (what Redis holds), by domain."""
    if rows.empty:
        return pd.DataFrame(columns=["rep_messages_seen", "rep_spam_rate", "rep_first_seen_ts"])
    last = rows.sort_values([ENTITY_NAME, TIMESTAMP_COLUMN]).groupby(ENTITY_NAME).tail(1)
    return last.set_index(ENTITY_NAME)[["rep_messages_seen", "rep_spam_rate", "rep_first_seen_ts"]]


def _state_features(states: pd.DataFrame, domains: pd.Series, at_ts: np.ndarray) -> np.ndarray:
    """Features of these domains from ``_latest_states`` at these times (``_features``)."""
    found = states.reindex(domains.where(domains != "", "\x00").to_numpy())
    return _features(
        found["rep_messages_seen"].to_numpy(dtype=np.float64),
        found["rep_spam_rate"].to_numpy(dtype=np.float64),
        found["rep_first_seen_ts"].to_numpy(dtype=np.float64),
        at_ts,
    )


def _fold_of(keys: pd.Series, folds: int, seed: int) -> np.ndarray:
    """A deterministic fold per message key (independent of row order)."""
    return np.array(
        [
            int.from_bytes(hashlib.sha256(f"{seed}:{k}".encode()).digest()[:8], "big") % folds
            for k in keys.astype(str)
        ],
        dtype=np.int64,
    )


# ---------------------------------------------------------------------- store
class OnlineReputation(NamedTuple):
    """``online`` result: ``values`` ``[n, 3]`` float32; ``degraded`` when Redis failed."""

    values: np.ndarray
    degraded: bool
    error: str | None = None


@dataclass(frozen=True)
class ReputationState:
    """The stored state of one domain (what ``push_label`` advances)."""

    messages_seen: float = 0.0
    spam_count: float = 0.0
    first_seen: datetime | None = None

    @property
    def spam_rate(self) -> float:
        """``(1 + spam) / (2 + seen)``."""
        return (1.0 + self.spam_count) / (2.0 + self.messages_seen)


class ReputationStore:
    """Reputation features for the trainer (offline) and the inference service (online)."""

    def __init__(self, store: FeatureStore, *, cooldown: float = DEFAULT_COOLDOWN) -> None:
        self.store = store
        self.cooldown = cooldown
        self._skip_online_until = 0.0  # time.monotonic() before which online() skips Redis

    @classmethod
    def open(
        cls,
        directory: str | Path,
        redis: str | None,
        *,
        apply: bool = True,
        cooldown: float = DEFAULT_COOLDOWN,
    ) -> ReputationStore:
        """``write_feature_repo`` + ``apply_repo`` (when ``apply``) in one call."""
        store = write_feature_repo(directory, redis)
        if apply:
            apply_repo(store)
        return cls(store, cooldown=cooldown)

    @property
    def events_path(self) -> Path:
        """The parquet file behind the feature view."""
        return _events_path(self.store)

    # -------------------------------------------------------------- offline
    def historical(
        self, frame: pd.DataFrame, *, now: datetime | None = None, folds: int = TRAIN_FOLDS
    ) -> np.ndarray:
        """``[len(frame), 3]`` float32 reputation of each email of a snapshot frame.

        ``frame`` has ``message_key``, ``date``, ``sender_domain``, ``label`` and
        ``split``. The event file is rewritten from the TRAIN rows
        (``reputation_rows``; ``materialize`` copies its latest states to Redis).
        Then each email gets what serving gets (see the module docstring):

        * validation and test rows: their domain's latest state over all TRAIN
          labels, at ``reputation_times`` (their Date);
        * TRAIN rows: the same, over the train labels of the *other* folds
          (``folds``, by a hash of the message key), so no row sees its own label.

        Rows keep the frame's order.
        """
        now = now or datetime.now(UTC)
        events = train_label_events(frame)
        rows = reputation_rows(events)
        self.write_events(rows)
        n = len(frame)
        out = np.broadcast_to(REPUTATION_DEFAULTS, (n, len(REPUTATION_NAMES))).copy()
        if n == 0:
            return out
        domains = _normalize_domains(frame["sender_domain"]).reset_index(drop=True)
        at = reputation_times(frame["date"], now)
        is_train = (frame["split"] == "train").to_numpy()
        fold = np.full(n, -1, dtype=np.int64)
        keys = frame["message_key"].reset_index(drop=True)
        fold[is_train] = _fold_of(keys[is_train], folds, 0)
        held = ~is_train
        if held.any():
            out[held] = _state_features(_latest_states(rows), domains[held], at[held])
        event_fold = fold[is_train]  # train_label_events keeps the train rows in order
        for k in range(folds):
            mask = fold == k
            if not mask.any():
                continue
            others = reputation_rows(events[event_fold != k])
            out[mask] = _state_features(_latest_states(others), domains[mask], at[mask])
        return out

    def write_events(self, rows: pd.DataFrame) -> None:
        """Replace the event file with these ``STATE_COLUMNS`` rows (``reputation_rows``)."""
        _write_events(self.events_path, rows)

    def lookup(
        self, domains: Sequence[str] | pd.Series, dates: Sequence[Any] | pd.Series
    ) -> np.ndarray:
        """Point-in-time reputation of (domain, Date) pairs against the current event file."""
        n = len(domains)
        if len(dates) != n:
            raise ValueError(f"{n} domains but {len(dates)} dates")
        query = pd.DataFrame(
            {
                ENTITY_NAME: _normalize_domains(pd.Series(list(domains), dtype=object)),
                TIMESTAMP_COLUMN: _utc(pd.Series(list(dates), dtype=object)),
            }
        )
        out = np.broadcast_to(REPUTATION_DEFAULTS, (n, len(REPUTATION_NAMES))).copy()
        known = query[query[TIMESTAMP_COLUMN].notna() & (query[ENTITY_NAME] != "")]
        if known.empty:
            return out
        # Feast keeps one result per (key, timestamp): query each distinct pair once.
        pairs = known.drop_duplicates().reset_index(drop=True)
        pairs["pair_id"] = np.arange(len(pairs), dtype=np.int64)
        job = self.store.get_historical_features(entity_df=pairs, features=list(_FEATURE_REFS))
        result = job.to_df().set_index("pair_id").reindex(pairs["pair_id"])
        values = _features(
            result["rep_messages_seen"].to_numpy(dtype=np.float64),
            result["rep_spam_rate"].to_numpy(dtype=np.float64),
            result["rep_first_seen_ts"].to_numpy(dtype=np.float64),
            _unix_seconds(pairs[TIMESTAMP_COLUMN]),
        )
        position = known.merge(pairs, on=[ENTITY_NAME, TIMESTAMP_COLUMN], how="left")["pair_id"]
        out[known.index.to_numpy()] = values[position.to_numpy()]
        return out

    def materialize(self, end: datetime | None = None) -> None:
        """Copy each domain's latest state up to ``end`` (default now) into the online store.

        Reads the whole event file (states never expire); Redis keeps a newer
        state it already has (e.g. from a later ``push_label``).
        """
        end = end or datetime.now(UTC)
        self.store.materialize(start_date=_EPOCH, end_date=end, feature_views=[FEATURE_VIEW_NAME])

    # --------------------------------------------------------------- online
    def _read_states(self, domains: Sequence[str]) -> dict[str, ReputationState]:
        """The stored state of each distinct domain (raises on an online store error)."""
        response = self.store.get_online_features(
            features=list(_FEATURE_REFS),
            entity_rows=[{ENTITY_NAME: d} for d in domains],
        ).to_dict()
        states: dict[str, ReputationState] = {}
        for i, domain in enumerate(domains):
            seen = response["rep_messages_seen"][i]
            if seen is None:
                continue
            first_ts = response["rep_first_seen_ts"][i]
            states[domain] = ReputationState(
                messages_seen=float(seen),
                spam_count=float(response["rep_spam_count"][i] or 0.0),
                first_seen=None
                if first_ts is None
                else datetime.fromtimestamp(float(first_ts), tz=UTC),
            )
        return states

    def state(self, domain: str) -> ReputationState:
        """The online state of one domain (all zeros when unseen); raises on a store error."""
        key = _normalize_domains(pd.Series([domain])).iloc[0]
        return self._read_states([key]).get(key, ReputationState()) if key else ReputationState()

    def online(
        self,
        domains: Sequence[str],
        now: datetime,
        dates: Sequence[datetime | None] | None = None,
    ) -> OnlineReputation:
        """``[n, 3]`` float32 reputation of these sender domains at ``now`` (serving).

        ``dates`` (the emails' Dates): the days since first seen are counted at
        ``reputation_times(dates, now)``, as in training; without them at ``now``.

        Unseen or empty domains get ``REPUTATION_DEFAULTS``. Any online store
        error gives the defaults for all rows, a logged warning and
        ``degraded=True`` (count it); it never raises. For ``cooldown`` seconds
        after an error, calls return the defaults (degraded) without trying
        Redis.
        """
        n = len(domains)
        out = np.broadcast_to(REPUTATION_DEFAULTS, (n, len(REPUTATION_NAMES))).copy()
        keys = _normalize_domain_list(domains)
        distinct = sorted({k for k in keys if k})
        if not distinct:
            return OnlineReputation(out, degraded=False)
        if time.monotonic() < self._skip_online_until:
            return OnlineReputation(out, degraded=True, error="skipped: online store failing")
        try:
            states = self._read_states(distinct)
        except Exception as exc:  # any Redis/Feast failure: serve without reputation
            self._skip_online_until = time.monotonic() + self.cooldown
            logger.warning(
                "reputation lookup failed, using defaults for %.1fs: %r", self.cooldown, exc
            )
            return OnlineReputation(out, degraded=True, error=f"{type(exc).__name__}: {exc}")
        if dates is None:
            at = np.full(n, _aware(now).timestamp())
        else:
            if len(dates) != n:
                raise ValueError(f"{n} domains but {len(dates)} dates")
            at = reputation_times(dates, now)
        rows = [i for i, key in enumerate(keys) if key in states]
        if rows:
            known = [states[keys[i]] for i in rows]
            out[rows] = _features(
                np.array([state.messages_seen for state in known], dtype=np.float64),
                np.array([state.spam_rate for state in known], dtype=np.float64),
                np.array(
                    [np.nan if s.first_seen is None else s.first_seen.timestamp() for s in known],
                    dtype=np.float64,
                ),
                at[rows],
            )
        return OnlineReputation(out, degraded=False)

    def push_label(
        self,
        domain: str,
        label: str,
        at: datetime,
        *,
        sent_at: datetime | None = None,
    ) -> ReputationState:
        """Record one EmailLabeled: read the domain's state, advance it, push it.

        The new cumulative row (event time ``at``, when the label became known)
        goes to Redis and to the event file (``PushMode.ONLINE_AND_OFFLINE``).
        A new domain's first-seen time is ``sent_at`` (the email's Date) when
        given, else ``at``. Returns the new state. Raises on a store error (the
        caller retries or dead-letters: a silent reset would lose the counts).
        Not atomic: concurrent pushes for one domain may lose an update.
        """
        if label not in _LABELS:
            raise ValueError(f"label must be spam|ham, got {label!r}")
        key = _normalize_domains(pd.Series([domain])).iloc[0]
        if not key:
            raise ValueError("an empty sender domain has no reputation")
        at = _aware(at)
        current = self.state(key)
        first = current.first_seen or _aware(sent_at or at)
        new = ReputationState(
            messages_seen=current.messages_seen + 1,
            spam_count=current.spam_count + (label == "spam"),
            first_seen=min(first, _aware(sent_at)) if sent_at else first,
        )
        row = pd.DataFrame(
            {
                ENTITY_NAME: [key],
                TIMESTAMP_COLUMN: _utc(pd.Series([at])),
                "rep_messages_seen": np.array([new.messages_seen], dtype=np.float32),
                "rep_spam_count": np.array([new.spam_count], dtype=np.float32),
                "rep_spam_rate": np.array([new.spam_rate], dtype=np.float32),
                "rep_first_seen_ts": np.array([_first_ts(new)], dtype=np.float64),
            }
        )
        self.store.push(PUSH_SOURCE_NAME, row, to=PushMode.ONLINE_AND_OFFLINE)
        return new


def _first_ts(state: ReputationState) -> float:
    assert state.first_seen is not None
    return state.first_seen.timestamp()


def _aware(value: datetime) -> datetime:
    """Naive datetimes are taken as UTC (as Feast does)."""
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)
