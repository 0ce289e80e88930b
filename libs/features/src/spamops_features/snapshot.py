"""Building a content-addressed data-set snapshot (one parquet file) from labelled mail.

``build_snapshot`` parses every message with the same ``parse_email`` the
inference service uses, assigns a stratified train/validation/test split, writes
one deterministic parquet file and returns the DatasetReady event describing it
(publishing is the caller's business). The same messages, seed and ratios give a
byte-identical file, hence the same ``dataset_id``.

The split: rows are grouped into strata by (label, group); within a stratum
they are ranked by ``sha256("<seed>:<source_id>")`` and the first
``round(n * test)`` go to test, the next ``round(n * validation)`` to
validation, the rest to train. That is a stratified split with exact per-stratum
proportions that does not depend on input order, works for strata of any size
(scikit-learn's ``train_test_split`` refuses strata of one), and keeps almost
every message in the same split when a later snapshot adds messages, so a
retrained model is not tested on what its predecessor trained on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import math
import os
import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal, Protocol

import pyarrow as pa
import pyarrow.parquet as pq
from spamops_schemas import DatasetReady, SplitCounts, TimeRange

from spamops_features.mail import MailParseError, message_key, parse_email
from spamops_features.snapshot_io import (
    SNAPSHOT_FILENAME,
    SNAPSHOT_SCHEMA,
    SnapshotError,
    load_snapshot,
)

__all__ = [
    "PRODUCER",
    "SnapshotError",
    "build_snapshot",
    "dataset_id_for",
    "load_snapshot",
    "stratified_split",
]

log = logging.getLogger(__name__)


class LabelledMessage(Protocol):
    """What a snapshot is built from: the corpus reader's and the trainer's messages."""

    @property
    def source_id(self) -> str:
        """Unique id of the message across the snapshot (``<group>/<id>``)."""

    @property
    def group(self) -> str:
        """Source group (corpus folder, ``feedback``, ...)."""

    @property
    def label(self) -> str:
        """``spam`` or ``ham``."""

    @property
    def raw(self) -> bytes:
        """The RFC 822 bytes."""


PRODUCER: Final = "spamops-cli"  # the default; the trainer passes its own name
SPLITS: Final = ("train", "validation", "test")
Split = Literal["train", "validation", "test"]
Reason = Literal["initial", "drift", "manual"]


@dataclass(frozen=True, slots=True)
class _Row:
    message_key: str
    source_id: str
    group: str
    label: str
    date: datetime | None
    sender_domain: str
    subject: str
    raw: bytes


def dataset_id_for(sha256_hex: str) -> str:
    """The data-set id of a snapshot file: ``ds-`` and the first 16 hex of its sha256."""
    return "ds-" + sha256_hex[:16]


def _check_ratios(ratios: Sequence[float]) -> tuple[float, float, float]:
    if len(ratios) != 3 or any(r < 0 or not math.isfinite(r) for r in ratios):
        raise ValueError(f"ratios must be three non-negative numbers, got {ratios!r}")
    if not math.isclose(sum(ratios), 1.0, abs_tol=1e-9) or ratios[0] <= 0:
        raise ValueError(f"ratios must sum to 1 with a non-empty train split, got {ratios!r}")
    return float(ratios[0]), float(ratios[1]), float(ratios[2])


def stratified_split(
    rows: Sequence[tuple[str, str]], *, seed: int, ratios: Sequence[float]
) -> list[Split]:
    """The split of each ``(stratum, source_id)`` row (see the module docstring)."""
    _, validation, test = _check_ratios(ratios)
    strata: dict[str, list[int]] = {}
    for index, (stratum, _) in enumerate(rows):
        strata.setdefault(stratum, []).append(index)
    result: list[Split] = ["train"] * len(rows)
    for members in strata.values():
        ranked = sorted(
            members, key=lambda i: hashlib.sha256(f"{seed}:{rows[i][1]}".encode()).digest()
        )
        n = len(ranked)
        # Round half up (not to even) so equal strata sizes always split alike.
        n_test = math.floor(n * test + 0.5)
        n_validation = min(math.floor(n * validation + 0.5), n - n_test)
        for position, index in enumerate(ranked):
            if position < n_test:
                result[index] = "test"
            elif position < n_test + n_validation:
                result[index] = "validation"
    return result


def _parse_rows(messages: Iterable[LabelledMessage]) -> list[_Row]:
    rows: list[_Row] = []
    seen: set[str] = set()
    skipped = 0
    for message in messages:
        source_id = message.source_id
        if source_id in seen:
            raise ValueError(f"duplicate message {source_id}")
        seen.add(source_id)
        try:
            parsed = parse_email(message.raw)
        except MailParseError as exc:
            # Inference would dead-letter it too: it cannot be a training example.
            log.warning("skipping %s: not an email (%s)", source_id, exc.reason)
            skipped += 1
            continue
        rows.append(
            _Row(
                message_key=message_key(message.raw, parsed),
                source_id=source_id,
                group=message.group,
                label=message.label,
                date=parsed.date,
                sender_domain=parsed.sender_domain,
                subject=parsed.subject,
                raw=message.raw,
            )
        )
    if skipped:
        log.warning("%d message(s) were not emails and are not in the snapshot", skipped)
    # Deterministic order whatever order the messages came in.
    rows.sort(key=lambda row: (row.group, row.source_id))
    return rows


def _parquet_bytes(rows: Sequence[_Row], splits: Sequence[Split], seed: int) -> bytes:
    columns = {
        "message_key": [r.message_key for r in rows],
        "source_id": [r.source_id for r in rows],
        "group": [r.group for r in rows],
        "label": [r.label for r in rows],
        "split": list(splits),
        "date": [r.date for r in rows],
        "sender_domain": [r.sender_domain for r in rows],
        "subject": [r.subject for r in rows],
        "raw": [r.raw for r in rows],
        "size_bytes": [len(r.raw) for r in rows],
    }
    metadata = dict(SNAPSHOT_SCHEMA.metadata or {})
    metadata[b"spamops.split_seed"] = str(seed).encode()
    table = pa.table(columns, schema=SNAPSHOT_SCHEMA.with_metadata(metadata))
    buffer = io.BytesIO()
    # Nothing time- or host-dependent goes into the file (parquet stores no
    # timestamps; created_by names the pyarrow version), so it is reproducible.
    pq.write_table(
        table,
        buffer,
        compression="zstd",
        compression_level=3,
        use_dictionary=["group", "label", "split", "sender_domain"],
        write_statistics=True,
        store_schema=True,
    )
    return buffer.getvalue()


def _write_atomically(data: bytes, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=".snapshot-", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as tmp:
            tmp.write(data)
            tmp.flush()
            os.fsync(tmp.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise


def build_snapshot(
    messages: Iterable[LabelledMessage],
    out_dir: Path,
    *,
    seed: int = 42,
    ratios: Sequence[float] = (0.7, 0.15, 0.15),
    reason: Reason = "initial",
    parent_dataset_id: str | None = None,
    producer: str = PRODUCER,
) -> DatasetReady:
    """Write ``out_dir/<dataset_id>/snapshot.parquet`` and return its DatasetReady (unpublished).

    Columns: message_key, source_id, group, label, split, date (UTC, nullable),
    sender_domain, subject, raw (the message bytes), size_bytes. Messages that
    are not emails at all (``MailParseError``) are skipped with a warning. The
    file is written under a temporary name and renamed; an existing snapshot
    with the same content is left as it is. Raises ValueError for no messages,
    duplicate source ids or bad ratios.
    """
    _check_ratios(ratios)
    rows = _parse_rows(messages)
    if not rows:
        raise ValueError("no messages to snapshot")
    splits = stratified_split(
        [(f"{row.label}|{row.group}", row.source_id) for row in rows], seed=seed, ratios=ratios
    )
    data = _parquet_bytes(rows, splits, seed)
    sha256 = hashlib.sha256(data).hexdigest()
    dataset_id = dataset_id_for(sha256)
    path = (out_dir / dataset_id / SNAPSHOT_FILENAME).resolve()
    if not (path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256):
        _write_atomically(data, path)
    dates = [row.date for row in rows if row.date is not None]
    split_counts = Counter(splits)
    event = DatasetReady(
        producer=producer,
        dataset_id=dataset_id,
        uri=path.as_uri(),
        sha256=sha256,
        rows=len(rows),
        counts_by_label={"ham": 0, "spam": 0} | dict(Counter(row.label for row in rows)),
        counts_by_group=dict(sorted(Counter(row.group for row in rows).items())),
        time_range=TimeRange(start=min(dates, default=None), end=max(dates, default=None)),
        split=SplitCounts(
            train=split_counts["train"],
            validation=split_counts["validation"],
            test=split_counts["test"],
        ),
        split_seed=seed,
        reason=reason,
        parent_dataset_id=parent_dataset_id,
    )
    log.info("snapshot %s: %d rows at %s", dataset_id, len(rows), path)
    return event
