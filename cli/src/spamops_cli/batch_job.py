"""``spamops score``: batch inference over Ray Data (issue 18, "Ray Jobs -> batch inference").

The wiring around ``batch.py`` (the pure rows -> verdict rows logic):

* ``fetch_model``: the version (production alias by default, or ``--alias`` /
  ``--version``) from MLflow: its run's feature pipeline and booster file (the
  booster's sha256 checked against the trainer's record, as the bridge does) and
  its threshold (the run's ModelTrained, as inference reads it). Downloaded once,
  on the driver, and shipped to the actors as bytes, so a Ray cluster's nodes
  need no access to the artifact store.
* ``read_inputs``: an mbox, a maildir, a folder of .eml files (``mailbox_io``) or
  a snapshot parquet written by ``spamops ingest`` (its ``raw`` column; its
  labels are kept in the output).
* ``run``: Ray in-process (``num_cpus``) or the cluster of ``RAY_ADDRESS``;
  ``ray.data.from_items`` -> ``map_batches`` with ``BatchScorer`` (a callable
  class: pipeline + booster loaded once per actor, ``concurrency`` actors) ->
  Arrow blocks collected on the driver -> ONE parquet file written with pyarrow
  (Ray Data's ``write_parquet`` writes a directory of files; one file is what a
  user asks for with ``--output FILE.parquet`` and fits local sizes).

Reputation: ``auto`` (default) reads the online store (Redis via Feast, as the
inference service does) when Redis answers a ping, else uses the unseen-domain
defaults; ``online`` insists on the store (rows it failed on say
``degraded``); ``defaults`` never asks it. The summary says which was used.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from spamops_runtime.settings import PlatformSettings

from spamops_cli.batch import (
    OUTPUT_COLUMNS,
    VERDICT_SCHEMA,
    ModelArtifacts,
    ReputationLookup,
    load_scoring_model,
    rows_table,
    score_rows,
    summarize,
)

logger = logging.getLogger(__name__)

ReputationMode = Literal["auto", "online", "defaults"]
BATCH_SIZE = 256


class BatchError(Exception):
    """The job cannot run (the message says why)."""


# ------------------------------------------------------------------ the model
def fetch_model(
    settings: PlatformSettings, *, alias: str | None = "production", version: int | None = None
) -> ModelArtifacts:
    """A registered version's pipeline, booster and threshold from MLflow."""
    import mlflow
    from mlflow.exceptions import MlflowException
    from spamops_schemas import ModelTrained
    from spamops_schemas.registry import (
        MODEL_FILE_ARTIFACT,
        PIPELINE_ARTIFACT,
        RUN_TAG_MODEL_SHA256,
        RUN_TAG_MODEL_TRAINED,
        TAG_PARITY,
        TAG_RUN,
    )

    client = mlflow.MlflowClient(tracking_uri=settings.mlflow_uri)
    name = settings.model_name
    try:
        if version is not None:
            mv = client.get_model_version(name, str(version))
        else:
            mv = client.get_model_version_by_alias(name, alias or "production")
    except MlflowException as exc:
        which = f"version {version}" if version is not None else f"alias {alias!r}"
        raise BatchError(f"{name} has no {which} in MLflow at {settings.mlflow_uri}") from exc
    run_id = mv.tags.get(TAG_RUN) or mv.run_id
    if not run_id:
        raise BatchError(f"{name} v{mv.version} names no run")
    run = client.get_run(run_id)
    trained_json = run.data.tags.get(RUN_TAG_MODEL_TRAINED)
    threshold = ModelTrained.from_bytes(trained_json).threshold if trained_json else 0.5
    with tempfile.TemporaryDirectory(prefix="spamops-score-") as tmp:

        def download(path: str) -> Path:
            return Path(
                mlflow.artifacts.download_artifacts(
                    run_id=run_id,
                    artifact_path=path,
                    dst_path=tmp,
                    tracking_uri=settings.mlflow_uri,
                )
            )

        pipeline_dir = download(PIPELINE_ARTIFACT)
        files = {
            str(p.relative_to(pipeline_dir)): p.read_bytes()
            for p in sorted(pipeline_dir.rglob("*"))
            if p.is_file()
        }
        booster = download(MODEL_FILE_ARTIFACT).read_bytes()
    expected = run.data.tags.get(RUN_TAG_MODEL_SHA256)
    if expected and hashlib.sha256(booster).hexdigest() != expected:
        raise BatchError(f"{MODEL_FILE_ARTIFACT} of run {run_id} is not the trainer's (sha256)")
    parity = mv.tags.get(TAG_PARITY)
    return ModelArtifacts(
        model_name=name,
        version=int(mv.version),
        run_id=run_id,
        threshold=float(threshold),
        pipeline_files=files,
        booster=booster,
        parity_max_abs_diff=float(parity) if parity else None,
        aliases=tuple(sorted(mv.aliases or [])),
    )


