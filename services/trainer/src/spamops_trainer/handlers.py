"""The trainer's reactions to typed events: plain functions, dependencies passed in."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from spamops_features.snapshot import build_snapshot
from spamops_features.snapshot_io import SnapshotError, load_snapshot
from spamops_features.snapshot_io import load_snapshot as read_snapshot
from spamops_runtime.kafka import RecordContext, RejectRecord
from spamops_schemas import DatasetReady, DriftDetected, Event, ModelTrained

from spamops_trainer.adapters import DatasetRef, FeedbackMessage, MlflowTracker
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
    threshold_folds: int = 5
    # After a training: copy the reputation states into the online store (Redis).
    after_training: Callable[[], None] | None = None


@dataclass
class DriftDeps:
    """What the DriftDetected handler needs."""

    tracker: MlflowTracker
    publish: Callable[[Event], Awaitable[None]]
    feedback: Callable[[int], Awaitable[list[FeedbackMessage]]]  # labelled since (ms)
    snapshots_dir: Path
    cooldown_s: float
    clock: Callable[[], float] = time.monotonic
    last_retraining: dict[str, float] = field(default_factory=dict)  # model name -> clock


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
    abandoned = await asyncio.to_thread(deps.tracker.close_abandoned_runs, str(event.event_id))
    if abandoned:
        logger.warning(
            "a previous training of this event was interrupted; its runs are marked KILLED",
            extra={"run_ids": abandoned},
        )
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
        threshold_folds=deps.threshold_folds,
    )
    if deps.after_training is not None:
        try:
            await asyncio.to_thread(deps.after_training)
        except Exception:
            # Serving keeps the previous reputation until the next training: not worth
            # failing a model that trained fine.
            logger.exception("could not copy reputation features to the online store")
    await deps.publish(trained)


@dataclass(frozen=True)
class _SnapshotRow:
    source_id: str
    group: str
    label: str
    raw: bytes


def drift_snapshot(
    parent: DatasetRef, feedback: list[FeedbackMessage], out_dir: Path, *, producer: str
) -> DatasetReady:
    """The parent snapshot plus the labelled feedback, as a new content-addressed snapshot."""
    frame = read_snapshot(parent.uri, parent.sha256)
    rows: list[_SnapshotRow | FeedbackMessage] = [
        _SnapshotRow(source_id, group, label, raw)
        for source_id, group, label, raw in zip(
            frame["source_id"].astype(str),
            frame["group"].astype(str),
            frame["label"].astype(str),
            frame["raw"],
            strict=True,
        )
    ]
    known = {row.source_id for row in rows}
    rows += [m for m in feedback if m.source_id not in known]
    return build_snapshot(
        rows,
        out_dir,
        reason="drift",
        parent_dataset_id=parent.dataset_id,
        producer=producer,
    )


async def on_drift_detected(event: DriftDetected, record: RecordContext, deps: DriftDeps) -> None:
    """DriftDetected -> parent snapshot + labelled feedback -> DatasetReady(reason=drift).

    A burst of drift events retrains once: within ``cooldown_s`` of the last
    retraining for the same model, events are acknowledged and logged only.
    Training itself then follows from the DatasetReady, like any other.
    """
    now = deps.clock()
    last = deps.last_retraining.get(event.model_name)
    if last is not None and now - last < deps.cooldown_s:
        logger.info(
            "drift within the cooldown: no new retraining",
            extra={"model_version": event.model_version, "seconds_since": round(now - last, 1)},
        )
        return
    parent = await asyncio.to_thread(deps.tracker.dataset_of, event.model_name, event.model_version)
    if parent is None:
        raise RejectRecord("no-parent-dataset", "no finished training to extend")
    feedback = await deps.feedback(parent.created_ms)
    if not feedback:
        logger.warning("drift but no labelled feedback since the parent dataset: no retraining")
        return
    try:
        ready = await asyncio.to_thread(
            drift_snapshot, parent, feedback, deps.snapshots_dir, producer=SERVICE
        )
    except SnapshotError as exc:
        raise RejectRecord("bad-snapshot", f"parent snapshot: {exc}") from exc
    ready = ready.model_copy(
        update={"correlation_id": event.correlation_id, "causation_id": event.event_id}
    )
    logger.info(
        "drift snapshot built",
        extra={
            "dataset_id": ready.dataset_id,
            "parent_dataset_id": parent.dataset_id,
            "feedback": len(feedback),
        },
    )
    await deps.publish(ready)
    # Only once the DatasetReady is out: a failed publish retries the record, and the
    # retry must not find the cooldown already running (the retraining would be lost).
    deps.last_retraining[event.model_name] = now
