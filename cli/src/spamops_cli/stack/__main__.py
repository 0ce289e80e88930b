"""``python -m spamops_cli.stack {install,up,down,status}``: the local stack without typer."""

from __future__ import annotations

import argparse
import logging
import sys
import time

from spamops_runtime.settings import PlatformSettings

from spamops_cli.stack import COMPONENT_NAMES, StackError, down, install, status, up


def _print_status(settings: PlatformSettings) -> bool:
    rows = status(settings)
    print(f"spamops stack in {settings.state_dir}")
    header = ("component", "running", "ready", "pid", "endpoint", "detail")
    table = [header] + [
        (
            row.name,
            "yes" if row.running else "no",
            "yes" if row.ready else "no",
            str(row.pid or ""),
            row.endpoint,
            row.detail,
        )
        for row in rows
    ]
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    for line in table:
        print("  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)))
    total = sum(row.rss_bytes for row in rows)
    if total:
        print(f"total rss {total / 2**20:.0f} MiB")
    return all(row.ready for row in rows)


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one stack command; returns the exit code."""
    parser = argparse.ArgumentParser(prog="python -m spamops_cli.stack", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logs")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("install", "install Kafka's jars and Triton's venv (idempotent)"),
        ("up", "install what is missing, start and wait until ready"),
    ):
        cmd = sub.add_parser(name, help=text)
        cmd.add_argument(
            "-c", "--component", action="append", choices=COMPONENT_NAMES,
            help="only this component (repeatable)",
        )  # fmt: skip
        if name == "up":
            cmd.add_argument("--fresh", action="store_true", help="stop and wipe data first")
    sub.add_parser("down", help="stop what `up` started (data is kept)")
    sub.add_parser("status", help="show each component; exit 1 if one is not ready")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
        stream=sys.stderr,
    )
    # aiokafka reports every refused connection while Kafka boots: keep it quiet.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per readiness poll
    settings = PlatformSettings()
    begin = time.monotonic()
    try:
        if args.command == "install":
            install(settings, args.component)
            logging.info("installed in %.1fs", time.monotonic() - begin)
        elif args.command == "up":
            up(settings, fresh=args.fresh, components=args.component)
            logging.info("stack up in %.1fs", time.monotonic() - begin)
            _print_status(settings)
        elif args.command == "down":
            down(settings)
            logging.info("stack down in %.1fs", time.monotonic() - begin)
        else:
            return 0 if _print_status(settings) else 1
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