# ----------------------------------------------------------------- the inputs
def is_snapshot(path: Path) -> bool:
    """A parquet file (``spamops ingest``'s snapshot) rather than mail."""
    if not path.is_file():
        return False
    with path.open("rb") as handle:
        return handle.read(4) == b"PAR1"


def read_inputs(path: Path) -> Iterator[dict[str, Any]]:
    """``{index, source_path, source_name, raw, label}`` per message under ``path``."""
    from spamops_cli.mailbox_io import iter_raw_messages

    source = str(path)
    if is_snapshot(path):
        table = pq.read_table(path)
        missing = [c for c in ("raw", "source_id") if c not in table.column_names]
        if missing:
            raise BatchError(f"{path} is parquet but not a snapshot: no {missing} column")
        labels = (
            table.column("label").to_pylist()
            if "label" in table.column_names
            else [None] * table.num_rows
        )
        raws = table.column("raw").to_pylist()
        names = table.column("source_id").to_pylist()
        for index, (raw, name, label) in enumerate(zip(raws, names, labels, strict=True)):
            yield {
                "index": index,
                "source_path": source,
                "source_name": str(name),
                "raw": raw,
                "label": label,
            }
        return
    for index, (name, raw) in enumerate(iter_raw_messages(path)):
        yield {
            "index": index,
            "source_path": source,
            "source_name": name,
            "raw": raw,
            "label": None,
        }


# ------------------------------------------------------------------------ Ray
def start_ray(num_cpus: int) -> bool:
    """Connect to ``RAY_ADDRESS`` or start Ray in-process; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    address = os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=False)
    else:
        ray.init(
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=False,
            configure_logging=False,
        )
    return True


@dataclass(frozen=True)
class ReputationConfig:
    """How the actors reach the online store (None: the defaults)."""

    redis: str


class BatchScorer:
    """Ray Data UDF: loads the model (and the reputation store) once per actor."""

    def __init__(
        self,
        artifacts: ModelArtifacts,
        reputation: ReputationConfig | None,
        now: datetime,
        max_message_bytes: int,
    ) -> None:
        self.model = load_scoring_model(artifacts, nthread=1)
        self.now = now
        self.max_message_bytes = max_message_bytes
        self.lookup: ReputationLookup | None = None
        if reputation is not None:
            from spamops_features.reputation import ReputationStore

            directory = tempfile.mkdtemp(prefix="spamops-batch-feast-")
            self.lookup = ReputationStore.open(directory, reputation.redis).online

    def __call__(self, batch: dict[str, np.ndarray]) -> pa.Table:
        columns = list(batch)
        n = len(batch[columns[0]]) if columns else 0
        items = [{c: batch[c][i] for c in columns} for i in range(n)]
        rows = score_rows(
            items,
            self.model,
            reputation=self.lookup,
            now=self.now,
            max_message_bytes=self.max_message_bytes,
        )
        return rows_table(rows)


def redis_answers(url: str, timeout: float = 2.0) -> bool:
    """Whether Redis at ``url`` answers a PING."""
    import redis

    try:
        client = redis.Redis.from_url(url, socket_connect_timeout=timeout, socket_timeout=timeout)
        try:
            return bool(client.ping())
        finally:
            client.close()
    except Exception:
        return False


@dataclass
class JobResult:
    """A finished job: its rows and how long it took."""

    table: pa.Table
    model: ModelArtifacts
    reputation: str  # what was used: online store or defaults, and why
    seconds_total: float
    seconds_scoring: float
    num_cpus: int
    ray_address: str | None
    output: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        """The JSON summary of ``spamops score``."""
        counts = summarize(self.table)
        return {
            **counts.as_dict(),
            "emails_per_s": round(counts.messages / self.seconds_scoring, 1)
            if self.seconds_scoring > 0
            else None,
            "seconds": round(self.seconds_total, 2),
            "seconds_scoring": round(self.seconds_scoring, 2),
            "model_name": self.model.model_name,
            "model_version": self.model.version,
            "model_aliases": list(self.model.aliases),
            "threshold": self.model.threshold,
            "onnx_parity_max_abs_diff": self.model.parity_max_abs_diff,
            "reputation": self.reputation,
            "ray": self.ray_address or f"in-process, num_cpus={self.num_cpus}",
            "output": str(self.output) if self.output else None,
            **self.timings,
        }


def input_dataset(items: list[dict[str, Any]], num_cpus: int, batch_size: int) -> Any:
    """The items as a Ray dataset of a few blocks per actor (progress bars off)."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    blocks = max(num_cpus * 2, min(len(items) // batch_size + 1, num_cpus * 8))
    return ray.data.from_items(items, override_num_blocks=blocks)


