"""Apache Kafka 4 in KRaft mode (one node, broker and controller) from Maven Central jars."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import shutil
import subprocess
from pathlib import Path

from aiokafka.admin import AIOKafkaAdminClient

from spamops_cli.stack.aio import run_sync
from spamops_cli.stack.component import Component, require_executable
from spamops_cli.stack.paths import StackError, file_lock, stack_source_dir
from spamops_cli.stack.process import port_open

logger = logging.getLogger(__name__)

# The start script's flags, with a heap sized for a laptop / 2-core CI box.
JVM_OPTS = (
    "-Xmx512m",
    "-Xms512m",
    "-server",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-Djava.awt.headless=true",
)
MIN_JAVA = 17


class Kafka(Component):
    """Kafka broker+controller; jars in ``tools/kafka/libs``, log dirs in ``data/kafka``."""

    name = "kafka"
    start_timeout = 90.0
    stop_timeout = 30.0
    _java_path: str | None = None

    # ------------------------------------------------------------ layout
    @property
    def tools_dir(self) -> Path:
        """Installed jars and their completion marker."""
        return self.paths.tools / "kafka"

    @property
    def libs(self) -> Path:
        """The broker's classpath folder."""
        return self.tools_dir / "libs"

    @property
    def marker(self) -> Path:
        """Written last by the install, holding the pom's hash."""
        return self.tools_dir / "installed"

    @property
    def log_dir(self) -> Path:
        """Kafka's own "log dirs" (topic partitions and the KRaft metadata log)."""
        return self.data_dir / "logdir"

    @property
    def server_properties(self) -> Path:
        """Broker configuration, rewritten at each start."""
        return self.data_dir / "server.properties"

    @property
    def log4j_config(self) -> Path:
        """Log4j2 configuration copied from ``stack/kafka/log4j2.properties``."""
        return self.data_dir / "log4j2.properties"

    @property
    def cluster_id_file(self) -> Path:
        """The cluster id the storage was formatted with."""
        return self.data_dir / "cluster.id"

    # ------------------------------------------------------------ contract
    def ports(self) -> list[int]:
        """Client and controller listeners."""
        return [self.settings.kafka_port, self.settings.kafka_controller_port]

    def endpoint(self) -> str:
        """Bootstrap servers of the local broker."""
        return f"{self.settings.host}:{self.settings.kafka_port}"

    def cmdline_marker(self) -> str:
        """The server.properties path is unique to this state directory."""
        return str(self.server_properties)

    def _pom(self) -> Path:
        return stack_source_dir() / "kafka" / "pom.xml"

    def _pom_hash(self, pom: Path) -> str:
        return hashlib.sha256(pom.read_bytes()).hexdigest()

    def is_installed(self) -> bool:
        """Whether a complete ``libs/`` for the current pom is there."""
        try:
            return self.marker.read_text().strip() == self._pom_hash(self._pom())
        except OSError:
            return False

    def install(self) -> None:
        """Resolve the broker's jars with Maven into ``tools/kafka/libs`` (once per pom)."""
        self._java()
        if self.is_installed():
            return
        with file_lock(self.paths.tools / ".kafka-install.lock"):
            if self.is_installed():  # another process finished it meanwhile
                return
            pom = self._pom()
            mvn = require_executable(self.name, "mvn", "Debian package maven")
            logger.info("kafka: resolving the broker's jars with Maven into %s", self.libs)
            # A half-finished download has no marker: start again from empty.
            self.marker.unlink(missing_ok=True)
            shutil.rmtree(self.libs, ignore_errors=True)
            self.libs.mkdir(parents=True)
            self.run_tool(
                [
                    mvn,
                    "-q",
                    "-B",
                    "-f",
                    str(pom),
                    "dependency:copy-dependencies",
                    f"-DoutputDirectory={self.libs}",
                ],
                what="maven dependency:copy-dependencies",
                log=self.paths.logs / "kafka-install.log",
            )
            if not any(self.libs.glob("kafka_2.13-*.jar")):
                raise StackError(f"kafka: Maven finished but {self.libs} has no kafka_2.13 jar")
            self.marker.write_text(self._pom_hash(pom) + "\n")

    def _java(self) -> str:
        if self._java_path is not None:
            return self._java_path
        java = require_executable(
            self.name, "java", f"Java {MIN_JAVA}+, e.g. Debian package openjdk-17-jre-headless"
        )
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False).stderr
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out)
        if match:
            major = int(match.group(1))
            if major == 1 and match.group(2):  # "1.8.0" style
                major = int(match.group(2))
            if major < MIN_JAVA:
                raise StackError(f"kafka: Java {MIN_JAVA}+ is needed, found {major} ({java})")
        self._java_path = java
        return java

    def _classpath(self) -> str:
        return f"{self.libs}/*"  # expanded by the JVM itself, no shell involved

    def _properties(self) -> str:
        s = self.settings
        ctl = f"{s.host}:{s.kafka_controller_port}"
        values = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": ctl,
            "listeners": f"PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{ctl}",
            "advertised.listeners": f"PLAINTEXT://{s.host}:{s.kafka_port},CONTROLLER://{ctl}",
            "inter.broker.listener.name": "PLAINTEXT",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "log.dirs": str(self.log_dir),
            "num.partitions": "1",
            "auto.create.topics.enable": "false",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            # One broker: every internal topic must fit on it.
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            # Consumers of a fresh group start at once instead of after 3 s.
            "group.initial.rebalance.delay.ms": "0",
        }
        lines = ["# Generated by spamops at each start; edits are overwritten."]
        lines += [f"{key}={value}" for key, value in values.items()]
        return "\n".join(lines) + "\n"

    def prepare(self) -> None:
        """Write server.properties and the log4j2 config; format the storage once."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.server_properties.write_text(self._properties())
        shutil.copyfile(stack_source_dir() / "kafka" / "log4j2.properties", self.log4j_config)
        if (self.log_dir / "meta.properties").exists():
            return
        java = self._java()
        base = [java, f"-Dlog4j2.configurationFile={self.log4j_config}", "-cp", self._classpath()]
        cluster_id = ""
        with contextlib.suppress(OSError):
            cluster_id = self.cluster_id_file.read_text().strip()
        if not cluster_id:
            out = self.run_tool(
                [*base, "kafka.tools.StorageTool", "random-uuid"], what="storage random-uuid"
            )
            cluster_id = out.strip().splitlines()[-1].strip()
            self.cluster_id_file.write_text(cluster_id + "\n")
        logger.info("kafka: formatting the KRaft storage (cluster id %s)", cluster_id)
        self.run_tool(
            [
                *base,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(self.server_properties),
            ],
            what="storage format",
        )

    def command(self) -> list[str]:
        """``java … kafka.Kafka server.properties``."""
        return [
            self._java(),
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={self.log4j_config}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(self.server_properties),
        ]

    def is_ready(self, timeout: float = 2.0) -> bool:
        """An admin client can fetch the cluster's metadata."""
        if not port_open(self.settings.host, self.settings.kafka_port):
            return False  # spares aiokafka's connection-refused error logs
        return run_sync(lambda: kafka_metadata_ok(self.endpoint(), timeout))


async def kafka_metadata_ok(bootstrap: str, limit_s: float) -> bool:
    """Whether a metadata request (list topics) to ``bootstrap`` succeeds in ``limit_s``."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=max(1000, int(limit_s * 1000))
    )
    try:
        async with asyncio.timeout(limit_s):
            await admin.start()
            await admin.list_topics()
        return True
    except Exception:  # any failure means "not ready yet"
        return False
    finally:
        with contextlib.suppress(Exception):
            await admin.close()
