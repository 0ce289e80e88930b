"""What the milter adds to a delivery: SMTP send -> the mail in the maildir, p50/p99.

Two private Postfix instances (``tests/integration/postfix.py``: own config,
queue and maildirs in a temp dir, smtpd on a free port of 127.0.0.1, virtual
delivery to Maildir), identical except that one has ``smtpd_milters`` pointing at
``python -m spamops_milter`` (policy ``tag``). For each, N mails are sent one after
another, each on a new SMTP connection (as a peer MTA would), and timed from the
moment before connecting to the moment the delivered file was written in
``Maildir/new`` (its mtime; same clock). The first ``--warmup`` mails of each
case are not counted. The milter's own view of the gateway (its
``spamops_milter_gateway_seconds`` histogram: mean) is recorded too.

Which gateway the milter asks:

- default: the gateway TEST DOUBLE of the tests (``tests/integration/gateway_double.py``),
  a canned answer with no Kafka and no model. Those numbers are a DIAGNOSTIC of
  the milter and Postfix alone (what the milter path costs without a platform
  behind it), not the platform's figure, and the result file says so;
- ``--gateway-url URL [--key-file FILE]``: a real gateway (after ``make up``, with
  the gateway in the stack: ``--gateway-url http://127.0.0.1:8080 --key-file
  .spamops/secrets/gateway-api.key``). Then the added latency includes the whole
  classify path (gateway -> Kafka -> inference -> Triton -> Kafka -> gateway).

Needs root (the Postfix master process) and Debian's postfix (scripts/bootstrap.sh).

    .venv/bin/python -m benchmarks.milter_latency --messages 200          # double: diagnostic
    .venv/bin/python -m benchmarks.milter_latency --messages 1000 \\
        --gateway-url http://127.0.0.1:8080 --key-file .spamops/secrets/gateway-api.key

Writes benchmarks/results/milter_latency.json with the machine, the date and the commit.
"""

from __future__ import annotations

import argparse
import os
import shutil
import smtplib
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from benchmarks._common import free_ports, write_results
from tests.integration.gateway_double import HAM, SPAM, GatewayDouble
from tests.integration.postfix import PostfixInstance

SENDER = "bench@sender.example"
BODY = (
    "Hi Alice,\r\n\r\nThe quarterly numbers are attached; the build server is still slow on\r\n"
    "Tuesdays. Could we look at the nightly job together before Friday?\r\n\r\nBob\r\n"
)


def message(i: int, token: str, marker: str) -> bytes:
    return (
        f"From: Bob <{SENDER}>\r\nTo: Alice <alice@spamops.test>\r\n"
        f"Subject: numbers {i}\r\nDate: Tue, 01 Dec 2026 10:00:00 +0000\r\n"
        f"Message-ID: <{token}@sender.example>\r\nMIME-Version: 1.0\r\n"
        f"Content-Type: text/plain; charset=us-ascii\r\n\r\n{BODY}{marker} {token}\r\n"
    ).encode()


def wait_delivered(postfix: PostfixInstance, token: str, seen: set[str], timeout: float) -> int:
    """mtime (ns) of the delivered file holding ``token``."""
    new = postfix.maildir("alice") / "new"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if new.is_dir():
            for entry in os.scandir(new):
                if entry.name in seen:
                    continue
                data = Path(entry.path).read_bytes()
                if token.encode() in data:
                    seen.add(entry.name)
                    return entry.stat().st_mtime_ns
        time.sleep(0.001)
    raise TimeoutError(f"mail {token} not delivered in {timeout}s\n{postfix.log_tail()}")


def run_case(postfix: PostfixInstance, n: int, warmup: int) -> list[float]:
    """Send ``warmup + n`` mails one by one; the latencies (ms) of the last ``n``."""
    seen: set[str] = set()
    latencies = []
    for i in range(warmup + n):
        token = f"b{uuid.uuid4().hex[:20]}"
        mail = message(i, token, SPAM if i % 2 else HAM)
        start = time.time_ns()
        with smtplib.SMTP("127.0.0.1", postfix.smtp_port, timeout=60) as smtp:
            smtp.sendmail(SENDER, [postfix.address("alice")], mail)
        delivered = wait_delivered(postfix, token, seen, timeout=60)
        if i >= warmup:
            latencies.append((delivered - start) / 1e6)
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    a = np.asarray(latencies)
    return {
        "n": len(a),
        "mean_ms": round(float(a.mean()), 2),
        "p50_ms": round(float(np.percentile(a, 50)), 2),
        "p90_ms": round(float(np.percentile(a, 90)), 2),
        "p99_ms": round(float(np.percentile(a, 99)), 2),
        "max_ms": round(float(a.max()), 2),
    }


def milter_metrics(url: str) -> dict[str, float]:
    values: dict[str, float] = {}
    for family in text_string_to_metric_families(httpx.get(url, timeout=5).text):
        for sample in family.samples:
            if sample.name in (
                "spamops_milter_gateway_seconds_sum",
                "spamops_milter_gateway_seconds_count",
            ):
                values[sample.name] = sample.value
            if sample.name == "spamops_milter_messages_total":
                values[f"messages_{sample.labels['verdict']}_{sample.labels['action']}"] = (
                    sample.value
                )
    return values


