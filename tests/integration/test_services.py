"""The services as processes of the local stack: started by ``up``, stopped by ``down``."""

from __future__ import annotations

import httpx
import pytest
from spamops_cli import stack as local_stack
from spamops_cli.stack.process import is_alive
from spamops_runtime.settings import PlatformSettings

from tests.integration.conftest import StackFactory

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def full_stack(stack_factory: StackFactory) -> PlatformSettings:
    """A stack of its own with everything: infrastructure and the services."""
    return stack_factory(components=None, name="services-stack")


def test_up_starts_every_service_and_each_reports_ready(full_stack: PlatformSettings) -> None:
    rows = {row.name: row for row in local_stack.status(full_stack)}
    for name in local_stack.SERVICE_NAMES:
        row = rows[name]
        assert row.running and row.ready, row
        # Not row.endpoint: the gateway's is its HTTP API, the milter's a main.cf line.
        port = full_stack.service_ports[name]
        metrics = httpx.get(f"http://{full_stack.host}:{port}/metrics", timeout=5).text
        assert f'spamops_service_ready{{service="{name}"}} 1.0' in metrics
    # Every service joined its consumer group: its log says it is ready, as JSON.
    for name in local_stack.SERVICE_NAMES:
        log = (full_stack.state_dir / "logs" / f"{name}.log").read_text()
        assert '"message": "service ready"' in log, log[-2000:]


def test_down_stops_the_services_cleanly(full_stack: PlatformSettings) -> None:
    pids = {row.name: row.pid for row in local_stack.status(full_stack)}
    local_stack.down(full_stack)
    for name, pid in pids.items():
        assert pid is not None and not is_alive(pid), name
    for name in local_stack.SERVICE_NAMES:
        log = (full_stack.state_dir / "logs" / f"{name}.log").read_text()
        assert '"message": "service stopped"' in log, log[-2000:]
