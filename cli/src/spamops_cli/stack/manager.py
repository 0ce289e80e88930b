"""``up``, ``down``, ``status`` and ``install`` of the local stack."""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from spamops_runtime.settings import PlatformSettings

from spamops_cli.stack.component import Component
from spamops_cli.stack.evidently_ui import EvidentlyUI
from spamops_cli.stack.kafka_broker import Kafka
from spamops_cli.stack.mlflow_server import MLflow
from spamops_cli.stack.paths import StackError, StackPaths, file_lock
from spamops_cli.stack.process import (
    cmdline,
    exit_code,
    group_members,
    group_rss_bytes,
    is_alive,
    kill_group,
    port_in_use,
    read_pid,
    start_detached,
    terminate_group,
    wait_group_gone,
)
from spamops_cli.stack.redis_server import Redis
from spamops_cli.stack.services import SERVICES, Service
from spamops_cli.stack.triton_server import Triton

logger = logging.getLogger(__name__)

# Start order; stopped in reverse. The services start once the infrastructure is ready.
INFRASTRUCTURE: tuple[type[Component], ...] = (Kafka, Redis, MLflow, Triton)
# For people, not for the services: started with the infrastructure by a plain `up`, but
# not part of INFRASTRUCTURE (what the services need, what test stacks start).
VIEWERS: tuple[type[Component], ...] = (EvidentlyUI,)
COMPONENTS: tuple[type[Component], ...] = (*INFRASTRUCTURE, *VIEWERS, *SERVICES)
COMPONENT_NAMES: tuple[str, ...] = tuple(c.name for c in COMPONENTS)
INFRASTRUCTURE_NAMES: tuple[str, ...] = tuple(c.name for c in INFRASTRUCTURE)
VIEWER_NAMES: tuple[str, ...] = tuple(c.name for c in VIEWERS)
SERVICE_NAMES: tuple[str, ...] = tuple(c.name for c in SERVICES)
UNKNOWN_STOP_TIMEOUT = 30.0
PORT_RELEASE_WAIT_S = 10.0


@dataclass(frozen=True)
class ComponentStatus:
    """What ``status`` knows about one component."""

    name: str
    running: bool
    pid: int | None
    ready: bool
    endpoint: str
    detail: str
    rss_bytes: int = 0  # resident memory of the process group (0 if not running)
    restarts: int = 0  # times `spamops up --watch` started it again after a crash


def _all(settings: PlatformSettings, paths: StackPaths) -> dict[str, Component]:
    return {cls.name: cls(settings, paths) for cls in COMPONENTS}


def _select(settings: PlatformSettings, components: Iterable[str] | None) -> list[Component]:
    every = _all(settings, StackPaths.from_settings(settings))
    if components is None:
        return list(every.values())
    names = list(dict.fromkeys(components))  # dedupe, keep the caller's order for errors
    unknown = [name for name in names if name not in every]
    if unknown:
        raise StackError(f"unknown component(s) {unknown}; known: {list(COMPONENT_NAMES)}")
    return [every[name] for name in COMPONENT_NAMES if name in names]


def install(settings: PlatformSettings, components: Iterable[str] | None = None) -> None:
    """Install (or check) what the components need; idempotent, ``tools/`` only."""
    selected = _select(settings, components)
    StackPaths.from_settings(settings).ensure()
    # Maven and uv mostly wait on the network or disk: run them side by side.
    with ThreadPoolExecutor(max_workers=len(selected)) as pool:
        for future in [pool.submit(c.install) for c in selected]:
            future.result()


