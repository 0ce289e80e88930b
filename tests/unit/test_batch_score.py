"""Batch scoring's pure logic (issue 18): rows -> verdict rows, with serving's semantics.

No Ray, no MLflow: a small pipeline and booster fitted here, shipped through
``ModelArtifacts`` bytes exactly as the Ray actors receive them.
"""

from __future__ import annotations

import json
import tempfile
import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
import xgboost as xgb
from spamops_cli.batch import (
    BATCH_NOTE,
    OUTPUT_COLUMNS,
    PRODUCER,
    REP_DEFAULTS,
    REP_DEGRADED,
    REP_ONLINE,
    ModelArtifacts,
    ScoringModel,
    load_scoring_model,
    rows_table,
    score_rows,
    summarize,
    verdict_events,
)
from spamops_cli.batch_job import is_snapshot, read_inputs, write_verdicts
from spamops_features.mail import message_key, parse_email
from spamops_features.pipeline import REPUTATION_DEFAULTS, FeaturePipeline
from spamops_features.reputation import OnlineReputation


def mail(i: int, spam: bool) -> bytes:
    subject = "FREE money, click now!!!" if spam else f"Re: notes from the meeting {i}"
    body = (
        "CLICK HERE http://198.51.100.7/win to claim your prize!!! Unsubscribe"
        if spam
        else "Hi, attached are the notes. See you on Monday. Regards"
    )
    return (
        f"From: {'promo' if spam else 'colleague'}{i}@{'deals' if spam else 'example'}.com\n"
        f"To: you@example.org\nSubject: {subject}\n"
        f"Message-ID: <u-{uuid.uuid4().hex}@x>\n"
        f"Date: Tue, 1 Oct 2002 10:00:00 +0000\n\n{body} {i}\n"
    ).encode()


@pytest.fixture(scope="module")
def trained() -> tuple[FeaturePipeline, xgb.Booster, ModelArtifacts]:
    raws = [mail(i, i % 2 == 0) for i in range(60)]
    emails = [parse_email(r) for r in raws]
    y = np.array([i % 2 == 0 for i in range(60)], dtype=np.int64)
    pipeline = FeaturePipeline.fit(emails, y)
    x = pipeline.transform(emails)
    booster = xgb.train(
        {"objective": "binary:logistic", "max_depth": 3, "eta": 0.3},
        xgb.DMatrix(x, label=y),
        num_boost_round=10,
    )
    with tempfile.TemporaryDirectory() as tmp:
        pipeline.save(tmp)
        files = {p.name: p.read_bytes() for p in Path(tmp).iterdir()}
    artifacts = ModelArtifacts(
        model_name="spam-detector",
        version=7,
        run_id="r1",
        threshold=0.5,
        pipeline_files=files,
        booster=bytes(booster.save_raw("ubj")),
    )
    return pipeline, booster, artifacts


@pytest.fixture(scope="module")
def model(trained: tuple[FeaturePipeline, xgb.Booster, ModelArtifacts]) -> ScoringModel:
    return load_scoring_model(trained[2])


def items(raws: Sequence[bytes | None], label: str | None = None) -> list[dict[str, Any]]:
    return [
        {"index": i, "source_path": "/in", "source_name": f"{i}.eml", "raw": r, "label": label}
        for i, r in enumerate(raws)
    ]


def test_probabilities_match_the_pipeline_and_booster_computed_directly(
    trained: tuple[FeaturePipeline, xgb.Booster, ModelArtifacts], model: ScoringModel
) -> None:
    pipeline, booster, _ = trained
    raws = [mail(100 + i, i % 3 == 0) for i in range(25)]
    rows = score_rows(items(raws), model)
    x = pipeline.transform([parse_email(r) for r in raws])  # no reputation: the defaults
    direct = booster.predict(xgb.DMatrix(x))
    got = np.array([r["spam_probability"] for r in rows])
    np.testing.assert_allclose(got, direct, atol=1e-6)
    assert [r["message_key"] for r in rows] == [message_key(r, parse_email(r)) for r in raws]
    assert {r["reputation"] for r in rows} == {REP_DEFAULTS}
    # the handcrafted features travel with the row, as the stream's verdicts carry them
    assert json.loads(rows[0]["features"]) == pipeline.handcrafted(parse_email(raws[0]))