def start_milter(
    milter_port: int,
    metrics_port: int,
    gateway_url: str,
    key_file: Path,
    home: Path,
    socket_spec: str | None = None,
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "SPAMOPS_HOME": str(home),
        "SPAMOPS_HOST": "127.0.0.1",
        "SPAMOPS_MILTER_PORT": str(milter_port),
        "SPAMOPS_MILTER_METRICS_PORT": str(metrics_port),
        "SPAMOPS_MILTER_GATEWAY_URL": gateway_url,
        "SPAMOPS_MILTER_API_KEY_FILE": str(key_file),
        "SPAMOPS_MILTER_POLICY": "tag",
        "SPAMOPS_LOG_LEVEL": "WARNING",  # one INFO line per mail would be measured too
        **({"SPAMOPS_MILTER_SOCKET": socket_spec} if socket_spec else {}),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "spamops_milter"], env=env, stdout=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{metrics_port}/metrics"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"milter exited with {process.returncode}")
        try:
            if 'spamops_service_ready{service="milter"} 1.0' in httpx.get(url, timeout=2).text:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.terminate()
    raise RuntimeError("milter not ready in 60 s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=200, help="Mails per case (counted).")
    parser.add_argument("--warmup", type=int, default=5, help="Mails per case not counted.")
    parser.add_argument("--gateway-url", help="A real gateway; default: the test double.")
    parser.add_argument("--key-file", type=Path, help="The real gateway's API key file.")
    parser.add_argument(
        "--unix",
        action="store_true",
        help="Postfix talks to the milter over a unix socket (no TCP: no Nagle/delayed ACK).",
    )
    args = parser.parse_args()
    why_not = PostfixInstance.available()
    if why_not:
        sys.exit(f"milter_latency: {why_not}")

    work = Path(tempfile.mkdtemp(prefix="spamops-milter-bench-"))
    double: GatewayDouble | None = None
    if args.gateway_url:
        gateway_url, key_file = args.gateway_url, args.key_file or work / "no-key"
    else:
        double = GatewayDouble(api_key="bench-key").start()
        key_file = work / "gateway-api.key"
        key_file.write_text("bench-key\n")
        gateway_url = double.url
    smtp_plain, smtp_milter, milter_port, metrics_port = free_ports(4)
    plain = PostfixInstance.create(smtp_plain)
    # Postfix's daemons run as the postfix user: the socket's directory must let them in.
    unix_path = work / "milter" / "milter.sock"
    unix_path.parent.mkdir(mode=0o755)
    work.chmod(0o755)
    milter_spec = f"unix:{unix_path}" if args.unix else None
    with_milter = PostfixInstance.create(smtp_milter, milter_port, milter_spec=milter_spec)
    milter = None
    results: dict[str, Any] = {}
    try:
        plain.start()
        print(f"without milter: {args.messages} mails ...", flush=True)
        results["without_milter"] = summary(run_case(plain, args.messages, args.warmup))
        plain.stop()
        milter = start_milter(
            milter_port, metrics_port, gateway_url, key_file, work / "home", milter_spec
        )
        if args.unix:
            unix_path.chmod(0o666)  # Postfix's daemons (user postfix) connect to it
        with_milter.start()
        print(f"with milter: {args.messages} mails ...", flush=True)
        results["with_milter"] = summary(run_case(with_milter, args.messages, args.warmup))
        metrics = milter_metrics(f"http://127.0.0.1:{metrics_port}/metrics")
    finally:
        plain.remove()
        with_milter.remove()
        if milter is not None:
            milter.terminate()
            milter.wait(15)
        if double is not None:
            double.stop()
        shutil.rmtree(work, ignore_errors=True)
    count = metrics.get("spamops_milter_gateway_seconds_count", 0.0)
    if count < args.messages + args.warmup:
        sys.exit(f"milter_latency: the milter saw {count:.0f} mails, not every one: check it")
    results["milter"] = {
        "gateway_mean_ms": round(
            1000 * metrics.get("spamops_milter_gateway_seconds_sum", 0.0) / count, 2
        )
        if count
        else None,
        **{k: v for k, v in metrics.items() if k.startswith("messages_")},
    }
    results["added_ms"] = {
        key: round(results["with_milter"][key] - results["without_milter"][key], 2)
        for key in ("mean_ms", "p50_ms", "p90_ms", "p99_ms")
    }
    results["setup"] = {
        "messages_per_case": args.messages,
        "warmup_per_case": args.warmup,
        "sending": "sequential, one SMTP connection per mail, 127.0.0.1",
        "measured": "before SMTP connect -> mtime of the file in Maildir/new",
        "postfix": "Debian postfix, private instance, virtual delivery to Maildir",
        "milter_policy": "tag",
        "milter_socket": milter_spec or "inet:127.0.0.1 (TCP)",
        "gateway": (
            f"real gateway at {gateway_url}"
            if double is None
            else "TEST DOUBLE (canned verdicts, no Kafka, no model)"
        ),
    }
    results["diagnostic"] = double is not None
    if double is not None:
        results["label"] = (
            "DIAGNOSTIC: the milter asks the gateway test double, not the platform; "
            "these numbers are the milter + Postfix overhead alone, not the platform's figure"
        )
    write_results("milter_latency_unix" if args.unix else "milter_latency", results)


if __name__ == "__main__":
    main()
