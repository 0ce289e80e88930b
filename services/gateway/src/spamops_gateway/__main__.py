"""Entry point: ``python -m spamops_gateway``.

Serves the HTTP API on ``SPAMOPS_HOST:SPAMOPS_GATEWAY_PORT`` (8080) and its
metrics on the service port (9105). Scale out by starting more of these, each
with its own ``SPAMOPS_GATEWAY_INSTANCE_ID`` (default ``<hostname>-<port>``),
and on one machine its own ports: every instance reads every verdict and
answers its own requests (see ``spamops_gateway.handlers``), e.g.
``SPAMOPS_GATEWAY_PORT=8081 SPAMOPS_GATEWAY_METRICS_PORT=9115 python -m spamops_gateway``.
"""

from spamops_runtime.service import run_app

from spamops_gateway.app import build_app

if __name__ == "__main__":
    run_app(build_app())
