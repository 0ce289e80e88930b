"""Where the local stack keeps its tools, data, logs and pid files.

Layout under ``settings.state_dir``::

    tools/            installed things (``--fresh`` keeps them); ``SPAMOPS_TOOLS_DIR`` overrides
    data/<component>  what ``--fresh`` wipes and ``down``/``up`` keeps
    logs/<component>.log
    run/<component>.pid
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from spamops_runtime.settings import PlatformSettings

TOOLS_DIR_ENV = "SPAMOPS_TOOLS_DIR"
STACK_DIR_ENV = "SPAMOPS_STACK_DIR"


class StackError(RuntimeError):
    """A component of the local stack could not be installed, started or stopped."""


@dataclass(frozen=True)
class StackPaths:
    """Absolute paths of the stack's directories for one state directory."""

    state: Path
    tools: Path

    @classmethod
    def from_settings(cls, settings: PlatformSettings) -> StackPaths:
        """Paths for ``settings``; the tools dir may be shared between states (tests do)."""
        state = settings.state_dir
        override = os.environ.get(TOOLS_DIR_ENV)
        tools = Path(override).expanduser().resolve() if override else state / "tools"
        return cls(state=state, tools=tools)

    @property
    def data(self) -> Path:
        """Parent of every component's data directory."""
        return self.state / "data"

    @property
    def logs(self) -> Path:
        """Log files of the started processes."""
        return self.state / "logs"

    @property
    def run(self) -> Path:
        """Pid files of the started processes."""
        return self.state / "run"

    def data_dir(self, component: str) -> Path:
        """Data directory of ``component``."""
        return self.data / component

    def log_file(self, component: str) -> Path:
        """Log file of ``component``."""
        return self.logs / f"{component}.log"

    def pid_file(self, component: str) -> Path:
        """Pid file of ``component``."""
        return self.run / f"{component}.pid"

    def ensure(self) -> None:
        """Create the top-level directories."""
        for path in (self.tools, self.data, self.logs, self.run):
            path.mkdir(parents=True, exist_ok=True)


def stack_source_dir() -> Path:
    """The repository's ``stack/`` folder (Kafka's pom and log4j2 template).

    Found through ``SPAMOPS_STACK_DIR``, else upwards from this file (editable
    install in the workspace), else upwards from the working directory.
    """
    override = os.environ.get(STACK_DIR_ENV)
    if override:
        return Path(override).expanduser().resolve()
    for start in (Path(__file__).resolve(), Path.cwd().resolve()):
        for parent in (start, *start.parents):
            candidate = parent / "stack"
            if (candidate / "kafka" / "pom.xml").is_file():
                return candidate
    raise StackError(
        "cannot find the repository's stack/kafka/pom.xml: run from the spamops checkout "
        f"or set {STACK_DIR_ENV}"
    )


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on ``path`` (serialises concurrent up/down/install)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
