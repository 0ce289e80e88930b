"""The trainer's reactions to typed events: plain functions, dependencies passed in."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pandas as pd
from spamops_features.snapshot_io import SnapshotError, load_snapshot
from spamops_runtime.kafka import RecordContext, RejectRecord
from spamops_schemas import DatasetReady, Event, ModelTrained

from spamops_trainer.adapters import MlflowTracker
from spamops_trainer.training import ReputationLookup, train_and_log
from spamops_trainer.tuning import SearchConfig

logger = logging.getLogger(__name__)

SERVICE = "trainer"


@dataclass
class TrainerDeps:
    """What the handlers need from the outside world."""

    tracker: MlflowTracker
    publish: Callable[[Event], Awaitable[None]]
    search: SearchConfig
    reputation: ReputationLookup | None = None
    threshold: float | None = None
    max_val_fpr: float = 0.005


def load_training_data(event: DatasetReady) -> pd.DataFrame:
    """The snapshot, checked: readable, matching sha256, both classes present."""
    try:
        df = load_snapshot(event.uri, event.sha256)
    except SnapshotError as exc:
        raise RejectRecord("bad-snapshot", str(exc)) from exc
    missing = {"raw", "label", "split", "group"} - set(df.columns)
    if missing:
        raise RejectRecord("bad-snapshot", f"snapshot lacks columns {sorted(missing)}")
    labels = set(df["label"].unique())
    if labels != {"spam", "ham"}:
        raise RejectRecord("one-class", f"snapshot has labels {sorted(labels)}; need spam and ham")
    for split in ("train", "validation", "test"):
        part = df[df["split"] == split]
        if part.empty or part["label"].nunique() < 2:
            raise RejectRecord("one-class", f"split {split} lacks one of the classes")
    return df


async def on_dataset_ready(event: DatasetReady, record: RecordContext, deps: TrainerDeps) -> None:
    """DatasetReady -> train -> ModelTrained; a replayed event republishes, never retrains."""
    done = await asyncio.to_thread(deps.tracker.finished_training, str(event.event_id))
    if done is not None:
        logger.info("already trained for this event; republishing", extra={"run_id": done.run_id})
        await deps.publish(done)
        return
    df = await asyncio.to_thread(load_training_data, event)
    logger.info(
        "training started",
        extra={"dataset_id": event.dataset_id, "rows": len(df), "trials": deps.search.num_samples},
    )
    trained: ModelTrained = await asyncio.to_thread(
        train_and_log,
        event,
        df,
        deps.tracker,
        deps.search,
        producer=SERVICE,
        reputation=deps.reputation,
        threshold=deps.threshold,
        max_val_fpr=deps.max_val_fpr,
    )
    await deps.publish(trained)
