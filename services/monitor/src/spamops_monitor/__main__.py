"""Entry point: ``python -m spamops_monitor``."""

from spamops_runtime.service import run_app

from spamops_monitor.app import build_app

if __name__ == "__main__":
    run_app(build_app())
