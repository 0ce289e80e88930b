"""Reading raw messages from a user's files: `.eml` files, folders, maildirs, mbox files."""

from __future__ import annotations

import mailbox
from collections.abc import Iterator
from pathlib import Path

_SKIP_SUFFIXES = {".json", ".csv", ".md", ".txt.gz"}


def _is_mbox(path: Path) -> bool:
    with path.open("rb") as handle:
        return handle.read(5) == b"From "


def iter_raw_messages(path: Path) -> Iterator[tuple[str, bytes]]:
    """Yield ``(name, raw bytes)`` for every message under ``path``.

    A file is one message, unless it starts with an mbox ``From `` line; a
    maildir (``cur``/``new``) and any other folder are walked in sorted order.
    """
    if path.is_file():
        if _is_mbox(path):
            box = mailbox.mbox(path, create=False)
            for index, key in enumerate(box.iterkeys()):
                yield f"{path.name}#{index}", box.get_bytes(key)
        else:
            yield path.name, path.read_bytes()
        return
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if (path / "cur").is_dir() or (path / "new").is_dir():
        for sub in ("new", "cur"):
            folder = path / sub
            if folder.is_dir():
                for item in sorted(folder.iterdir()):
                    if item.is_file():
                        yield item.name, item.read_bytes()
        return
    for item in sorted(path.rglob("*")):
        if item.is_file() and not item.name.startswith(".") and item.suffix not in _SKIP_SUFFIXES:
            yield from iter_raw_messages(item)
