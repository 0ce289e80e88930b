"""Sender reputation through Feast, offline: the state rows and the point-in-time rules.

No Redis here: the store uses Feast's file offline store and a SQLite online
store in a temporary directory (``write_feature_repo(..., redis=None)``). The
Redis path is in ``tests/integration/test_reputation_online.py``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from spamops_features.pipeline import REPUTATION_DEFAULTS, REPUTATION_NAMES
from spamops_features.reputation import (
    LABEL_DELAY,
    MIN_PLAUSIBLE_DATE,
    STATE_COLUMNS,
    ReputationState,
    ReputationStore,
    redis_connection_string,
    reputation_rows,
    reputation_times,
    write_feature_repo,
)

T0 = datetime(2002, 8, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


Row = tuple[str, str, datetime | None, str, str]


def frame_of(rows: Sequence[Row]) -> pd.DataFrame:
    """A snapshot-like frame from (message_key, sender_domain, date, label, split) tuples."""
    frame = pd.DataFrame(rows, columns=["message_key", "sender_domain", "date", "label", "split"])
    frame["date"] = pd.to_datetime(frame["date"], utc=True).astype("datetime64[us, UTC]")
    return frame


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ReputationStore]:
    yield ReputationStore.open(tmp_path_factory.mktemp("feast"), redis=None)


def features_by_key(store: ReputationStore, frame: pd.DataFrame) -> dict[str, list[float]]:
    x = store.historical(frame)
    assert x.shape == (len(frame), 3)
    assert x.dtype == np.float32
    return {key: row.tolist() for key, row in zip(frame["message_key"], x, strict=True)}


# ------------------------------------------------------------------ the rows
def test_reputation_rows_on_a_hand_made_table() -> None:
    labels = pd.DataFrame(
        {
            "sender_domain": ["a.com", "A.com ", "a.com", "b.org", "a.com", "c.net", ""],
            "date": [T0, T0 + DAY, T0 + DAY, T0, T0 + 3 * DAY, None, T0],
            "label": ["spam", "ham", "spam", "ham", "ham", "spam", "spam"],
        }
    )
    rows = reputation_rows(labels)
    assert tuple(rows.columns) == STATE_COLUMNS
    first_a = T0.timestamp()
    expected = [
        # domain, label time, seen, spam, rate, first seen
        ("a.com", T0 + LABEL_DELAY, 1, 1, 2 / 3, first_a),
        # two labels at the same instant: one state with both
        ("a.com", T0 + DAY + LABEL_DELAY, 3, 2, 3 / 5, first_a),
        ("a.com", T0 + 3 * DAY + LABEL_DELAY, 4, 2, 3 / 6, first_a),
        ("b.org", T0 + LABEL_DELAY, 1, 0, 1 / 3, T0.timestamp()),
    ]  # c.net has no Date, "" no domain: no rows
    assert len(rows) == len(expected)
    for (_, row), (domain, at, seen, spam, rate, first) in zip(
        rows.iterrows(), expected, strict=True
    ):
        assert row["sender_domain"] == domain
        assert row["event_timestamp"] == pd.Timestamp(at)
        assert row["rep_messages_seen"] == seen
        assert row["rep_spam_count"] == spam
        assert row["rep_spam_rate"] == pytest.approx(rate, abs=1e-7)
        assert row["rep_first_seen_ts"] == first
    assert rows["rep_spam_rate"].dtype == np.float32
    assert rows["rep_first_seen_ts"].dtype == np.float64


def test_reputation_rows_are_deterministic_in_any_input_order() -> None:
    rng = random.Random(3)
    labels = pd.DataFrame(
        {
            "sender_domain": [rng.choice(["a.com", "b.org", "c.net"]) for _ in range(60)],
            # few distinct instants: many ties
            "date": [T0 + rng.randrange(6) * DAY for _ in range(60)],
            "label": [rng.choice(["spam", "ham"]) for _ in range(60)],
        }
    )
    rows = reputation_rows(labels)
    shuffled = reputation_rows(labels.sample(frac=1.0, random_state=9))
    pd.testing.assert_frame_equal(rows, shuffled)
    # One row per (domain, instant), counts ending at the domain totals.
    assert not rows.duplicated(["sender_domain", "event_timestamp"]).any()
    last = rows.groupby("sender_domain").last()
    totals = labels.groupby("sender_domain")["label"].agg(
        seen="size", spam=lambda s: (s == "spam").sum()
    )
    assert last["rep_messages_seen"].tolist() == totals["seen"].tolist()
    assert last["rep_spam_count"].tolist() == totals["spam"].tolist()


def test_reputation_rows_edge_cases() -> None:
    empty = reputation_rows(pd.DataFrame({"sender_domain": [], "date": [], "label": []}))
    assert empty.empty
    assert tuple(empty.columns) == STATE_COLUMNS
    with pytest.raises(ValueError, match="spam\\|ham"):
        reputation_rows(pd.DataFrame({"sender_domain": ["a"], "date": [T0], "label": ["junk"]}))


# ------------------------------------------------------------- the feature repo
def test_write_feature_repo_config(tmp_path: Path) -> None:
    write_feature_repo(tmp_path / "repo", "redis://127.0.0.1:6390/2")
    config = json.loads((tmp_path / "repo" / "feature_store.yaml").read_text())
    assert config["project"] == "spamops"
    assert config["provider"] == "local"
    assert config["offline_store"] == {"type": "file"}
    assert config["online_store"]["type"] == "redis"
    assert config["online_store"]["connection_string"].startswith("127.0.0.1:6390,db=2,")
    assert config["entity_key_serialization_version"] == 3
    assert Path(config["registry"]["path"]).parent == (tmp_path / "repo").resolve()


def test_redis_connection_string() -> None:
    assert redis_connection_string("redis://h:1234/0", timeout=1) == (
        "h:1234,db=0,socket_timeout=1,socket_connect_timeout=1,retry=null"
    )
    assert redis_connection_string("rediss://:pw@h:1/3").startswith("h:1,db=3,password=pw,ssl=true")
    assert redis_connection_string("h:9").startswith("h:9,socket_timeout=")


# ------------------------------------------- training = serving semantics
def test_held_out_rows_see_the_latest_train_state_at_their_date(store: ReputationStore) -> None:
    frame = frame_of(
        [
            ("m1", "a.com", T0, "spam", "train"),
            ("m2", "a.com", T0 + DAY, "ham", "train"),
            ("m3", "A.COM", T0 + 3 * DAY, "spam", "train"),
            ("m4", "b.org", T0 + 2 * DAY, "ham", "train"),
            ("m5", "a.com", T0 + 4 * DAY, "ham", "test"),
            ("m5b", "a.com", T0 - DAY, "ham", "test"),  # dated before the first label
            ("m6", "a.com", None, "spam", "test"),  # no Date: the state, 0 days
            ("m7", "", T0 + 5 * DAY, "spam", "test"),  # no domain: defaults
            ("m8", "new.example", T0 + 5 * DAY, "ham", "validation"),
        ]
    )
    got = features_by_key(store, frame)
    defaults = REPUTATION_DEFAULTS.tolist()
    # What Redis serves after the training: all three a.com train labels (2 spam).
    assert got["m5"] == pytest.approx([3, 3 / 5, 4.0])
    assert got["m5b"] == pytest.approx([3, 3 / 5, 0.0])
    assert got["m6"] == pytest.approx([3, 3 / 5, 0.0])
    assert got["m7"] == defaults
    assert got["m8"] == defaults


def test_train_rows_never_see_their_own_label(store: ReputationStore) -> None:
    rng = random.Random(3)
    rows: list[Row] = [
        (
            f"m{i}",
            rng.choice(["x.com", "y.org"]),
            T0 + i * DAY,
            rng.choice(["spam", "ham"]),
            "train",
        )
        for i in range(60)
    ]
    before = store.historical(frame_of(rows))
    for k in range(0, 60, 7):
        key, domain, date, label, split = rows[k]
        flipped = [*rows[:k], (key, domain, date, "ham" if label == "spam" else "spam", split)]
        flipped += rows[k + 1 :]
        after = store.historical(frame_of(flipped))
        assert after[k].tolist() == before[k].tolist(), key
        assert not np.array_equal(after, before)  # other folds do see it


def test_train_rows_see_the_other_folds(store: ReputationStore) -> None:
    rows: list[Row] = [(f"m{i}", "z.com", T0 + i * DAY, "spam", "train") for i in range(50)]
    x = store.historical(frame_of(rows))
    # About 4/5 of the 50 labels, all spam; none of its own fold.
    assert np.all((x[:, 0] > 25) & (x[:, 0] < 50))
    np.testing.assert_allclose(x[:, 1], (1 + x[:, 0]) / (2 + x[:, 0]), rtol=1e-6)


def test_validation_and_test_labels_do_not_inform_features(store: ReputationStore) -> None:
    rng = random.Random(5)
    domains = ["a.com", "b.org", "c.net", "d.io"]
    rows = [
        (
            f"m{i}",
            rng.choice(domains),
            T0 + timedelta(hours=rng.randrange(24 * 30)),
            rng.choice(["spam", "ham"]),
            rng.choice(["train", "train", "train", "validation", "test"]),
        )
        for i in range(120)
    ]
    frame = frame_of(rows)
    x = store.historical(frame)
    held = frame["split"] != "train"
    changed = frame.copy()
    changed.loc[held, "label"] = np.where(changed.loc[held, "label"] == "spam", "ham", "spam")
    assert np.array_equal(store.historical(changed), x)
    # Held-out rows can be dropped altogether: the train rows' features stay.
    train_only = frame[~held].reset_index(drop=True)
    assert np.array_equal(store.historical(train_only), x[~held.to_numpy()])


def test_reputation_times_use_the_date_never_the_future() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    at = reputation_times([T0, None, datetime(1980, 1, 1, tzinfo=UTC), now + DAY], now)
    assert at[0] == T0.timestamp()
    assert np.isnan(at[1]) and np.isnan(at[2])
    assert at[3] == now.timestamp()


def test_reputation_times_without_pandas_equal_the_pandas_path() -> None:
    # Serving passes a list of datetimes (the plain path), training a Series (pandas):
    # the same seconds, to the bit, or a replayed mail would not score as in training.
    rng = random.Random(3)
    now = datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
    dates: list[datetime | None] = [None, MIN_PLAUSIBLE_DATE, now, now + DAY]
    for _ in range(2000):
        zone = timezone(timedelta(minutes=rng.randrange(-14 * 60, 14 * 60 + 1, 15)))
        seconds = rng.uniform(0, 2.0e9)
        value = datetime.fromtimestamp(seconds, tz=zone)
        dates.append(value if rng.random() < 0.9 else value.replace(tzinfo=None))
    plain = reputation_times(dates, now)
    through_pandas = reputation_times(pd.Series(dates, dtype=object), now)
    np.testing.assert_array_equal(plain, through_pandas)


def test_historical_keeps_row_order_and_index(store: ReputationStore) -> None:
    frame = frame_of(
        [
            ("m1", "a.com", T0, "spam", "train"),
            ("m2", "a.com", T0 + DAY, "ham", "train"),
            ("m3", "a.com", T0 + 2 * DAY, "ham", "train"),
        ]
    )
    reordered = frame.iloc[[2, 0, 1]]  # index 2, 0, 1: positional order must win
    x = store.historical(reordered)
    assert x.tolist() == store.historical(frame)[[2, 0, 1]].tolist()
    both = pd.concat([frame, frame.assign(split="test", message_key=["t1", "t2", "t3"])])
    # Held-out rows: the latest state (3 labels), days counted at each row's own Date.
    assert store.historical(both.iloc[[5, 3, 4, 0]])[:3, 2].tolist() == pytest.approx([2, 0, 1])


def test_historical_on_no_events(store: ReputationStore) -> None:
    frame = frame_of([("m1", "a.com", T0, "spam", "test"), ("m2", "b.org", None, "ham", "train")])
    x = store.historical(frame)
    assert np.array_equal(x, np.broadcast_to(REPUTATION_DEFAULTS, (2, 3)))
    assert store.historical(frame.iloc[:0]).shape == (0, 3)


# ---------------------------------------------- online path, without Redis
@pytest.fixture
def local_store(tmp_path: Path) -> ReputationStore:
    return ReputationStore.open(tmp_path / "feast", redis=None)


def test_materialize_push_and_online_on_sqlite(local_store: ReputationStore) -> None:
    frame = frame_of(
        [
            ("m1", "a.com", T0, "spam", "train"),
            ("m2", "a.com", T0 + DAY, "ham", "train"),
            ("m3", "b.org", T0, "ham", "validation"),
        ]
    )
    local_store.historical(frame)
    local_store.materialize(T0 + 10 * DAY)
    now = T0 + 11 * DAY
    result = local_store.online(["a.com", "b.org", "", "A.COM"], now)
    assert not result.degraded
    assert result.values.dtype == np.float32
    assert result.values.tolist()[0] == pytest.approx([2, 2 / 4, 11.0])
    assert result.values.tolist()[1] == REPUTATION_DEFAULTS.tolist()  # only validation labels
    assert result.values.tolist()[2] == REPUTATION_DEFAULTS.tolist()
    assert result.values.tolist()[3] == result.values.tolist()[0]
    # With the emails' Dates (a replayed mail): days at min(now, Date), as in training.
    dated = local_store.online(["a.com", "a.com", "a.com"], now, [T0 + 2 * DAY, None, now + DAY])
    assert dated.values[:, 2].tolist() == pytest.approx([2.0, 0.0, 11.0])

    state = local_store.push_label("b.org", "spam", at=now, sent_at=now - DAY)
    assert state == ReputationState(messages_seen=1, spam_count=1, first_seen=now - DAY)
    local_store.push_label("A.com", "spam", at=now)
    again = local_store.online(["a.com", "b.org"], now + DAY)
    assert again.values.tolist()[0] == pytest.approx([3, 3 / 5, 12.0])
    assert again.values.tolist()[1] == pytest.approx([1, 2 / 3, 2.0])
    # The pushes are in the event file too (offline), after the training rows.
    events = pd.read_parquet(local_store.events_path)
    assert len(events) == 4
    assert set(events["sender_domain"]) == {"a.com", "b.org"}


def test_online_error_gives_defaults_and_a_flag(
    local_store: ReputationStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[int] = []

    def broken(*args: object, **kwargs: object) -> None:
        calls.append(1)
        raise ConnectionError("redis is down")

    monkeypatch.setattr(local_store.store, "get_online_features", broken)
    result = local_store.online(["a.com", "b.org"], T0)
    assert result.degraded
    assert result.error is not None and "redis is down" in result.error
    assert np.array_equal(result.values, np.broadcast_to(REPUTATION_DEFAULTS, (2, 3)))
    assert "reputation lookup failed" in caplog.text
    # Within the cooldown Redis is not tried again: degraded at once.
    again = local_store.online(["a.com"], T0)
    assert again.degraded and again.values.tolist() == [REPUTATION_DEFAULTS.tolist()]
    assert len(calls) == 1
    # Without a cooldown every call tries Redis again.
    eager = ReputationStore(local_store.store, cooldown=0.0)
    assert eager.online(["a.com"], T0).degraded
    assert eager.online(["a.com"], T0).degraded
    assert len(calls) == 3
    # Pushing needs the current state: it must fail loudly, not reset the counts.
    with pytest.raises(ConnectionError):
        local_store.push_label("a.com", "spam", at=T0)


def test_push_label_validates(local_store: ReputationStore) -> None:
    with pytest.raises(ValueError, match="spam\\|ham"):
        local_store.push_label("a.com", "maybe", at=T0)
    with pytest.raises(ValueError, match="empty sender domain"):
        local_store.push_label(" ", "spam", at=T0)


def test_reputation_names_order() -> None:
    assert REPUTATION_NAMES == (
        "rep_messages_seen",
        "rep_spam_rate",
        "rep_days_since_first_seen",
    )
