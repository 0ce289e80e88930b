"""The monitor's state that must outlive a crash, in one SQLite file under its state dir.

What lives here (everything else is rebuilt by replaying from the commit floor):

* **coverage** — per (model, version, partition) of emails.verdicts, the last offset
  already counted in an evaluated drift window. A replay after a crash skips those
  verdicts, so the windows cover every verdict exactly once.
* **the label join** — verdicts waiting for their label, labels that came before their
  verdict, the joined (predicted, actual) pairs of each version's live-quality window
  and its label total, and per (topic, partition) the last offset whose effect on the
  join is stored (a replayed record is not joined twice).

Writes are buffered in memory and stored in one short transaction by ``flush``; the
Kafka wiring calls the monitor's commit floor before each commit, which flushes first,
so nothing is committed before its effect is on disk. SQLite in WAL mode keeps a
committed transaction through a ``kill -9`` of the process; several monitor processes
sharing the state dir share one join (SQLite locks between processes).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS coverage (
    model TEXT NOT NULL, version INTEGER NOT NULL, partition INTEGER NOT NULL,
    last_offset INTEGER NOT NULL, PRIMARY KEY (model, version, partition));
CREATE TABLE IF NOT EXISTS applied (
    topic TEXT NOT NULL, partition INTEGER NOT NULL, last_offset INTEGER NOT NULL,
    PRIMARY KEY (topic, partition));
CREATE TABLE IF NOT EXISTS verdicts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE,
    model TEXT NOT NULL, version INTEGER NOT NULL, predicted INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS early_labels (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL UNIQUE, actual INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS pairs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, model TEXT NOT NULL, version INTEGER NOT NULL,
    predicted INTEGER NOT NULL, actual INTEGER NOT NULL);
CREATE INDEX IF NOT EXISTS pairs_by_version ON pairs (model, version, seq);
CREATE TABLE IF NOT EXISTS label_totals (
    model TEXT NOT NULL, version INTEGER NOT NULL, labels INTEGER NOT NULL,
    PRIMARY KEY (model, version));
"""

Verdict = tuple[str, int, bool]  # model, version, predicted spam


@dataclass
class _Pending:
    """Writes not stored yet (the next ``flush`` stores them in one transaction)."""

    coverage: dict[tuple[str, int, int], int] = field(default_factory=dict)
    applied: dict[tuple[str, int], int] = field(default_factory=dict)
    verdicts: dict[str, Verdict] = field(default_factory=dict)
    early_labels: dict[str, bool] = field(default_factory=dict)
    joined_verdicts: set[str] = field(default_factory=set)
    joined_labels: set[str] = field(default_factory=set)
    pairs: list[tuple[str, int, bool, bool]] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(
            self.coverage
            or self.applied
            or self.verdicts
            or self.early_labels
            or self.joined_verdicts
            or self.joined_labels
            or self.pairs
        )


