"""Entry point: ``python -m spamops_registry_bridge``."""

from spamops_runtime.service import run_app

from spamops_registry_bridge.app import build_app

if __name__ == "__main__":
    run_app(build_app())
