"""The CLI's contract with scripts: one error line on a Kafka outage, JSON on stdout (issue 20)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from spamops_cli.lookup import partition_of

SPAMOPS = str(Path(sys.executable).with_name("spamops"))


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])  # closed again when the block ends


def _spamops(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "SPAMOPS_KAFKA_PORT": str(_closed_port()),
        "SPAMOPS_HOME": str(tmp_path),  # a plain state directory: no secure-stack credentials
    }
    env.pop("SPAMOPS_KAFKA_BOOTSTRAP_SERVERS", None)
    return subprocess.run(
        [SPAMOPS, *args], env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    "args",
    [
        ("verdicts",),
        ("verdict", "some-key"),
        ("--json", "verdict", "some-key"),
        ("label", "some-key", "spam"),
        ("approve", "spam-detector", "1", "--by", "me"),
        ("drift",),
    ],
)
def test_a_kafka_outage_is_one_line_and_exit_code_1(args: tuple[str, ...], tmp_path: Path) -> None:
    done = _spamops(*args, tmp_path=tmp_path)
    assert done.returncode == 1, done
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert "Kafka at 127.0.0.1:" in lines[0] and "not reachable" in lines[0]
    assert done.stdout.strip() == ""  # nothing a script could mistake for a result


def test_json_mode_prints_one_json_document_on_stdout(tmp_path: Path) -> None:
    done = _spamops("--json", "schema", "EmailLabeled", tmp_path=tmp_path)
    assert done.returncode == 0, done
    assert json.loads(done.stdout)["title"] == "EmailLabeled"


def test_verdicts_are_looked_up_in_the_partition_the_producer_chose() -> None:
    """Java Kafka's murmur2 partitioner: test vectors from Kafka's UtilsTest."""
    java_murmur2 = {"21": -973932308, "foobar": -790332482, "abc": 479470107}
    for key, signed in java_murmur2.items():
        assert partition_of(key, list(range(6))) == (signed & 0x7FFFFFFF) % 6
        assert partition_of(key, list(range(7))) == (signed & 0x7FFFFFFF) % 7