def test_the_threshold_decides_at_or_above(
    trained: tuple[FeaturePipeline, xgb.Booster, ModelArtifacts],
) -> None:
    pipeline, _, artifacts = trained
    fixed = [0.2, 0.5, 0.7, 0.69999]

    def predict(x: np.ndarray) -> np.ndarray:
        return np.array(fixed[: len(x)])

    scoring = ScoringModel("spam-detector", 7, 0.7, pipeline, predict)
    rows = score_rows(items([mail(i, False) for i in range(4)]), scoring)
    assert [r["verdict"] for r in rows] == ["ham", "ham", "spam", "ham"]
    assert {r["threshold"] for r in rows} == {0.7}
    # out-of-range probabilities are clipped as the inference service clips them
    wild = ScoringModel("m", 1, 0.5, pipeline, lambda x: np.array([1.5, -0.1][: len(x)]))
    rows = score_rows(items([mail(1, True), mail(2, False)]), wild)
    assert [(r["spam_probability"], r["verdict"]) for r in rows] == [(1.0, "spam"), (0.0, "ham")]
    assert artifacts.threshold == 0.5


def test_unparseable_mail_is_an_error_row_not_a_crash_nor_a_gap(model: ScoringModel) -> None:
    good = mail(1, True)
    raws: list[bytes | None] = [
        good,
        b"",
        b"\x00\x01\x02\xff binary" * 40,
        None,
        b"Subject: x\n\n" + b"a" * 2000,
        mail(2, False),
    ]
    rows = score_rows(items(raws), model, max_message_bytes=1000)
    assert [r["index"] for r in rows] == list(range(6))
    reasons = [r["error"] for r in rows]
    assert reasons == [None, "empty", "not-email", "unreadable", "too-large", None]
    for row in rows[1:5]:
        assert row["verdict"] is None and row["spam_probability"] is None
        assert row["model_version"] == 7 and row["message_key"]
    assert rows[2]["message_key"].startswith("sha256:")
    assert rows[0]["verdict"] in {"spam", "ham"} and rows[5]["verdict"] in {"spam", "ham"}
    summary = summarize(rows_table(rows))
    assert (summary.messages, summary.errors, summary.spam + summary.ham) == (6, 4, 2)
    assert summary.errors_by_reason == {"empty": 1, "not-email": 1, "too-large": 1, "unreadable": 1}


def test_a_message_that_breaks_scoring_fails_alone(
    trained: tuple[FeaturePipeline, xgb.Booster, ModelArtifacts], model: ScoringModel
) -> None:
    pipeline = trained[0]
    poison = mail(3, True)

    def predict(x: np.ndarray) -> np.ndarray:
        if len(x) > 1 or x[0, -1] == poison_score:
            raise RuntimeError("boom")
        return model.predict(x)

    poison_score = pipeline.transform([parse_email(poison)])[0, -1]
    fragile = ScoringModel("spam-detector", 7, 0.5, pipeline, predict)
    rows = score_rows(items([mail(1, False), poison, mail(2, False)]), fragile)
    assert [r["error"] for r in rows] == [None, "scoring-failed", None]
    assert "boom" in rows[1]["error_detail"]


