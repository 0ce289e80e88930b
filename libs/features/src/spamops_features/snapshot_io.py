"""Reading data-set snapshots: one content-addressed parquet file per data set.

The writer is ``spamops_features.snapshot`` (CLI and trainer); the trainer reads with
``load_snapshot``, which refuses a file whose sha256 is not the one the
DatasetReady event announced. The schema is defined here so writer and reader
agree on it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Final, Literal
from urllib.parse import unquote, urlparse
from urllib.request import url2pathname

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

__all__ = [
    "SNAPSHOT_FILENAME",
    "SNAPSHOT_FORMAT_VERSION",
    "SNAPSHOT_SCHEMA",
    "SnapshotError",
    "SnapshotErrorReason",
    "load_snapshot",
    "snapshot_path",
]

SNAPSHOT_FILENAME: Final = "snapshot.parquet"
SNAPSHOT_FORMAT_VERSION: Final = "1"

SNAPSHOT_SCHEMA: Final = pa.schema(
    [
        pa.field("message_key", pa.string(), nullable=False),
        pa.field("source_id", pa.string(), nullable=False),
        pa.field("group", pa.string(), nullable=False),
        pa.field("label", pa.string(), nullable=False),  # spam | ham
        pa.field("split", pa.string(), nullable=False),  # train | validation | test
        pa.field("date", pa.timestamp("us", tz="UTC"), nullable=True),
        pa.field("sender_domain", pa.string(), nullable=False),
        pa.field("subject", pa.string(), nullable=False),
        # The exact bytes, so training recomputes features exactly as inference does.
        pa.field("raw", pa.binary(), nullable=False),
        pa.field("size_bytes", pa.int64(), nullable=False),
    ],
    metadata={"spamops.snapshot.format": SNAPSHOT_FORMAT_VERSION},
)

SnapshotErrorReason = Literal["bad-uri", "missing", "unreadable", "sha256-mismatch", "bad-schema"]


class SnapshotError(RuntimeError):
    """A snapshot cannot be used: ``reason`` says why (missing, wrong sha256, ...)."""

    def __init__(self, reason: SnapshotErrorReason, message: str) -> None:
        self.reason: SnapshotErrorReason = reason
        super().__init__(f"{reason}: {message}")


def snapshot_path(uri: str) -> Path:
    """The local path of a ``file://`` URI (a plain path is accepted too)."""
    parsed = urlparse(uri)
    if parsed.scheme == "file":
        if parsed.netloc not in ("", "localhost"):
            raise SnapshotError("bad-uri", f"remote file URI not supported: {uri}")
        return Path(url2pathname(unquote(parsed.path)))
    if parsed.scheme == "" or (len(parsed.scheme) == 1 and parsed.scheme.isalpha()):
        return Path(uri)  # no scheme (or a Windows drive letter)
    raise SnapshotError("bad-uri", f"unsupported snapshot URI scheme {parsed.scheme!r}: {uri}")


def load_snapshot(uri: str, expected_sha256: str | None) -> pd.DataFrame:
    """Read a snapshot into a DataFrame after checking its sha256 (when given).

    The file is read once and the checked bytes are the ones parsed, so a file
    replaced in between cannot slip through. Raises SnapshotError when the file
    is missing or unreadable, has another sha256, or lacks snapshot columns.
    """
    path = snapshot_path(uri)
    try:
        data = path.read_bytes()
    except FileNotFoundError as exc:
        raise SnapshotError("missing", f"no snapshot at {path}") from exc
    except OSError as exc:
        raise SnapshotError("unreadable", f"cannot read {path}: {exc}") from exc
    if expected_sha256 is not None:
        actual = hashlib.sha256(data).hexdigest()
        if actual != expected_sha256.lower():
            raise SnapshotError(
                "sha256-mismatch", f"{path} has sha256 {actual}, expected {expected_sha256}"
            )
    try:
        table = pq.read_table(pa.BufferReader(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise SnapshotError("unreadable", f"{path} is not a readable parquet file: {exc}") from exc
    missing = [name for name in SNAPSHOT_SCHEMA.names if name not in table.column_names]
    if missing:
        raise SnapshotError("bad-schema", f"{path} lacks snapshot columns {missing}")
    frame: pd.DataFrame = table.to_pandas()
    return frame
