"""Apache Kafka 4 in KRaft mode (one node, broker and controller) from Maven Central jars.

Plain by default. With ``kafka_security_protocol=SASL_PLAINTEXT`` (``spamops up
--secure``) the client listener takes SASL/SCRAM-SHA-512 only, the
StandardAuthorizer enforces the ACL table (``spamops_runtime.acl``), ``admin``
is the only super user, and the controller listener (127.0.0.1 too) takes SASL
PLAIN with a static password known to the broker alone. The SCRAM users are
written into the storage when it is formatted (``StorageTool format
--add-scram``), the ACLs are (re)created at every start.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import re
import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient
from spamops_runtime.acl import ADMIN, principals
from spamops_runtime.settings import SASL_MECHANISM, PlatformSettings

from spamops_cli.stack import secrets
from spamops_cli.stack.aio import run_sync
from spamops_cli.stack.component import Component, require_executable
from spamops_cli.stack.paths import StackError, file_lock, stack_source_dir
from spamops_cli.stack.process import port_open
from spamops_cli.stack.topics import ensure_acls_async, ensure_topics_async

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

    @property
    def scram_users_file(self) -> Path:
        """The SCRAM users (and a digest of their passwords) the storage was formatted with."""
        return self.data_dir / "scram-users"

    @property
    def secure(self) -> bool:
        """SASL/SCRAM and ACLs on (``kafka_security_protocol`` is not PLAINTEXT)."""
        return self.settings.kafka_secure

    def running_secure(self) -> bool | None:
        """Whether the running broker (if any) was started secure; None if not running."""
        if self.running_pid() is None:
            return None
        try:
            return "authorizer.class.name=" in self.server_properties.read_text()
        except OSError:
            return None

    def admin_settings(self) -> PlatformSettings:
        """The settings the stack itself uses as a Kafka client (the admin when secure)."""
        if not self.secure:
            return self.settings
        return secrets.as_local_user(self.settings, ADMIN)

    def admin_options(self) -> dict[str, Any]:
        """aiokafka options of the stack's own admin client (empty when plain)."""
        return self.admin_settings().kafka_client_options()

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

    def _security_properties(self) -> dict[str, str]:
        """SASL listeners, the authorizer and the super user (secure mode only)."""
        admin = secrets.read_password(self.settings, ADMIN)
        controller = secrets.read_password(self.settings, secrets.CONTROLLER_SECRET)
        scram = "org.apache.kafka.common.security.scram.ScramLoginModule"
        plain = "org.apache.kafka.common.security.plain.PlainLoginModule"
        return {
            "listener.security.protocol.map": "CONTROLLER:SASL_PLAINTEXT,CLIENT:SASL_PLAINTEXT",
            "sasl.enabled.mechanisms": SASL_MECHANISM,
            "sasl.mechanism.inter.broker.protocol": SASL_MECHANISM,
            "listener.name.client.sasl.enabled.mechanisms": SASL_MECHANISM,
            "listener.name.client.scram-sha-512.sasl.jaas.config": (
                f'{scram} required username="{ADMIN}" password="{admin}";'
            ),
            # SCRAM users live in the metadata log, which the controller serves: its own
            # listener uses PLAIN with a static password only this broker knows.
            "sasl.mechanism.controller.protocol": "PLAIN",
            "listener.name.controller.sasl.enabled.mechanisms": "PLAIN",
            "listener.name.controller.plain.sasl.jaas.config": (
                f'{plain} required username="{ADMIN}" password="{controller}" '
                f'user_{ADMIN}="{controller}";'
            ),
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "super.users": f"User:{ADMIN}",
            "allow.everyone.if.no.acl.found": "false",
        }

    def _properties(self) -> str:
        s = self.settings
        ctl = f"{s.host}:{s.kafka_controller_port}"
        client = "CLIENT" if self.secure else "PLAINTEXT"
        values = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": ctl,
            "listeners": f"{client}://{s.host}:{s.kafka_port},CONTROLLER://{ctl}",
            "advertised.listeners": f"{client}://{s.host}:{s.kafka_port},CONTROLLER://{ctl}",
            "inter.broker.listener.name": client,
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
        if self.secure:
            values.update(self._security_properties())
        lines = ["# Generated by spamops at each start; edits are overwritten."]
        lines += [f"{key}={value}" for key, value in values.items()]
        return "\n".join(lines) + "\n"

    def _seed_admin_password(self) -> None:
        """An admin password given in the settings becomes the stack's admin password.

        Only when none was generated yet: ``SPAMOPS_KAFKA_SASL_USERNAME=admin`` with
        a password (file) lets scripts and tests know it before the stack exists.
        """
        target = secrets.password_file(self.settings, ADMIN)
        if self.settings.kafka_sasl_username != ADMIN or target.exists():
            return
        given = self.settings.kafka_password()
        if given and self.settings.kafka_sasl_password_file != target:
            secrets.write_private(target, given + "\n")

    def _scram_digest(self) -> str:
        """Users and a digest of their passwords, to tell whether the storage knows them."""
        digest = hashlib.sha256()
        for name in principals():
            digest.update(f"{name}={secrets.read_password(self.settings, name)}\n".encode())
        return f"{','.join(principals())} sha256:{digest.hexdigest()}\n"

    def prepare(self) -> None:
        """Write server.properties and the log4j2 config; format the storage once."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.secure:
            self._seed_admin_password()
            secrets.ensure_passwords(self.settings)
            secrets.set_secure_state(self.settings, True)
            # The broker's own passwords are in it: owner only.
            secrets.write_private(self.server_properties, self._properties())
        else:
            self.server_properties.write_text(self._properties())
        shutil.copyfile(stack_source_dir() / "kafka" / "log4j2.properties", self.log4j_config)
        if (self.log_dir / "meta.properties").exists():
            if self.secure and self._formatted_digest() != self._scram_digest():
                raise StackError(
                    "kafka: the storage was formatted without these SCRAM users or passwords "
                    f"(plain before, or {secrets.secrets_dir(self.settings)} changed): "
                    "start it afresh with `spamops up --fresh --secure --only kafka` "
                    "(topics and their records are lost)"
                )
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
        args = ["format", "--standalone", "-t", cluster_id, "-c", str(self.server_properties)]
        if not self.secure:
            self.run_tool([*base, "kafka.tools.StorageTool", *args], what="storage format")
            self.scram_users_file.unlink(missing_ok=True)
            return
        # The SCRAM users go in at format time. Their passwords are passed in a 0600
        # argument file (java @file), so they show neither in `ps` nor in the log.
        argfile = self.data_dir / "format.args"
        lines = [*base[1:], "kafka.tools.StorageTool", *args]
        for name in principals():
            password = secrets.read_password(self.settings, name)
            lines += ["--add-scram", f"{SASL_MECHANISM}=[name={name},password={password}]"]
        secrets.write_private(argfile, "\n".join(_argfile_quote(a) for a in lines) + "\n")
        try:
            self.run_tool([java, f"@{argfile}"], what="storage format (with SCRAM users)")
        finally:
            argfile.unlink(missing_ok=True)
        secrets.write_private(self.scram_users_file, self._scram_digest())

    def _formatted_digest(self) -> str:
        try:
            return self.scram_users_file.read_text()
        except OSError:
            return ""

    def after_ready(self) -> None:
        """Create the catalogue's topics and, when secure, the ACL table (as the admin)."""
        endpoint, options = self.endpoint(), self.admin_options()
        run_sync(lambda: ensure_topics_async(endpoint, client_options=options))
        if self.secure:
            run_sync(lambda: ensure_acls_async(endpoint, options))

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
        try:
            options = self.admin_options()
        except ValueError:  # secure, but the admin password is not there (yet)
            return False
        return run_sync(lambda: kafka_metadata_ok(self.endpoint(), timeout, options))


def _argfile_quote(arg: str) -> str:
    """One argument of a java @argfile (quoted: the values have no quotes themselves)."""
    return '"' + arg.replace("\\", "\\\\") + '"'


async def kafka_metadata_ok(
    bootstrap: str, limit_s: float, client_options: Mapping[str, Any] | None = None
) -> bool:
    """Whether a metadata request (list topics) to ``bootstrap`` succeeds in ``limit_s``."""
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        request_timeout_ms=max(1000, int(limit_s * 1000)),
        **dict(client_options or {}),
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
