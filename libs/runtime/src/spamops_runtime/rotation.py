"""Size-based rotation of log and trace files: ``name`` -> ``name.1`` -> ... ``name.<backups>``.

Two ways, for two kinds of writer:

* ``rename``: for a writer that opens the file for each write (the trace
  exporter): the current file is renamed, the next write creates a new one.
* ``copytruncate``: for a process whose stdout was redirected to the file and
  which keeps it open (every component of the local stack): the file is copied,
  then truncated in place. The writers opened it with O_APPEND, so their next
  write lands at the new end, not at the old offset (logrotate's copytruncate).
  Lines written between the copy and the truncation are lost: a bounded, rare
  loss that logrotate users accept for programs that cannot reopen their log.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

__all__ = ["rotate_if_larger"]


def _shift(path: Path, backups: int) -> None:
    """name.<k-1> -> name.<k> for k = backups .. 2; the oldest falls off."""
    for k in range(backups, 1, -1):
        older = path.with_name(f"{path.name}.{k - 1}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{k}"))


def rotate_if_larger(path: Path, max_bytes: int, backups: int, *, copytruncate: bool) -> bool:
    """Rotate ``path`` when it is larger than ``max_bytes`` (0 = never); True if it did."""
    if max_bytes <= 0:
        return False
    try:
        if path.stat().st_size <= max_bytes:
            return False
    except FileNotFoundError:
        return False
    if backups <= 0:
        if copytruncate:
            os.truncate(path, 0)
        else:
            path.unlink(missing_ok=True)
        return True
    _shift(path, backups)
    first = path.with_name(f"{path.name}.1")
    if copytruncate:
        shutil.copyfile(path, first)
        os.truncate(path, 0)
    else:
        with contextlib.suppress(FileNotFoundError):  # another writer rotated it first
            path.replace(first)
    return True
