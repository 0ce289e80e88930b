"""`spamops ingest`: corpus (or a user's messages) -> content-addressed snapshot -> DatasetReady."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

from spamops_features.snapshot import build_snapshot
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import DatasetReady

from spamops_cli.corpus import CorpusError, iter_corpus, iter_user_messages

logger = logging.getLogger(__name__)

Reason = Literal["initial", "drift", "manual"]


class IngestError(RuntimeError):
    """Ingestion failed: the message says what to fix."""


def snapshots_dir(settings: PlatformSettings) -> Path:
    """Where content-addressed snapshots are written."""
    return settings.state_dir / "data" / "datasets"


def corpus_cache_dir(settings: PlatformSettings) -> Path:
    """Where the corpus tarball and its extraction are cached."""
    return settings.corpus_cache_dir


def run_ingest(
    settings: PlatformSettings,
    *,
    groups: set[str] | None = None,
    path: Path | None = None,
    labels: Path | None = None,
    reason: str = "initial",
    seed: int = 42,
) -> DatasetReady:
    """Build the snapshot and return its (unpublished) DatasetReady."""
    if reason not in {"initial", "drift", "manual"}:
        raise IngestError(f"--reason must be initial, drift or manual, not {reason!r}")
    if (path is None) != (labels is None):
        raise IngestError("--path and --labels go together")
    try:
        if path is not None and labels is not None:
            messages = iter_user_messages(path, labels)
        else:
            messages = iter_corpus(corpus_cache_dir(settings), groups)
        event = build_snapshot(
            messages,
            snapshots_dir(settings),
            seed=seed,
            reason=reason,  # type: ignore[arg-type]
        )
    except (CorpusError, FileNotFoundError, ValueError) as exc:
        raise IngestError(str(exc)) from exc
    logger.info("snapshot built", extra={"dataset_id": event.dataset_id, "rows": event.rows})
    return event
