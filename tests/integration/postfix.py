"""A private Postfix instance for tests and benchmarks: its own config, queue and maildirs.

Debian's ``postfix`` package (scripts/bootstrap.sh installs it with "No
configuration", so no system Postfix runs) provides the programs; everything
else lives in one directory:

    <root>/etc/main.cf, master.cf   the instance's configuration (``postfix -c <root>/etc``)
    <root>/etc/vmailbox             texthash map of the virtual mailboxes (no postmap needed)
    <root>/queue, <root>/data       queue_directory, data_directory
    <root>/mail/<domain>/<user>/    Maildir of each recipient (virtual delivery)
    <root>/maillog                  Postfix's log (postlogd)

smtpd listens on 127.0.0.1:<smtp_port> only; mail for ``@<domain>`` is delivered by
the ``virtual`` agent to the maildirs as the ``nobody`` user, so no system user is
needed. With a milter port, ``smtpd_milters = inet:127.0.0.1:<port>`` and
``milter_default_action = accept`` (a dead milter never stops mail).

The master process runs as root (Postfix drops privileges per daemon); tests run as
root on these machines. ``PostfixInstance.available()`` says whether it can run here.
"""

from __future__ import annotations

import email
import email.policy
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

POSTFIX = "/usr/sbin/postfix"
DAEMON_DIRECTORY = "/usr/lib/postfix/sbin"

MASTER_CF = """\
# service type  private unpriv  chroot  wakeup  maxproc command + args
127.0.0.1:{smtp_port} inet n    -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
smtp      unix  -       -       n       -       -       smtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""


@dataclass
class PostfixInstance:
    """One Postfix of our own; ``start()``, ``stop()``, ``wait_for_mail()``."""

    root: Path
    smtp_port: int
    milter_port: int | None = None
    # Another milter socket than inet:127.0.0.1:<milter_port>, e.g. "unix:/path/milter.sock".
    milter_spec: str | None = None
    domain: str = "spamops.test"
    users: tuple[str, ...] = ("alice", "bob")
    # How long Postfix waits for the milter (connect / each command / end of data).
    milter_timeouts_s: tuple[int, int, int] = (5, 30, 60)
    _started: bool = field(default=False, init=False)

    @staticmethod
    def available() -> str | None:
        """None if an instance can run here, else why not."""
        if not Path(POSTFIX).exists():
            return "Postfix is not installed (scripts/bootstrap.sh installs Debian's postfix)"
        if os.geteuid() != 0:
            return "the Postfix master process needs root"
        try:
            pwd.getpwnam("postfix")
        except KeyError:
            return "no postfix user (the Debian package creates it)"
        return None

    @classmethod
    def create(
        cls, smtp_port: int, milter_port: int | None = None, **kwargs: object
    ) -> PostfixInstance:
        """A new instance in a fresh directory under the system temp dir.

        Not under pytest's tmp_path: that is private to root (0700), and Postfix's
        daemons run as the postfix user and must reach the queue.
        """
        root = Path(tempfile.mkdtemp(prefix="spamops-postfix-"))
        root.chmod(0o755)
        instance = cls(root, smtp_port, milter_port, **kwargs)  # type: ignore[arg-type]
        instance.configure()
        return instance

    # ------------------------------------------------------------------ layout
    @property
    def config_dir(self) -> Path:
        return self.root / "etc"

    @property
    def mail_dir(self) -> Path:
        return self.root / "mail"

    @property
    def maillog(self) -> Path:
        return self.root / "maillog"

    @property
    def queue_dir(self) -> Path:
        return self.root / "queue"

    def address(self, user: str) -> str:
        return f"{user}@{self.domain}"

    def maildir(self, user: str) -> Path:
        return self.mail_dir / self.domain / user

    def configure(self) -> None:
        """Write main.cf, master.cf and the mailbox map; create the maildir base."""
        nobody = pwd.getpwnam("nobody")
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.mail_dir.mkdir(exist_ok=True)
        self.queue_dir.mkdir(exist_ok=True)  # Postfix creates its subdirectories at start
        postfix = pwd.getpwnam("postfix")
        (self.root / "data").mkdir(exist_ok=True)
        os.chown(self.root / "data", postfix.pw_uid, postfix.pw_gid)
        os.chown(self.mail_dir, nobody.pw_uid, nobody.pw_gid)
        (self.config_dir / "vmailbox").write_text(
            "".join(f"{self.address(u)} {self.domain}/{u}/\n" for u in self.users)
        )
        connect, command, content = self.milter_timeouts_s
        milter = (
            f"smtpd_milters = {self.milter_spec or f'inet:127.0.0.1:{self.milter_port}'}\n"
            "milter_default_action = accept\n"
            "milter_protocol = 6\n"
            f"milter_connect_timeout = {connect}s\n"
            f"milter_command_timeout = {command}s\n"
            f"milter_content_timeout = {content}s\n"
            if self.milter_port or self.milter_spec
            else ""
        )
        main_cf = f"""\
