"""Redis (Debian's ``redis-server``), RDB snapshots in ``data/redis``."""

from __future__ import annotations

import redis

from spamops_cli.stack.component import Component, require_executable


class Redis(Component):
    """Online feature store and dedup cache; saved to ``data/redis/dump.rdb``."""

    name = "redis"
    start_timeout = 20.0
    stop_timeout = 20.0

    def ports(self) -> list[int]:
        """The client port."""
        return [self.settings.redis_port]

    def endpoint(self) -> str:
        """Client URL."""
        return f"redis://{self.settings.host}:{self.settings.redis_port}/0"

    def cmdline_marker(self) -> str:
        """Redis rewrites its process title to ``redis-server host:port``."""
        return "redis-server"

    def install(self) -> None:
        """Only checks the binary: it comes from apt (scripts/bootstrap.sh)."""
        require_executable(self.name, "redis-server", "Debian package redis-server")

    def prepare(self) -> None:
        """Create the data directory."""
        self.data_dir.mkdir(parents=True, exist_ok=True)

    def command(self) -> list[str]:
        """Foreground server; snapshot every minute with a change and at shutdown."""
        s = self.settings
        return [
            require_executable(self.name, "redis-server", "Debian package redis-server"),
            "--bind", s.host,
            "--port", str(s.redis_port),
            "--dir", str(self.data_dir),
            "--dbfilename", "dump.rdb",
            "--save", "60", "1",
            "--appendonly", "no",
            "--daemonize", "no",
            "--protected-mode", "yes",
        ]  # fmt: skip

    def is_ready(self, timeout: float = 2.0) -> bool:
        """PING answers PONG."""
        client = redis.Redis(
            host=self.settings.host,
            port=self.settings.redis_port,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()