def up(
    settings: PlatformSettings, *, fresh: bool = False, components: Iterable[str] | None = None
) -> None:
    """Install what is missing, start each component and wait until it is ready.

    Already running components (pid file, live process, ready) are left alone,
    so calling it twice is harmless. ``fresh`` stops the selected components and
    wipes their data first. Raises StackError naming the component that failed,
    with the tail of its log. Topics of the catalogue are created once Kafka is up.
    """
    from spamops_cli.stack.supervisor import rotate_logs

    selected = _select(settings, components)
    paths = StackPaths.from_settings(settings)
    paths.ensure()
    with file_lock(paths.run / ".lock"):
        rotate_logs(settings)  # a process appends to its log on every start
        if fresh:
            # Wiping everything: processes started beside the stack (services) go too.
            _stop(paths, selected, others=components is None)
            for component in selected:
                logger.info("%s: wiping %s", component.name, component.data_dir)
                shutil.rmtree(component.data_dir, ignore_errors=True)
        install(settings, [c.name for c in selected])
        infrastructure = [c for c in selected if not isinstance(c, Service)]
        services = [c for c in selected if isinstance(c, Service)]
        # Services need Kafka and its topics: they start in a second wave.
        for wave in (infrastructure, services):
            started: dict[str, float] = {}
            for component in wave:
                if component.running_pid() is None:
                    _start(component)
                    started[component.name] = time.monotonic()
            for component in wave:
                _wait_ready(component, started.get(component.name))
                if isinstance(component, Kafka):
                    # The local broker, even if SPAMOPS_KAFKA_BOOTSTRAP_SERVERS points elsewhere:
                    # topics (and, with --secure, the ACLs) as the stack's admin.
                    component.after_ready()


def _start(component: Component) -> None:
    settings = component.settings
    component.pid_file.unlink(missing_ok=True)  # stale: its process is gone
    busy = [port for port in component.ports() if port_in_use(settings.host, port)]
    # A process killed a moment ago may still be closing its sockets (its other
    # threads outlive the leader's zombie): give the ports a few seconds.
    deadline = time.monotonic() + PORT_RELEASE_WAIT_S
    while busy and time.monotonic() < deadline:
        time.sleep(0.2)
        busy = [port for port in busy if port_in_use(settings.host, port)]
    if busy:
        raise StackError(
            f"{component.name}: port(s) {busy} on {settings.host} are already in use by "
            "another process (another stack, or a system service such as redis-server: "
            "stop it or choose other SPAMOPS_*_PORT values)"
        )
    try:
        component.prepare()
        pid = start_detached(
            component.command(),
            log_file=component.log_file,
            pid_file=component.pid_file,
            env=component.env(),
            cwd=component.data_dir,
        )
    except OSError as exc:  # unwritable data dir, missing executable, ...
        raise component.fail(f"cannot start: {exc}") from exc
    logger.info("%s: started (pid %d), log %s", component.name, pid, component.log_file)


def _wait_ready(component: Component, started_at: float | None) -> None:
    pid = read_pid(component.pid_file)
    if started_at is None and component.is_ready():
        logger.info("%s: already running (pid %s)", component.name, pid)
        return
    begin = started_at or time.monotonic()
    deadline = begin + component.start_timeout
    while True:
        if pid is None or not is_alive(pid):
            code = exit_code(pid) if pid is not None else None
            component.pid_file.unlink(missing_ok=True)
            how = f" with exit code {code}" if code is not None else ""
            raise component.fail(f"exited during start-up{how}")
        if component.is_ready(timeout=2.0):
            logger.info("%s: ready in %.1fs", component.name, time.monotonic() - begin)
            return
        if time.monotonic() >= deadline:
            # A half-started process would be "running" forever: stop it.
            _stop_pid(component.name, pid, component.stop_timeout)
            component.pid_file.unlink(missing_ok=True)
            raise component.fail(f"not ready after {component.start_timeout:.0f}s (stopped it)")
        time.sleep(0.25)


def down(settings: PlatformSettings) -> None:
    """Stop what ``up`` started (every ``run/*.pid``): SIGTERM, SIGKILL after a timeout.

    Data is kept; pid files are removed.
    """
    paths = StackPaths.from_settings(settings)
    if not paths.run.is_dir():
        return
    with file_lock(paths.run / ".lock"):
        _stop(paths, list(_all(settings, paths).values()), others=True)