def score_with_ray(
    items: list[dict[str, Any]],
    artifacts: ModelArtifacts,
    *,
    num_cpus: int,
    reputation: ReputationConfig | None,
    now: datetime,
    max_message_bytes: int,
    batch_size: int = BATCH_SIZE,
) -> pa.Table:
    """Every item scored by ``num_cpus`` actors; the rows in input order."""
    import ray
    import ray.data

    if not items:
        return VERDICT_SCHEMA.empty_table()
    dataset = input_dataset(items, num_cpus, batch_size)
    scored = dataset.map_batches(
        BatchScorer,
        fn_constructor_kwargs={
            "artifacts": artifacts,
            "reputation": reputation,
            "now": now,
            "max_message_bytes": max_message_bytes,
        },
        batch_size=batch_size,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=num_cpus),
        num_cpus=1,
    )
    tables = [t for t in ray.get(scored.to_arrow_refs()) if t.num_rows]
    if not tables:
        return VERDICT_SCHEMA.empty_table()
    table = pa.concat_tables([t.cast(VERDICT_SCHEMA) for t in tables])
    return table.sort_by("index")


def write_verdicts(table: pa.Table, output: Path) -> Path:
    """The output columns as one parquet file, written atomically."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    os.close(fd)
    try:
        pq.write_table(table.select(list(OUTPUT_COLUMNS)), tmp, compression="zstd")
        os.replace(tmp, output)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return output


def run(
    settings: PlatformSettings,
    path: Path,
    *,
    output: Path | None,
    alias: str | None = "production",
    version: int | None = None,
    num_cpus: int = 2,
    reputation: ReputationMode = "auto",
    max_message_bytes: int | None = None,
    artifacts: ModelArtifacts | None = None,
    on_phase: Callable[[str], None] | None = None,
) -> JobResult:
    """Fetch the model, read ``path``, score it over Ray Data, write ``output``."""
    from spamops_cli.batch import MAX_MESSAGE_BYTES

    began = time.perf_counter()
    say = on_phase or (lambda _: None)
    timings: dict[str, float] = {}
    if artifacts is None:
        say("fetching the model from MLflow")
        artifacts = fetch_model(settings, alias=alias, version=version)
    timings["seconds_model"] = round(time.perf_counter() - began, 2)
    mark = time.perf_counter()
    say(f"reading {path}")
    items = list(read_inputs(path))
    timings["seconds_read"] = round(time.perf_counter() - mark, 2)
    rep_config: ReputationConfig | None = None
    if reputation == "defaults":
        rep_used = "defaults (asked: --reputation defaults)"
    elif reputation == "online" or redis_answers(settings.redis):
        rep_config = ReputationConfig(settings.redis)
        rep_used = f"online store (Redis {settings.redis}), as serving"
    else:
        rep_used = f"defaults (Redis {settings.redis} did not answer)"
    mark = time.perf_counter()
    say("starting Ray")
    started = start_ray(num_cpus)
    timings["seconds_ray_start"] = round(time.perf_counter() - mark, 2)
    try:
        say(f"scoring {len(items)} message(s) with {artifacts.model_name} v{artifacts.version}")
        mark = time.perf_counter()
        table = score_with_ray(
            items,
            artifacts,
            num_cpus=num_cpus,
            reputation=rep_config,
            now=datetime.now(UTC),
            max_message_bytes=max_message_bytes or MAX_MESSAGE_BYTES,
        )
        scoring = time.perf_counter() - mark
    finally:
        if started:
            import ray

            ray.shutdown()
    if output is not None:
        write_verdicts(table, output)
    return JobResult(
        table=table,
        model=artifacts,
        reputation=rep_used,
        seconds_total=time.perf_counter() - began,
        seconds_scoring=scoring,
        num_cpus=num_cpus,
        ray_address=os.environ.get("RAY_ADDRESS"),
        output=output,
        timings=timings,
    )


def job_id() -> str:
    """One id per job: the correlation id of its published verdicts."""
    return f"batch-{uuid.uuid4()}"
