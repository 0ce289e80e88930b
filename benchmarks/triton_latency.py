"""Triton's latency for the spam model: one email and a batch of 64, through the real server.

Starts a Triton of its own (the local stack's component, free ports, a
temporary state directory), deploys an ONNX model exactly as the registry
bridge does (Python backend running onnxruntime, dynamic batching), and times
requests from tritonclient over gRPC with the model version pinned. The model
is an XGBoost of realistic size (the feature pipeline's inputs: 528; trees and depth as the tuned
model of benchmarks/results/train_quality.json, or 300 x depth 6).

    .venv/bin/python -m benchmarks.triton_latency [--requests 2000]

Target: p50 < 1 ms per request of one email. Writes
benchmarks/results/triton_latency.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tritonclient.grpc as triton_grpc
import xgboost as xgb
from spamops_cli import stack as local_stack
from spamops_features.pipeline import EXTRA_NAMES, N_EMAIL_FEATURES, REPUTATION_NAMES
from spamops_registry_bridge.adapters import TritonDeployer
from spamops_registry_bridge.onnx_export import export_onnx, onnx_spam_probability
from spamops_runtime.settings import PlatformSettings
from spamops_runtime.triton_repo import model_repository

from benchmarks._common import RESULTS, free_ports, write_results

# What a served model takes: TF-IDF, handcrafted, reputation and extra inputs.
N_INPUTS = N_EMAIL_FEATURES + len(REPUTATION_NAMES) + len(EXTRA_NAMES)


def model_shape() -> tuple[int, int]:
    """Trees and depth of the last tuned model, if the quality benchmark ran."""
    try:
        best = json.loads((RESULTS / "train_quality.json").read_text())["results"]["xgboost"]
        params = best["best_params"]
        return int(params["n_estimators"]), int(params["max_depth"])
    except (OSError, KeyError, ValueError):
        return 300, 6


def timed(
    client: triton_grpc.InferenceServerClient, name: str, x: np.ndarray, n: int
) -> list[float]:
    tensor = triton_grpc.InferInput("input", list(x.shape), "FP32")
    tensor.set_data_from_numpy(x)
    out = [triton_grpc.InferRequestedOutput("spam_probability")]
    for _ in range(50):  # warm-up
        client.infer(name, [tensor], model_version="1", outputs=out)
    samples = []
    for _ in range(n):
        began = time.perf_counter()
        client.infer(name, [tensor], model_version="1", outputs=out)
        samples.append((time.perf_counter() - began) * 1000)
    return samples


def stats(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    return {
        "p50_ms": round(float(np.percentile(a, 50)), 3),
        "p90_ms": round(float(np.percentile(a, 90)), 3),
        "p99_ms": round(float(np.percentile(a, 99)), 3),
        "mean_ms": round(float(a.mean()), 3),
        "requests": len(samples),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    trees, depth = model_shape()
    rng = np.random.default_rng(0)
    x = rng.random((4000, N_INPUTS), dtype=np.float32)
    y = (x[:, :5].sum(axis=1) + rng.normal(0, 0.3, 4000) > 2.5).astype(int)
    model = xgb.XGBClassifier(n_estimators=trees, max_depth=depth, tree_method="hist")
    model.fit(x, y)
    onnx_bytes = export_onnx(model, N_INPUTS)
    parity = float(
        np.max(
            np.abs(onnx_spam_probability(onnx_bytes, x[:500]) - model.predict_proba(x[:500])[:, 1])
        )
    )

    with tempfile.TemporaryDirectory() as home:
        http, grpc, metrics = free_ports(3)
        settings = PlatformSettings(
            home=Path(home), triton_http_port=http, triton_grpc_port=grpc,
            triton_metrics_port=metrics, triton_url=None, triton_http_url=None,
        )  # fmt: skip
        local_stack.up(settings, components=["triton"])
        try:
            deployer = TritonDeployer(model_repository(settings.state_dir), settings.triton_http)
            began = time.perf_counter()
            deployer.deploy("spam-detector-bench", 1, onnx_bytes, N_INPUTS, [1])
            load_s = time.perf_counter() - began
            client = triton_grpc.InferenceServerClient(settings.triton_grpc)
            one = stats(timed(client, "spam-detector-bench", x[:1], args.requests))
            batch = stats(
                timed(client, "spam-detector-bench", x[:64], max(200, args.requests // 4))
            )
            client.close()
        finally:
            local_stack.down(settings)

    write_results(
        "triton_latency",
        {
            "model": {"trees": trees, "max_depth": depth, "n_inputs": N_INPUTS},
            "onnx_bytes": len(onnx_bytes),
            "onnx_parity_max_abs_diff": parity,
            "load_seconds": round(load_s, 2),
            "grpc_one_email": one,
            "grpc_batch_of_64": {**batch, "per_email_ms": round(batch["p50_ms"] / 64, 4)},
            "target_p50_one_email_ms": 1.0,
            "met": one["p50_ms"] < 1.0,
            "client": "tritonclient.grpc, sequential, version pinned, same machine",
        },
    )


if __name__ == "__main__":
    main()
