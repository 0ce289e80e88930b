"""Entry point: ``python -m spamops_inference``.

Scale out by starting more of these with the same settings: they join the
consumer group ``spamops-inference`` and share the inbox's partitions (6 by
default, so up to 6 useful processes). On one machine give each extra process
its own /metrics port, or it stops at start-up with "Address already in use":
``SPAMOPS_INFERENCE_METRICS_PORT=9107 python -m spamops_inference`` (0 turns the
endpoint off).
"""

from spamops_runtime.service import run_app

from spamops_inference.app import build_app

if __name__ == "__main__":
    run_app(build_app())
