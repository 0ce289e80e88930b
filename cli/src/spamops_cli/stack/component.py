"""What every component of the local stack provides to the manager."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import ClassVar

from spamops_runtime.settings import PlatformSettings

from spamops_cli.stack.paths import StackError, StackPaths
from spamops_cli.stack.process import cmdline, is_alive, read_pid, tail

logger = logging.getLogger(__name__)

BOOTSTRAP_HINT = "run scripts/bootstrap.sh to install the local stack's prerequisites"


class Component(ABC):
    """One process of the local stack: install, configure, command line, readiness."""

    name: ClassVar[str]
    start_timeout: ClassVar[float] = 60.0
    stop_timeout: ClassVar[float] = 30.0

    def __init__(self, settings: PlatformSettings, paths: StackPaths) -> None:
        self.settings = settings
        self.paths = paths

    # ------------------------------------------------------------ layout
    @property
    def data_dir(self) -> Path:
        """What ``--fresh`` wipes and ``down``/``up`` keeps."""
        return self.paths.data_dir(self.name)

    @property
    def log_file(self) -> Path:
        """stdout and stderr of the process."""
        return self.paths.log_file(self.name)

    @property
    def pid_file(self) -> Path:
        """Pid of the process ``up`` started."""
        return self.paths.pid_file(self.name)

    # ------------------------------------------------------------ contract
    @abstractmethod
    def ports(self) -> Sequence[int]:
        """TCP ports the process binds on ``settings.host``."""

    @abstractmethod
    def endpoint(self) -> str:
        """Where clients reach it (for ``status``)."""

    @abstractmethod
    def cmdline_marker(self) -> str:
        """A substring of the process's command line, to tell it from a reused pid."""

    def install(self) -> None:  # noqa: B027 - optional hook, most components only check
        """Install what is missing (idempotent); raise StackError if impossible."""

    @abstractmethod
    def prepare(self) -> None:
        """Create the data directory and write configuration before a start."""

    @abstractmethod
    def command(self) -> list[str]:
        """The command line that runs the component in the foreground."""

    def env(self) -> dict[str, str]:
        """Environment of the process."""
        return dict(os.environ)

    @abstractmethod
    def is_ready(self, timeout: float = 2.0) -> bool:
        """Whether the component answers its clients."""

    # ------------------------------------------------------------ helpers
    def running_pid(self) -> int | None:
        """Pid from the pid file if that process is alive and is this component."""
        pid = read_pid(self.pid_file)
        if pid is None or not is_alive(pid):
            return None
        if self.cmdline_marker() not in cmdline(pid):
            logger.warning("%s: pid %d from %s is another program", self.name, pid, self.pid_file)
            return None
        return pid

    def fail(self, message: str) -> StackError:
        """A StackError naming this component, with the tail of its log."""
        last = tail(self.log_file)
        text = f"{self.name}: {message}"
        if last:
            text += f"\n--- last lines of {self.log_file} ---\n{last}"
        return StackError(text)

    def run_tool(self, cmd: Sequence[str], *, what: str, log: Path | None = None) -> str:
        """Run a short helper command to completion, output appended to a log.

        Returns its stdout; raises a StackError with the tail on failure.
        """
        log = log or self.log_file
        log.parent.mkdir(parents=True, exist_ok=True)
        result = subprocess.run(
            list(cmd), stdin=subprocess.DEVNULL, capture_output=True, text=True, check=False
        )
        output = result.stdout + result.stderr
        with log.open("a") as handle:
            handle.write(f"\n===== {what}: {' '.join(cmd)}\n{output}")
        if result.returncode != 0:
            lines = "\n".join(output.splitlines()[-40:])
            raise StackError(
                f"{self.name}: {what} failed (exit {result.returncode}): {' '.join(cmd)}\n"
                f"--- last lines (full output in {log}) ---\n{lines}"
            )
        return result.stdout


def require_executable(component: str, program: str, package: str) -> str:
    """Absolute path of ``program`` on PATH, or a StackError telling how to get it."""
    found = shutil.which(program)
    if found is None:
        raise StackError(
            f"{component}: `{program}` not found on PATH ({package}); {BOOTSTRAP_HINT}"
        )
    return found
