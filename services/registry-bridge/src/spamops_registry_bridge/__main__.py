"""Entry point: ``python -m spamops_registry_bridge``."""

import logging
import sys

from spamops_runtime.service import run_app

from spamops_registry_bridge.app import UnsafeConfigurationError, build_app

if __name__ == "__main__":
    try:
        app = build_app()
    except UnsafeConfigurationError as exc:
        logging.getLogger("spamops_registry_bridge").error(str(exc))
        sys.exit(2)
    run_app(app)
