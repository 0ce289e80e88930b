"""Per-message CPU cost of the inference hot path, on one core, without Kafka or Triton.

Runs the inference service's own code on the 6,046 corpus messages in batches
of 256 (the service's default): ``classify_batch`` (parse, features,
reputation, verdicts) with a scorer that returns fixed probabilities, then the
verdict records as the service publishes them (``verdict_record``: tracing
span, headers, JSON), so the only thing left out is the I/O (Kafka, Triton,
Redis). Stage timings come from separate passes over the same batches.

    .venv/bin/python -m benchmarks.inference_hotpath [--repeat 3] [--pipeline DIR]

The feature pipeline is fitted on the corpus itself unless ``--pipeline``
names a saved one (its fit does not change the per-message cost much: the
vocabulary has 500 terms either way). Prints a JSON summary (microseconds per
message); ``--write`` also stores it as benchmarks/results/inference_hotpath.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from spamops_features.handcrafted import handcrafted_matrix, prepare
from spamops_features.mail import parse_email
from spamops_features.pipeline import FeaturePipeline
from spamops_runtime.settings import PlatformSettings

from benchmarks._common import write_results

BATCH = 256


def corpus_messages() -> list[bytes]:
    """The 6,046 raw corpus messages (from the corpus cache; fetched if missing)."""
    from spamops_cli.corpus import iter_corpus

    return [m.raw for m in iter_corpus(PlatformSettings().corpus_cache_dir)]


def _best(fn: Callable[[], object], repeat: int) -> float:
    best = float("inf")
    for _ in range(repeat):
        began = time.process_time()
        fn()
        best = min(best, time.process_time() - began)
    return best


class _FixedScorer:
    async def score(self, model: str, version: int, x: np.ndarray) -> np.ndarray:
        return np.full(len(x), 0.25)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=3, help="Passes per stage (best is kept).")
    parser.add_argument("--pipeline", type=Path, help="A saved FeaturePipeline directory.")
    parser.add_argument("--write", action="store_true", help="Write the results file too.")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {sorted(os.sched_getaffinity(0))[0]})  # one core

    from spamops_inference.handlers import InboxRecord, InferenceDeps, classify_batch
    from spamops_inference.serving import ModelCatalog, ServingModel
    from spamops_inference.settings import InferenceSettings

    raws = corpus_messages()
    n = len(raws)
    settings = InferenceSettings(metrics_port=0)
    emails = [parse_email(r) for r in raws]
    pipeline = FeaturePipeline.load(args.pipeline) if args.pipeline else FeaturePipeline.fit(emails)
    model = ServingModel("production", "spam-detector", 1, 0.5, pipeline, "spam-detector-prod")
    catalog = ModelCatalog(lambda alias, version: model)
    asyncio.run(catalog.switch("production", 1))
    deps = InferenceDeps(catalog=catalog, scorer=_FixedScorer(), settings=settings)
    records = [
        InboxRecord("emails.inbox", i % 6, i, f"k{i}", raw, {}, int(time.time() * 1000))
        for i, raw in enumerate(raws)
    ]
    batches = [records[i : i + BATCH] for i in range(0, n, BATCH)]
    email_batches = [emails[i : i + BATCH] for i in range(0, n, BATCH)]

    from spamops_inference import app as inference_app
    from spamops_runtime.tracing import configure_tracing

    trace_dir = Path("/tmp/spamops-hotpath-traces")
    configure_tracing("inference-bench", trace_dir)  # spans are exported as in the service

    encode: Any
    batch_span: Any = lambda records, n: contextlib.nullcontext()  # noqa: E731
    if hasattr(inference_app, "verdict_record"):
        spans = inference_app.VerdictSpans()
        if hasattr(spans, "batch"):
            batch_span = spans.batch

        def encode(record: InboxRecord, verdict: Any) -> tuple[bytes, Any]:
            return inference_app.verdict_record(spans, record, verdict)  # type: ignore[no-any-return]

    else:  # before verdict_record existed: what publish_verdict did
        from spamops_runtime.kafka import outgoing_headers
        from spamops_runtime.tracing import consumer_span

        def encode(record: InboxRecord, verdict: Any) -> tuple[bytes, Any]:
            attributes = {
                "messaging.destination.name": record.topic,
                "messaging.kafka.partition": record.partition,
                "messaging.kafka.offset": record.offset,
                "spamops.verdict": verdict.verdict,
                "spamops.model_version": verdict.model_version,
            }
            with consumer_span("inference classify", record.headers, attributes):
                return verdict.to_bytes(), outgoing_headers(verdict)

    loop = asyncio.new_event_loop()
    results: list[Any] = []

    def run_classify() -> None:
        results.clear()
        for batch in batches:
            results.append(loop.run_until_complete(classify_batch(batch, deps)))

    def run_publish() -> None:
        for batch, result in zip(batches, results, strict=True):
            with batch_span(batch, len(result.verdicts)):
                for record, verdict in result.verdicts:
                    encode(record, verdict)

    def run_parse() -> None:
        for r in raws:
            parse_email(r)

    def run_prepare() -> None:
        for e in emails:
            prepare(e)

    prepared = [[prepare(e) for e in b] for b in email_batches]

    def run_handcrafted() -> None:
        for b, p in zip(email_batches, prepared, strict=True):
            handcrafted_matrix(b, p)

    def run_transform() -> None:
        for b in email_batches:
            pipeline.transform(b, None)

    run_classify()  # warm-up (codec caches, regex compilation)
    verdicts = sum(len(r.verdicts) for r in results)
    stages: dict[str, float] = {}
    stages["classify_batch"] = _best(run_classify, args.repeat)
    stages["publish_encode"] = _best(run_publish, args.repeat)
    stages["parse_email"] = _best(run_parse, args.repeat)
    stages["transform (features)"] = _best(run_transform, args.repeat)
    stages["prepare (html_to_text)"] = _best(run_prepare, args.repeat)
    stages["handcrafted_matrix"] = _best(run_handcrafted, args.repeat)
    per_message = {k: round(v / n * 1e6, 1) for k, v in stages.items()}
    total = stages["classify_batch"] + stages["publish_encode"]
    summary: dict[str, object] = {
        "messages": n,
        "verdicts": verdicts,
        "batch": BATCH,
        "cpu": f"one core (sched_setaffinity), process CPU time, best of {args.repeat} passes",
        "us_per_message": per_message,
        "hot_path_us_per_message": round(total / n * 1e6, 1),
        "hot_path_messages_per_cpu_second": round(n / total, 1),
        "left_out": "Kafka consume/produce, Triton gRPC, Redis (reputation off)",
    }
    loop.close()
    if args.write:
        write_results("inference_hotpath", summary)
    else:
        print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
