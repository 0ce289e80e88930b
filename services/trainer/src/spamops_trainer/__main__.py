"""Entry point: ``python -m spamops_trainer``."""

from spamops_runtime.service import run_app

from spamops_trainer.app import build_app

if __name__ == "__main__":
    run_app(build_app())
