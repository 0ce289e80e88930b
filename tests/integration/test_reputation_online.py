"""Sender reputation served from a real Redis through Feast.

Each test starts its own throw-away ``redis-server`` on a free port (no
persistence) and stops it at the end, so stopping Redis in one test cannot
affect another. Only Redis: no Kafka, MLflow or Triton.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import redis
from spamops_features.pipeline import REPUTATION_DEFAULTS
from spamops_features.reputation import FEATURE_VIEW_NAME, ReputationStore

pytestmark = pytest.mark.integration

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
T0 = datetime(2002, 8, 1, 12, 0, tzinfo=UTC)
DAY = timedelta(days=1)


@dataclass
class RedisServer:
    """A redis-server process this test started."""

    process: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=10)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_redis(port: int, directory: Path) -> RedisServer:
    """Start redis-server on ``port`` (no persistence) and wait until it answers PING."""
    process = subprocess.Popen(
        [
            REDIS_SERVER,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
            "--dir",
            str(directory),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    server = RedisServer(process, port)
    client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=0.5)
    deadline = time.monotonic() + 15
    try:
        while True:
            try:
                if client.ping():
                    return server
            except redis.exceptions.ConnectionError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                server.stop()
                pytest.fail(f"redis-server did not answer PING on port {port}")
            time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not Path(REDIS_SERVER).exists():
        pytest.skip("redis-server is not installed (apt-get install -y redis-server)")
    server = start_redis(_free_port(), tmp_path)
    try:
        yield server
    finally:
        server.stop()


def _frame() -> pd.DataFrame:
    frame = pd.DataFrame(
        [
            ("m1", "a.com", T0, "spam", "train"),
            ("m2", "a.com", T0 + DAY, "ham", "train"),
            ("m3", "a.com", T0 + 2 * DAY, "spam", "train"),
            ("m4", "b.org", T0, "ham", "train"),
            ("m5", "c.net", T0, "spam", "test"),  # held out: never a label event
        ],
        columns=["message_key", "sender_domain", "date", "label", "split"],
    )
    frame["date"] = pd.to_datetime(frame["date"], utc=True).astype("datetime64[us, UTC]")
    return frame


@pytest.fixture
def store(redis_server: RedisServer, tmp_path: Path) -> ReputationStore:
    return ReputationStore.open(tmp_path / "feast", redis_server.url)


def test_materialize_then_serve_from_redis(
    store: ReputationStore, redis_server: RedisServer
) -> None:
    store.historical(_frame())
    store.materialize(T0 + 30 * DAY)
    # The states are really in Redis (Feast's hash per entity key).
    assert redis.Redis(port=redis_server.port).dbsize() == 2

    raw = store.store.get_online_features(
        features=[f"{FEATURE_VIEW_NAME}:rep_messages_seen", f"{FEATURE_VIEW_NAME}:rep_spam_rate"],
        entity_rows=[{"sender_domain": "a.com"}, {"sender_domain": "c.net"}],
    ).to_dict()
    assert raw["rep_messages_seen"] == [3.0, None]
    assert raw["rep_spam_rate"][0] == pytest.approx(3 / 5)

    now = T0 + 10 * DAY
    result = store.online(["a.com", "b.org", "c.net", "unseen.example", ""], now)
    assert not result.degraded
    values = result.values.tolist()
    assert values[0] == pytest.approx([3, 3 / 5, 10.0])
    assert values[1] == pytest.approx([1, 1 / 3, 10.0])
    for row in values[2:]:
        assert row == REPUTATION_DEFAULTS.tolist()


def test_push_label_changes_the_next_lookup(store: ReputationStore) -> None:
    store.historical(_frame())
    store.materialize(T0 + 30 * DAY)
    now = datetime(2026, 1, 1, tzinfo=UTC)
    before = store.online(["a.com", "new.example"], now).values
    store.push_label("a.com", "ham", at=now)
    store.push_label("new.example", "spam", at=now, sent_at=now - 2 * DAY)
    after = store.online(["a.com", "new.example"], now + DAY).values
    assert after[0].tolist() == pytest.approx([4, 3 / 6, before[0, 2] + 1.0])
    assert after[1].tolist() == pytest.approx([1, 2 / 3, 3.0])
    # A later materialize of the (older) training states does not undo the pushes.
    store.materialize(T0 + 30 * DAY)
    assert store.online(["a.com"], now).values[0, 0] == 4


def test_redis_down_gives_defaults_without_raising(
    store: ReputationStore, redis_server: RedisServer
) -> None:
    store.historical(_frame())
    store.materialize(T0 + 30 * DAY)
    assert store.online(["a.com"], T0).values[0, 0] == 3
    redis_server.stop()
    started = time.monotonic()
    result = store.online(["a.com", "b.org"], T0 + DAY)
    elapsed = time.monotonic() - started
    assert result.degraded
    assert result.error
    assert np.array_equal(result.values, np.broadcast_to(REPUTATION_DEFAULTS, (2, 3)))
    assert elapsed < 1, f"a down Redis took {elapsed:.1f}s to fail"
    with pytest.raises(redis.exceptions.ConnectionError):
        store.push_label("a.com", "spam", at=T0 + DAY)


def test_serving_recovers_when_redis_comes_back(redis_server: RedisServer, tmp_path: Path) -> None:
    store = ReputationStore.open(tmp_path / "feast", redis_server.url, cooldown=0.2)
    store.historical(_frame())
    store.materialize(T0 + 30 * DAY)
    redis_server.stop()
    assert store.online(["a.com"], T0 + DAY).degraded
    # Within the cooldown: degraded without trying Redis.
    assert store.online(["a.com"], T0 + DAY).error == "skipped: online store failing"
    restarted = start_redis(redis_server.port, tmp_path)
    try:
        time.sleep(0.3)
        store.materialize(T0 + 30 * DAY)  # the new Redis is empty
        result = store.online(["a.com"], T0 + 10 * DAY)
        assert not result.degraded
        assert result.values[0].tolist() == pytest.approx([3, 3 / 5, 10.0])
    finally:
        restarted.stop()