def stop(settings: PlatformSettings, components: Iterable[str]) -> None:
    """Stop only ``components`` (SIGTERM, SIGKILL after a timeout); ``up`` starts them again.

    For operations and fault drills: e.g. stop Triton for a while, or restart Kafka
    under running services. Data and the other components are left alone.
    """
    paths = StackPaths.from_settings(settings)
    if not paths.run.is_dir():
        return
    with file_lock(paths.run / ".lock"):
        _stop(paths, _select(settings, components))


def _stop(paths: StackPaths, components: list[Component], *, others: bool = False) -> None:
    """Stop ``components``; with ``others``, first every other pid file of ``run/``.

    Other pid files are processes started next to the stack (the services):
    they go first, while Kafka is still there for their last commits.
    """
    if others:
        names = set(COMPONENT_NAMES)
        extra = [p for p in sorted(paths.run.glob("*.pid")) if p.stem not in names]
        _stop_pid_files([(p, None) for p in extra])
    # Services first, while Kafka is still there for their last commits; no ordering
    # is needed between the infrastructure processes: stop them together.
    services = [c for c in components if isinstance(c, Service)]
    _stop_pid_files([(c.pid_file, c) for c in reversed(services)])
    _stop_pid_files([(c.pid_file, c) for c in reversed(components) if c not in services])


def _is_ours(pid: int, component: Component | None) -> bool:
    """Whether ``pid`` (or what is left of its process group) is something we started."""
    if is_alive(pid):
        if component is not None:
            return component.cmdline_marker() in cmdline(pid)
        # Not one of ours by name: it must at least lead the session we gave it.
        return bool(group_members(pid))
    # Leader gone but helpers (workers, stubs) may remain in its session.
    return bool(group_members(pid))


def _stop_pid_files(files: list[tuple[Path, Component | None]]) -> None:
    waiting: list[tuple[str, int, float, Path]] = []
    for pid_file, component in files:
        name = component.name if component else pid_file.stem
        pid = read_pid(pid_file)
        if pid is None or not _is_ours(pid, component):
            pid_file.unlink(missing_ok=True)  # stale
            continue
        logger.info("%s: stopping (pid %d)", name, pid)
        terminate_group(pid)
        timeout = component.stop_timeout if component else UNKNOWN_STOP_TIMEOUT
        waiting.append((name, pid, timeout, pid_file))
    for name, pid, timeout, pid_file in waiting:
        _await_stop(name, pid, timeout)
        pid_file.unlink(missing_ok=True)


def _await_stop(name: str, pid: int, timeout: float) -> None:
    """Wait for a SIGTERMed group to exit, SIGKILL it after ``timeout``."""
    if not wait_group_gone(pid, timeout):
        logger.warning("%s: still running after %.0fs, killing it", name, timeout)
        kill_group(pid)


def _stop_pid(name: str, pid: int, timeout: float) -> None:
    terminate_group(pid)
    _await_stop(name, pid, timeout)


def status(settings: PlatformSettings) -> list[ComponentStatus]:
    """Each component: our process running?, ready?, endpoint, a short detail, memory."""
    from spamops_cli.stack.supervisor import restarts

    paths = StackPaths.from_settings(settings)
    restarted = restarts(settings)
    result = []
    for component in _all(settings, paths).values():
        pid = read_pid(component.pid_file)
        running_pid = component.running_pid()
        ready = component.is_ready(timeout=2.0)
        rss = group_rss_bytes(running_pid) if running_pid else 0
        if running_pid and ready:
            detail = f"rss {rss / 2**20:.0f} MiB"
        elif running_pid:
            detail = f"starting or unhealthy, see {component.log_file}"
        elif ready:
            detail = "answering, but not started by this spamops state dir"
        elif pid is not None:
            detail = f"stale pid file {component.pid_file}"
        else:
            detail = "not started"
        result.append(
            ComponentStatus(
                name=component.name,
                running=running_pid is not None,
                pid=running_pid,
                ready=ready,
                endpoint=component.endpoint(),
                detail=detail,
                rss_bytes=rss,
                restarts=int(restarted.get(component.name, {}).get("count", 0)),
            )
        )
    return result