class StateStore:
    """SQLite-backed coverage and label join, with write-behind buffering.

    Reads see the pending writes first. Bounded: ``join_capacity`` remembered verdicts
    and early labels, ``quality_window`` pairs per version, the pairs of the newest
    ``max_versions`` versions (older versions' are pruned at flush).
    """

    def __init__(
        self,
        path: Path | str,
        *,
        join_capacity: int,
        quality_window: int,
        max_versions: int = 8,
        busy_timeout_s: float = 10.0,
    ) -> None:
        if isinstance(path, Path):
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = str(path)
        self.join_capacity = join_capacity
        self.quality_window = quality_window
        self.max_versions = max_versions
        self.db = sqlite3.connect(self.path, timeout=busy_timeout_s, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable through a process crash
        self.db.executescript(SCHEMA)
        self.pending = _Pending()
        self.forgotten_labels = 0  # early labels pushed out by capacity (never matched)
        # Progress of the partitions handled since the last flush (cached from the
        # database, where another instance may move it between flushes).
        self._applied: dict[tuple[str, int], int] = {}
        self._coverage: dict[tuple[str, int, int], int] = {}
        self._first_unflushed: dict[tuple[str, int], int] = {}
        # Whether the database holds any early label, read once per flush interval:
        # labels usually come after their verdicts, and a lookup per verdict was
        # most of the join's cost (py-spy at 300 verdicts/s).
        self._stored_early_labels: bool | None = None

    # ---------------------------------------------------------------- progress
    def applied_offset(self, topic: str, partition: int) -> int:
        """The last offset of (topic, partition) whose effect on the join is stored (-1)."""
        key = (topic, partition)
        if key not in self._applied:
            row = self.db.execute(
                "SELECT last_offset FROM applied WHERE topic = ? AND partition = ?", key
            ).fetchone()
            self._applied[key] = int(row[0]) if row else -1
        return self._applied[key]

    def mark_applied(self, topic: str, partition: int, offset: int) -> None:
        """The record's effect on the join is done (stored at the next flush)."""
        self._applied[(topic, partition)] = offset
        self.pending.applied[(topic, partition)] = offset
        self._first_unflushed.setdefault((topic, partition), offset)

    def first_unflushed(self, topic: str, partition: int) -> int | None:
        """The first offset of (topic, partition) whose join effect is not stored yet."""
        return self._first_unflushed.get((topic, partition))

    def covered_offset(self, model: str, version: int, partition: int) -> int:
        """The last offset of ``partition`` counted in an evaluated window of the version."""
        key = (model, version, partition)
        if key not in self._coverage:
            row = self.db.execute(
                "SELECT last_offset FROM coverage WHERE model = ? AND version = ? "
                "AND partition = ?",
                key,
            ).fetchone()
            self._coverage[key] = int(row[0]) if row else -1
        return self._coverage[key]

    def mark_covered(self, model: str, version: int, offsets: dict[int, int]) -> None:
        """A window of the version is settled: its last offset per partition."""
        for partition, offset in offsets.items():
            key = (model, version, partition)
            if offset > self.covered_offset(model, version, partition):
                self._coverage[key] = offset
                self.pending.coverage[key] = offset

    # ---------------------------------------------------------------- join
    def _stored_verdict(self, key: str) -> Verdict | None:
        row = self.db.execute(
            "SELECT model, version, predicted FROM verdicts WHERE key = ?", (key,)
        ).fetchone()
        return (str(row[0]), int(row[1]), bool(row[2])) if row else None

    def take_verdict(self, key: str) -> Verdict | None:
        """The verdict waiting for this key's label (removed), or None."""
        verdict = self.pending.verdicts.pop(key, None)
        if verdict is None and key not in self.pending.joined_verdicts:
            verdict = self._stored_verdict(key)
        if verdict is not None:
            self.pending.joined_verdicts.add(key)
        return verdict

    def take_early_label(self, key: str) -> bool | None:
        """A label that came before this key's verdict (removed), or None."""
        actual = self.pending.early_labels.pop(key, None)
        if actual is None and key not in self.pending.joined_labels and self._any_stored_label():
            row = self.db.execute(
                "SELECT actual FROM early_labels WHERE key = ?", (key,)
            ).fetchone()
            actual = bool(row[0]) if row else None
        if actual is not None:
            self.pending.joined_labels.add(key)
        return actual

    def _any_stored_label(self) -> bool:
        if self._stored_early_labels is None:
            row = self.db.execute("SELECT 1 FROM early_labels LIMIT 1").fetchone()
            self._stored_early_labels = row is not None
        return self._stored_early_labels

    def keep_verdict(self, key: str, verdict: Verdict) -> None:
        """Remember a verdict until its label comes."""
        self.pending.joined_verdicts.discard(key)
        self.pending.verdicts[key] = verdict

    def keep_early_label(self, key: str, actual: bool) -> None:
        """Remember a label until its verdict comes."""
        self.pending.joined_labels.discard(key)
        self.pending.early_labels[key] = actual

    def add_pair(self, model: str, version: int, predicted: bool, actual: bool) -> None:
        """One joined verdict and label."""
        self.pending.pairs.append((model, version, predicted, actual))

    def pairs(self, model: str, version: int) -> list[tuple[bool, bool]]:
        """The version's newest ``quality_window`` (predicted, actual) pairs, oldest first."""
        stored = self.db.execute(
            "SELECT predicted, actual FROM pairs WHERE model = ? AND version = ? "
            "ORDER BY seq DESC LIMIT ?",
            (model, version, self.quality_window),
        ).fetchall()
        pending = [(p, a) for m, v, p, a in self.pending.pairs if (m, v) == (model, version)]
        combined = [(bool(p), bool(a)) for p, a in reversed(stored)] + pending
        return combined[-self.quality_window :]

    def label_total(self, model: str, version: int) -> int:
        """Labels joined with a verdict of the version, ever."""
        row = self.db.execute(
            "SELECT labels FROM label_totals WHERE model = ? AND version = ?", (model, version)
        ).fetchone()
        pending = sum(1 for m, v, _, _ in self.pending.pairs if (m, v) == (model, version))
        return (int(row[0]) if row else 0) + pending

    def versions(self) -> list[tuple[str, int]]:
        """Every (model, version) with at least one joined pair."""
        stored = self.db.execute("SELECT DISTINCT model, version FROM pairs").fetchall()
        found = {(str(m), int(v)) for m, v in stored}
        found |= {(m, v) for m, v, _, _ in self.pending.pairs}
        return sorted(found)

    # ---------------------------------------------------------------- flush
    def flush(self) -> bool:
        """Store every pending write in one transaction; True when there was any."""
        self._stored_early_labels = None  # another instance may have stored some since
        pending = self.pending
        if not pending:
            return False
        self.pending = _Pending()
        db = self.db
        try:
            db.execute("BEGIN IMMEDIATE")
            self._write(db, pending)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            self.pending = pending  # kept for the next attempt
            raise
        # Read again from the database on next use: a partition may move to another
        # instance (a rebalance), which then moves its progress (one query per partition).
        self._applied.clear()
        self._coverage.clear()
        self._first_unflushed.clear()
        return True

    def _write(self, db: sqlite3.Connection, pending: _Pending) -> None:
        db.executemany(
            "INSERT INTO coverage VALUES (?, ?, ?, ?) ON CONFLICT (model, version, partition) "
            "DO UPDATE SET last_offset = max(last_offset, excluded.last_offset)",
            [(*k, v) for k, v in pending.coverage.items()],
        )
        db.executemany(
            "INSERT INTO applied VALUES (?, ?, ?) ON CONFLICT (topic, partition) "
            "DO UPDATE SET last_offset = max(last_offset, excluded.last_offset)",
            [(*k, v) for k, v in pending.applied.items()],
        )
        db.executemany("DELETE FROM verdicts WHERE key = ?", _one(pending.joined_verdicts))
        db.executemany("DELETE FROM early_labels WHERE key = ?", _one(pending.joined_labels))
        db.executemany(
            "INSERT OR REPLACE INTO verdicts (key, model, version, predicted) VALUES (?, ?, ?, ?)",
            [(k, m, v, int(p)) for k, (m, v, p) in pending.verdicts.items()],
        )
        db.executemany(
            "INSERT OR REPLACE INTO early_labels (key, actual) VALUES (?, ?)",
            [(k, int(a)) for k, a in pending.early_labels.items()],
        )
        db.executemany(
            "INSERT INTO pairs (model, version, predicted, actual) VALUES (?, ?, ?, ?)",
            [(m, v, int(p), int(a)) for m, v, p, a in pending.pairs],
        )
        totals: dict[tuple[str, int], int] = {}
        for m, v, _, _ in pending.pairs:
            totals[(m, v)] = totals.get((m, v), 0) + 1
        db.executemany(
            "INSERT INTO label_totals VALUES (?, ?, ?) ON CONFLICT (model, version) "
            "DO UPDATE SET labels = labels + excluded.labels",
            [(*k, n) for k, n in totals.items()],
        )
        self._prune(db, touched=set(totals))

    def _prune(self, db: sqlite3.Connection, touched: set[tuple[str, int]]) -> None:
        """Keep the join bounded (by sequence number: the newest are kept)."""
        db.execute(
            "DELETE FROM verdicts WHERE seq <= (SELECT max(seq) FROM verdicts) - ?",
            (self.join_capacity,),
        )
        cursor = db.execute(
            "DELETE FROM early_labels WHERE seq <= (SELECT max(seq) FROM early_labels) - ?",
            (self.join_capacity,),
        )
        self.forgotten_labels += max(0, cursor.rowcount)
        for model, version in touched:
            db.execute(
                "DELETE FROM pairs WHERE model = ? AND version = ? AND seq <= (SELECT seq FROM "
                "pairs WHERE model = ? AND version = ? ORDER BY seq DESC LIMIT 1 OFFSET ?)",
                (model, version, model, version, self.quality_window - 1),
            )
        if touched:
            newest = db.execute(
                "SELECT model, version FROM pairs GROUP BY model, version "
                "ORDER BY max(seq) DESC LIMIT -1 OFFSET ?",
                (self.max_versions,),
            ).fetchall()
            for model, version in newest:
                db.execute("DELETE FROM pairs WHERE model = ? AND version = ?", (model, version))
                db.execute(
                    "DELETE FROM label_totals WHERE model = ? AND version = ?", (model, version)
                )

    def close(self) -> None:
        """Flush and close."""
        try:
            self.flush()
        finally:
            self.db.close()


def _one(keys: Iterable[str]) -> list[tuple[str]]:
    return [(k,) for k in keys]
