"""Which model serves which environment, and the switch between versions.

A ``ServingModel`` bundles everything one version needs: its fitted feature
pipeline, its threshold and its Triton model and version. The catalog hands a
batch the ``ServingModel`` of each environment once, at the start of the
batch, so a batch never mixes one version's features with another's model. A
switch loads the new pipeline first and only then replaces the entry: one
assignment on the event loop, so it is atomic for the batches.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from spamops_features.pipeline import FeaturePipeline

logger = logging.getLogger(__name__)

STAGING = "staging"
PRODUCTION = "production"


@dataclass(frozen=True)
class ServingModel:
    """One model version as the stream uses it."""

    alias: str
    model_name: str
    version: int
    threshold: float
    pipeline: FeaturePipeline
    triton_model: str


ModelLoader = Callable[[str, int], ServingModel]  # (alias, version) -> loaded model


class ModelCatalog:
    """The serving model of each alias; switched by ModelRegistered / ModelPromoted."""

    def __init__(self, loader: ModelLoader) -> None:
        self._loader = loader
        self._by_alias: dict[str, ServingModel] = {}
        self._lock = asyncio.Lock()

    def get(self, alias: str) -> ServingModel | None:
        """The current model of an alias, or None."""
        return self._by_alias.get(alias)

    def snapshot(self) -> dict[str, ServingModel]:
        """Every alias's model at this instant (what one batch uses throughout)."""
        return dict(self._by_alias)

    async def switch(self, alias: str, version: int) -> ServingModel:
        """Load ``version`` (pipeline from MLflow) off the loop, then swap it in atomically."""
        async with self._lock:
            current = self._by_alias.get(alias)
            if current is not None and current.version == version:
                return current
            loaded = await asyncio.to_thread(self._loader, alias, version)
            self._by_alias[alias] = loaded
        logger.info(
            "serving model switched",
            extra={
                "alias": alias,
                "version": version,
                "previous": current.version if current else None,
                "feature_spec_version": loaded.pipeline.spec.version,
            },
        )
        return loaded
