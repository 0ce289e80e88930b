"""Detached processes: start, pid files, liveness, process-group stop, memory, ports.

Every component is started in a session of its own (``start_new_session``), so
its pid is also its process-group id: stopping the group stops the helpers it
forked too (MLflow's uvicorn workers, Triton's Python-backend stubs).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path

logger = logging.getLogger(__name__)

# Popen objects of the processes this interpreter started: keeping them alive
# avoids ResourceWarnings and lets us reap them (a zombie would look alive).
_children: dict[int, subprocess.Popen[bytes]] = {}

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def read_pid(pid_file: Path) -> int | None:
    """The pid stored in ``pid_file``, or None if absent or unreadable."""
    try:
        return int(pid_file.read_text().strip())
    except (OSError, ValueError):
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` from the state (field 3) on, or None."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses.
    return text[text.rindex(")") + 2 :].split()


def _reap(pid: int) -> None:
    child = _children.get(pid)
    if child is not None:
        child.poll()  # reaps it if it exited; keeps the exit code for exit_code()
        return
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    _reap(pid)
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def exit_code(pid: int) -> int | None:
    """Exit code of a process this interpreter started, if it has exited."""
    child = _children.get(pid)
    return None if child is None else child.poll()


def cmdline(pid: int) -> str:
    """The command line of ``pid`` joined by spaces ('' if gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def group_members(pgid: int) -> list[int]:
    """Live processes whose process group is ``pgid`` and session is ``pgid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        fields = _stat_fields(int(entry.name))
        # fields: 0 state, 1 ppid, 2 pgrp, 3 session
        if fields and fields[0] not in ("Z", "X") and int(fields[2]) == pgid == int(fields[3]):
            members.append(int(entry.name))
    return members


def group_rss_bytes(pgid: int) -> int:
    """Resident memory of every process of the group ``pgid`` (leader included)."""
    total = 0
    for pid in group_members(pgid):
        fields = _stat_fields(pid)
        if fields:
            total += int(fields[21]) * _PAGE_SIZE  # field 24: rss in pages
    return total


def start_detached(
    cmd: Sequence[str],
    *,
    log_file: Path,
    pid_file: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> int:
    """Start ``cmd`` in its own session, output appended to ``log_file``; write its pid."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    pid_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        stamp = datetime.now(UTC).isoformat(timespec="seconds")
        log.write(f"\n===== {stamp} spamops starts: {' '.join(cmd)}\n".encode())
        log.flush()
        child = subprocess.Popen(
            list(cmd),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,  # survives the CLI; pid == process group id
        )
    _children[child.pid] = child
    tmp = pid_file.with_suffix(".pid.tmp")
    tmp.write_text(f"{child.pid}\n")
    tmp.replace(pid_file)
    logger.debug("started %s (pid %d)", cmd[0], child.pid)
    return child.pid


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def terminate_group(pgid: int) -> None:
    """Send SIGTERM to the process group ``pgid``."""
    _signal_group(pgid, signal.SIGTERM)


def wait_group_gone(pgid: int, timeout: float) -> bool:
    """Wait until no process of the group is left; True if it went away in time."""
    deadline = time.monotonic() + timeout
    while True:
        _reap(pgid)
        if not group_members(pgid):
            _children.pop(pgid, None)
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)


def kill_group(pgid: int) -> None:
    """SIGKILL the process group ``pgid`` and wait briefly for it to vanish."""
    _signal_group(pgid, signal.SIGKILL)
    wait_group_gone(pgid, 5.0)


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file ('' if it does not exist)."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 64 * 1024))
            data = handle.read()
    except OSError:
        return ""
    return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


def port_in_use(host: str, port: int) -> bool:
    """Whether something already listens on (or holds) ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # Same option servers use, so TIME_WAIT leftovers of a stopped server do not count.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether a TCP connection to ``host:port`` succeeds."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False
