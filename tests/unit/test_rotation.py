"""Size-based rotation of log and trace files (issue 20)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from spamops_runtime.rotation import rotate_if_larger
from spamops_runtime.settings import PlatformSettings
from spamops_runtime.tracing import JsonLinesExporter


def test_small_files_and_a_zero_limit_are_left_alone(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    log.write_text("x" * 100)
    assert not rotate_if_larger(log, 100, 3, copytruncate=True)
    assert not rotate_if_larger(log, 0, 3, copytruncate=True)
    assert not rotate_if_larger(tmp_path / "missing.log", 1, 3, copytruncate=True)
    assert log.read_text() == "x" * 100


def test_copytruncate_keeps_an_open_appending_writer_writing_at_the_start(tmp_path: Path) -> None:
    """The stack's processes keep their stdout log open with O_APPEND."""
    log = tmp_path / "service.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        os.write(fd, b"old line\n" * 20)
        assert rotate_if_larger(log, 100, 2, copytruncate=True)
        os.write(fd, b"new line\n")
    finally:
        os.close(fd)
    assert log.read_bytes() == b"new line\n"  # no hole of zeros before it
    assert (tmp_path / "service.log.1").read_bytes() == b"old line\n" * 20


def test_backups_shift_and_the_oldest_falls_off(tmp_path: Path) -> None:
    log = tmp_path / "a.log"
    for generation in range(4):
        log.write_text(f"generation {generation}\n" * 50)
        assert rotate_if_larger(log, 10, 2, copytruncate=False)
    assert not log.exists()
    assert (tmp_path / "a.log.1").read_text().startswith("generation 3")
    assert (tmp_path / "a.log.2").read_text().startswith("generation 2")
    assert not (tmp_path / "a.log.3").exists()


def test_the_trace_exporter_rotates_its_file(tmp_path: Path) -> None:
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor

    path = tmp_path / "traces" / "svc.jsonl"
    provider = TracerProvider()
    provider.add_span_processor(
        SimpleSpanProcessor(JsonLinesExporter(path, max_bytes=2_000, backups=1))
    )
    tracer = provider.get_tracer("test")
    for i in range(60):
        with tracer.start_as_current_span(f"span-{i}"):
            pass
    provider.shutdown()
    assert path.stat().st_size <= 2_000 + 1_000  # at most one batch over the limit
    rotated = tmp_path / "traces" / "svc.jsonl.1"
    assert rotated.is_file() and not (tmp_path / "traces" / "svc.jsonl.2").exists()
    names = [json.loads(line)["name"] for line in path.read_text().splitlines()]
    assert names[-1] == "span-59"


def test_the_limits_are_settings_passed_to_the_services() -> None:
    settings = PlatformSettings(log_max_bytes=1234, log_backups=5)
    env = settings.to_env()
    assert (env["SPAMOPS_LOG_MAX_BYTES"], env["SPAMOPS_LOG_BACKUPS"]) == ("1234", "5")