def test_reputation_comes_from_the_lookup_with_serving_semantics(
    trained: tuple[FeaturePipeline, xgb.Booster, ModelArtifacts], model: ScoringModel
) -> None:
    pipeline = trained[0]
    raws = [mail(1, True), mail(2, False)]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    asked: list[tuple[list[str], datetime, list[datetime | None]]] = []
    known = np.array([[12.0, 0.9, 30.0], REPUTATION_DEFAULTS], dtype=np.float32)

    def lookup(domains, at, dates):  # type: ignore[no-untyped-def]
        asked.append((list(domains), at, list(dates)))
        return OnlineReputation(known, degraded=False)

    rows = score_rows(items(raws), model, reputation=lookup, now=now)
    assert asked[0][0] == ["deals.com", "example.com"] and asked[0][1] == now
    x = pipeline.transform([parse_email(r) for r in raws], known)
    np.testing.assert_allclose([r["spam_probability"] for r in rows], model.predict(x), atol=1e-7)
    assert {r["reputation"] for r in rows} == {REP_ONLINE}

    def failing(domains, at, dates):  # type: ignore[no-untyped-def]
        return OnlineReputation(np.tile(REPUTATION_DEFAULTS, (len(domains), 1)), True, "down")

    rows = score_rows(items(raws), model, reputation=failing, now=now)
    assert {r["reputation"] for r in rows} == {REP_DEGRADED}
    assert summarize(rows_table(rows)).reputation == {REP_DEGRADED: 2}


def test_verdict_events_are_marked_as_batch_and_skip_errors(model: ScoringModel) -> None:
    rows = score_rows(items([mail(1, True), b"", mail(2, False)]), model)
    events = verdict_events(rows_table(rows), correlation_id="batch-1")
    assert [e.message_key for e in events] == [rows[0]["message_key"], rows[2]["message_key"]]
    for event, row in zip(events, [rows[0], rows[2]], strict=True):
        assert event.note == BATCH_NOTE and event.producer == PRODUCER
        assert event.environment == "production" and event.correlation_id == "batch-1"
        assert event.spam_probability == row["spam_probability"]
        assert event.model_version == 7 and event.features


def test_inputs_from_folders_mbox_and_snapshots_and_the_output_file(
    tmp_path: Path, model: ScoringModel
) -> None:
    folder = tmp_path / "mails"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.eml").write_bytes(mail(i, i == 0))
    mbox = tmp_path / "box.mbox"
    mbox.write_bytes(b"".join(b"From x@y Tue Oct  1 10:00:00 2002\n" + mail(i, False) + b"\n"
                              for i in range(2)))  # fmt: skip
    read = list(read_inputs(folder))
    assert [r["source_name"] for r in read] == ["0.eml", "1.eml", "2.eml"]
    assert [r["source_name"] for r in read_inputs(mbox)] == ["box.mbox#0", "box.mbox#1"]
    assert not is_snapshot(mbox)

    import pyarrow as pa

    snapshot = tmp_path / "snapshot.parquet"
    pq.write_table(
        pa.table({"source_id": ["a", "b"], "label": ["spam", "ham"], "raw": [mail(1, True), b""]}),
        snapshot,
    )
    assert is_snapshot(snapshot)
    rows = score_rows(list(read_inputs(snapshot)), model)
    assert [(r["source_name"], r["label"]) for r in rows] == [("a", "spam"), ("b", "ham")]
    out = write_verdicts(rows_table(rows), tmp_path / "out" / "verdicts.parquet")
    table = pq.read_table(out)
    assert tuple(table.column_names) == OUTPUT_COLUMNS
    assert "features" not in table.column_names
    assert table.column("verdict").to_pylist()[1] is None
    assert table.column("error").to_pylist() == [None, "empty"]


def test_the_command_refuses_a_missing_path_in_one_line(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    spamops = str(Path(sys.executable).with_name("spamops"))
    env = {**os.environ, "SPAMOPS_HOME": str(tmp_path)}
    done = subprocess.run(
        [spamops, "--json", "score", str(tmp_path / "nothing-here")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 2, done
    assert "no such file or folder" in done.stderr and "Traceback" not in done.stderr
    assert done.stdout.strip() == ""
