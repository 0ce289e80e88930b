"""Integration fixtures: the real local stack (Kafka, Redis, MLflow, Triton) on free ports.

``stack`` starts one stack for the whole session in a temporary SPAMOPS_HOME and
yields its ``PlatformSettings`` (``stack.kafka_bootstrap``, ``stack.redis``,
``stack.mlflow_uri``, ``stack.triton_http``, ``stack.triton_grpc``,
``stack.state_dir``). Installed tools are shared with the checkout's
``.spamops/tools`` (``SPAMOPS_TOOLS_DIR``), so only the first run installs.

``SPAMOPS_IT_STACK=running`` uses the stack described by the environment
(``spamops up`` beforehand) instead of starting one: handy while iterating.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pytest
from spamops_cli import stack as local_stack
from spamops_runtime.settings import PlatformSettings

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_TOOLS = REPO_ROOT / ".spamops" / "tools"
# The corpus is downloaded once per checkout and shared by every test stack.
SHARED_CORPUS = REPO_ROOT / ".spamops" / "cache" / "corpus"

StackFactory = Callable[..., PlatformSettings]


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free right now on ``host``."""
    sockets = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def free_port_settings(home: Path) -> PlatformSettings:
    """Settings of a stack in ``home`` on free ports (ignoring SPAMOPS_* overrides)."""
    (
        kafka,
        controller,
        redis,
        mlflow,
        http,
        grpc,
        metrics,
        gateway,
        milter,
        evidently,
        *service_ports,
    ) = free_ports(10 + len(local_stack.SERVICE_NAMES))
    return PlatformSettings(
        home=home,
        host="127.0.0.1",
        kafka_port=kafka,
        kafka_controller_port=controller,
        redis_port=redis,
        mlflow_port=mlflow,
        triton_http_port=http,
        triton_grpc_port=grpc,
        triton_metrics_port=metrics,
        gateway_port=gateway,
        milter_port=milter,
        evidently_ui_port=evidently,
        kafka_bootstrap_servers=None,
        redis_url=None,
        mlflow_tracking_uri=None,
        triton_url=None,
        triton_http_url=None,
        gateway_url=None,
        evidently_ui_url=None,
        evidently_workspace=None,
        corpus_cache=SHARED_CORPUS,
        service_ports=dict(zip(local_stack.SERVICE_NAMES, service_ports, strict=True)),
    )


def settings_env(settings: PlatformSettings) -> dict[str, str]:
    """SPAMOPS_* variables that make ``PlatformSettings()`` describe ``settings``."""
    return settings.to_env()


@pytest.fixture(scope="session")
def _shared_tools() -> Iterator[None]:
    """Point the stack at the checkout's installed tools for the session."""
    with pytest.MonkeyPatch.context() as patch:
        if not os.environ.get(local_stack.TOOLS_DIR_ENV):
            patch.setenv(local_stack.TOOLS_DIR_ENV, str(SHARED_TOOLS))
        yield


@pytest.fixture(scope="session")
def stack_factory(
    tmp_path_factory: pytest.TempPathFactory, _shared_tools: None
) -> Iterator[StackFactory]:
    """Start extra, independent stacks: ``stack_factory(components=[...])`` → settings.

    Each gets its own temporary home and free ports; all are stopped at the end
    of the session (tests may also call ``local_stack.down`` themselves).
    """
    started: list[PlatformSettings] = []

    def start(
        components: Iterable[str] | None = local_stack.INFRASTRUCTURE_NAMES, name: str = "stack"
    ) -> PlatformSettings:
        settings = free_port_settings(tmp_path_factory.mktemp(name))
        started.append(settings)
        local_stack.up(settings, components=components)
        return settings

    try:
        yield start
    finally:
        for settings in reversed(started):
            local_stack.down(settings)


@pytest.fixture(scope="session")
def stack(stack_factory: StackFactory) -> PlatformSettings:
    """The session's real local stack, all components ready, topics created."""
    if os.environ.get("SPAMOPS_IT_STACK") == "running":
        settings = PlatformSettings()
        not_ready = [
            s.name
            for s in local_stack.status(settings)
            if s.name in local_stack.INFRASTRUCTURE_NAMES and not s.ready
        ]
        if not_ready:
            pytest.fail(f"SPAMOPS_IT_STACK=running but not ready: {not_ready} (spamops up)")
        return settings
    return stack_factory(name="session-stack")


@pytest.fixture
def stack_env(stack: PlatformSettings, monkeypatch: pytest.MonkeyPatch) -> PlatformSettings:
    """``stack``, with SPAMOPS_* set for this test so ``PlatformSettings()`` finds it."""
    for key, value in settings_env(stack).items():
        monkeypatch.setenv(key, value)
    return stack