compatibility_level = 3.6
queue_directory = {self.queue_dir}
data_directory = {self.root}/data
command_directory = /usr/sbin
daemon_directory = {DAEMON_DIRECTORY}
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.{self.domain}
mydomain = {self.domain}
myorigin = $myhostname
mydestination =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_banner = $myhostname ESMTP spamops-test
virtual_mailbox_domains = {self.domain}
virtual_mailbox_base = {self.mail_dir}
virtual_mailbox_maps = texthash:{self.config_dir}/vmailbox
virtual_uid_maps = static:{nobody.pw_uid}
virtual_gid_maps = static:{nobody.pw_gid}
virtual_minimum_uid = 1
local_recipient_maps =
relayhost =
default_transport = error:no outbound mail from this test instance
biff = no
append_dot_mydomain = no
smtputf8_enable = no
maillog_file = {self.maillog}
maillog_file_prefixes = {self.root}
# Deliver at once: no waiting for the queue manager's periodic scans.
queue_run_delay = 1s
minimal_backoff_time = 1s
maximal_backoff_time = 2s
in_flow_delay = 0
smtpd_client_connection_rate_limit = 0
{milter}"""
        (self.config_dir / "main.cf").write_text(main_cf)
        (self.config_dir / "master.cf").write_text(MASTER_CF.format(smtp_port=self.smtp_port))

    # ------------------------------------------------------------------ control
    def _postfix(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [POSTFIX, "-c", str(self.config_dir), *args],
            capture_output=True,
            text=True,
            check=check,
            timeout=60,
        )

    def start(self, timeout: float = 30.0) -> None:
        """``postfix -c <etc> start`` and wait until smtpd answers."""
        import socket

        result = self._postfix("start", check=False)
        if result.returncode != 0:
            raise RuntimeError(
                f"postfix start failed ({result.returncode}):\n{result.stdout}{result.stderr}"
                f"\n--- maillog ---\n{self.log_tail()}"
            )
        self._started = True
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=1) as s:
                    if s.recv(512).startswith(b"220"):
                        return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"Postfix smtpd not answering on {self.smtp_port}\n{self.log_tail()}")

    def stop(self) -> None:
        """``postfix stop`` (and abort if it hangs)."""
        if not self._started:
            return
        try:
            self._postfix("stop", check=False)
        except subprocess.TimeoutExpired:
            self._postfix("abort", check=False)
        self._started = False

    def remove(self) -> None:
        """Stop and delete the instance's directory."""
        self.stop()
        shutil.rmtree(self.root, ignore_errors=True)

    def reload(self) -> None:
        """Re-read main.cf (e.g. after changing the milter)."""
        self._postfix("reload")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.maillog.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no maillog)"

    # ------------------------------------------------------------------ mail
    def delivered(self, user: str) -> list[Path]:
        """The files in the user's Maildir/new, oldest first."""
        new = self.maildir(user) / "new"
        if not new.is_dir():
            return []
        return sorted(new.iterdir(), key=lambda p: p.stat().st_mtime_ns)

    def held(self) -> list[Path]:
        """Queue files in the hold queue (what a milter quarantined)."""
        hold = self.queue_dir / "hold"
        return sorted(p for p in hold.rglob("*") if p.is_file()) if hold.is_dir() else []

    def wait_for_mail(self, user: str, marker: str, timeout: float = 30.0) -> EmailMessage:
        """The delivered mail of ``user`` whose bytes contain ``marker``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for path in self.delivered(user):
                data = path.read_bytes()
                if marker.encode() in data:
                    message = email.message_from_bytes(data, policy=email.policy.default)
                    assert isinstance(message, EmailMessage)
                    return message
            time.sleep(0.05)
        raise TimeoutError(
            f"no mail with {marker!r} delivered to {user} in {timeout}s\n{self.log_tail()}"
        )
