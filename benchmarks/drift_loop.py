"""The closed loop on the real temporal shift, with the real training settings (issue 6).

Starts a whole platform of its own (free ports, a temporary state directory,
the default 20-trial search) and runs `spamops_cli.scenario`: a model of the
`-1` groups, a no-drift stream, the `-2` stream with labels, DriftDetected,
the drift snapshot, retraining, promotion; F1 on held-back `-2` messages
before and after.

    .venv/bin/python -m benchmarks.drift_loop

Aims: F1 >= 0.97 after retraining, 0 false alarms. Writes
benchmarks/results/drift_loop.json.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

from spamops_cli import stack as local_stack
from spamops_cli.scenario import run_scenario
from spamops_runtime.settings import PlatformSettings

from benchmarks._common import free_ports, write_results


def main() -> None:
    shared = PlatformSettings()
    os.environ.setdefault(local_stack.TOOLS_DIR_ENV, str(shared.state_dir / "tools"))
    with tempfile.TemporaryDirectory() as home:
        ports = free_ports(10 + len(local_stack.SERVICE_NAMES))
        settings = PlatformSettings(
            home=Path(home), kafka_port=ports[0], kafka_controller_port=ports[1],
            redis_port=ports[2], mlflow_port=ports[3], triton_http_port=ports[4],
            triton_grpc_port=ports[5], triton_metrics_port=ports[6], evidently_ui_port=ports[7],
            gateway_port=ports[8], milter_port=ports[9],
            kafka_bootstrap_servers=None, redis_url=None, mlflow_tracking_uri=None,
            triton_url=None, triton_http_url=None, gateway_url=None, evidently_ui_url=None,
            evidently_workspace=None, corpus_cache=shared.corpus_cache_dir,
            service_ports=dict(zip(local_stack.SERVICE_NAMES, ports[10:], strict=True)),
        )  # fmt: skip
        local_stack.up(settings)
        try:
            result = run_scenario(settings)
        finally:
            local_stack.down(settings)
    numbers = dataclasses.asdict(result)
    numbers["aims"] = {"f1_after_at_least": 0.97, "false_alarms": 0}
    numbers["met"] = {
        "f1_after": result.f1_after >= 0.97,
        "no_false_alarms": result.false_alarms == 0,
    }
    numbers["settings"] = "trainer defaults (20 trials), monitor defaults (window 500, PSI 0.1)"
    write_results("drift_loop", numbers)


if __name__ == "__main__":
    main()
