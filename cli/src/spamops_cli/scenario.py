"""The temporal-shift scenario on a running platform (`make demo-drift`, the drift benchmark).

1. A model of the `-1` corpus groups is trained, registered and approved.
2. No-drift stream: the `-1` groups' test split (twice, fresh keys, shuffled)
   must raise no DriftDetected.
3. The `-2` groups (collected later) are split: 30 % held back (never labelled,
   never trained on), 70 % streamed to emails.inbox while their labels arrive
   on emails.feedback.
4. The monitor publishes DriftDetected; the trainer builds parent + labelled
   feedback into a drift snapshot and trains; the new version is registered
   and approved.
5. The held-back messages are classified before and after: F1 of each model.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sklearn.metrics import f1_score
from spamops_features.snapshot import build_snapshot
from spamops_features.snapshot_io import load_snapshot
from spamops_runtime.replay import read_topic
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import (
    DatasetReady,
    DriftDetected,
    EmailClassified,
    EmailLabeled,
    Event,
    EventDecodeError,
    ModelPromoted,
    ModelRegistered,
    ModelTrained,
    PromotionApproved,
    decode_event,
)

from spamops_cli.corpus import iter_corpus
from spamops_cli.ingest import corpus_cache_dir, snapshots_dir
from spamops_cli.kafka_io import RawRecord, send_events, send_raw

BEFORE_GROUPS = {"easy-ham-1", "hard-ham-1", "spam-1"}
AFTER_GROUPS = {"easy-ham-2", "spam-2"}


@dataclass
class DriftLoopResult:
    """What the scenario measured."""

    first_version: int = 0
    retrained_version: int = 0
    no_drift_messages: int = 0
    false_alarms: int = 0
    held_back: int = 0
    f1_before: float = 0.0
    f1_after: float = 0.0
    seconds_to_drift: float = 0.0
    seconds_to_production: float = 0.0
    drift: dict[str, Any] = field(default_factory=dict)


class ScenarioError(RuntimeError):
    """A step did not happen in time."""


def _first(
    settings: PlatformSettings, topic: str, match: Callable[[Event], bool], timeout_s: float
) -> Event:
    async def watch() -> Event:
        async for record in read_topic(settings, topic, follow=True):
            try:
                event = decode_event(record.value)
            except EventDecodeError:
                continue
            if match(event):
                return event
        raise ScenarioError(f"{topic} ended")

    try:
        return asyncio.run(asyncio.wait_for(watch(), timeout_s))
    except TimeoutError as exc:
        raise ScenarioError(f"nothing expected on {topic} within {timeout_s:.0f}s") from exc


def _all(settings: PlatformSettings, topic: str, match: Callable[[Event], bool]) -> list[Event]:
    async def collect() -> list[Event]:
        found = []
        async for record in read_topic(settings, topic, idle_timeout_s=0.5):
            try:
                event = decode_event(record.value)
            except EventDecodeError:
                continue
            if match(event):
                found.append(event)
        return found

    return asyncio.run(collect())


def _verdicts(
    settings: PlatformSettings, keys: set[str], timeout_s: float
) -> dict[str, EmailClassified]:
    found: dict[str, EmailClassified] = {}
    deadline = time.monotonic() + timeout_s
    while len(found) < len(keys) and time.monotonic() < deadline:
        for event in _all(
            settings,
            "emails.verdicts",
            lambda e: isinstance(e, EmailClassified) and e.message_key in keys,
        ):
            assert isinstance(event, EmailClassified)
            found[event.message_key] = event
        time.sleep(1)
    return found


def _f1(found: dict[str, EmailClassified], labels: Mapping[str, str], prefix: str) -> float:
    keys = sorted(found)
    truth = [labels[k.removeprefix(prefix)] == "spam" for k in keys]
    return float(f1_score(truth, [found[k].verdict == "spam" for k in keys]))


def _held_back_f1(
    settings: PlatformSettings, held: list[Any], labels: Mapping[str, str], prefix: str
) -> float:
    """Stream the held-back messages under fresh keys and score the production model's F1."""
    keys = {f"{prefix}{m.source_id}" for m in held}
    asyncio.run(
        send_raw(settings, [RawRecord("emails.inbox", m.raw, key=f"{prefix}{m.source_id}")
                            for m in held])
    )  # fmt: skip
    return _f1(_verdicts(settings, keys, 300), labels, prefix)


def _promote(
    settings: PlatformSettings, version: int, approver: str, timeout_s: float
) -> ModelPromoted:
    approval = PromotionApproved(
        producer="spamops-scenario", model_name=settings.model_name, version=version,
        approved_by=approver, reason="temporal-shift scenario",
    )  # fmt: skip
    asyncio.run(send_events(settings, [approval]))
    promoted = _first(
        settings,
        "models.promoted",
        lambda e: isinstance(e, ModelPromoted) and e.causation_id == approval.event_id,
        timeout_s,
    )
    assert isinstance(promoted, ModelPromoted)
    return promoted


def _trained_registered_promoted(
    settings: PlatformSettings, dataset: Event, approver: str, timeout_s: float
) -> int:
    """Follow a DatasetReady to its ModelTrained and ModelRegistered, then approve the version."""
    trained = _first(
        settings, "models.trained",
        lambda e: isinstance(e, ModelTrained) and e.causation_id == dataset.event_id, timeout_s,
    )  # fmt: skip
    registered = _first(
        settings, "models.registered",
        lambda e: isinstance(e, ModelRegistered) and e.causation_id == trained.event_id,
        timeout_s,
    )  # fmt: skip
    assert isinstance(registered, ModelRegistered)
    _promote(settings, registered.version, approver, 120)
    return registered.version


def run_scenario(
    settings: PlatformSettings,
    *,
    log: Callable[[str], None] = print,
    approver: str = "on-call",
    timeout_s: float = 1200,
    seed: int = 7,
) -> DriftLoopResult:
    """Run every step on the platform described by ``settings``; raises ScenarioError."""
    result = DriftLoopResult()
    rng = random.Random(seed)  # noqa: S311 - shuffling, not security
    run = uuid.uuid4().hex[:6]
    cache = corpus_cache_dir(settings)

    log("1/5 training a model on the -1 groups")
    before = build_snapshot(
        iter_corpus(cache, BEFORE_GROUPS), snapshots_dir(settings), producer="spamops-scenario"
    )
    asyncio.run(send_events(settings, [before]))
    result.first_version = _trained_registered_promoted(settings, before, approver, timeout_s)
    log(f"    v{result.first_version} serves production")

    log("2/5 no-drift stream: the -1 groups' test split")
    frame = load_snapshot(before.uri, before.sha256)
    same = [bytes(r) for r, s in zip(frame["raw"], frame["split"], strict=True) if s == "test"]
    same = same * 2
    rng.shuffle(same)  # a window of one group alone is a real change of the class mix
    started_ms = int(time.time() * 1000)
    keys = {f"nodrift-{run}-{i}" for i in range(len(same))}
    asyncio.run(
        send_raw(settings, [RawRecord("emails.inbox", raw, key=f"nodrift-{run}-{i}")
                            for i, raw in enumerate(same)])
    )  # fmt: skip
    _verdicts(settings, keys, 300)
    time.sleep(10)  # the monitor checks its windows in the background
    result.no_drift_messages = len(same)
    result.false_alarms = len(
        _all(
            settings,
            "monitoring.drift",
            lambda e: (
                isinstance(e, DriftDetected)
                and e.model_version == result.first_version
                and e.occurred_at.timestamp() * 1000 >= started_ms
            ),
        )
    )
    log(f"    {len(same)} messages, false alarms: {result.false_alarms}")

    log("3/5 the -2 groups: 30 % held back, the first model on them")
    later = list(iter_corpus(cache, AFTER_GROUPS))
    rng.shuffle(later)
    held = [m for m in later if int(hashlib.sha256(m.source_id.encode()).hexdigest(), 16) % 10 < 3]
    streamed = [m for m in later if m not in held]
    labels = {m.source_id: m.label for m in later}
    result.held_back = len(held)
    result.f1_before = _held_back_f1(settings, held, labels, f"before-{run}-")
    log(
        f"    F1 of v{result.first_version} on {len(held)} held-back messages: "
        f"{result.f1_before:.3f}"
    )

    log("4/5 the shifted stream, with labels on emails.feedback")
    began = time.monotonic()
    for start in range(0, len(streamed), 200):
        chunk = streamed[start : start + 200]
        asyncio.run(
            send_raw(settings, [RawRecord("emails.inbox", m.raw, key=f"{run}-{m.source_id}")
                                for m in chunk])
        )  # fmt: skip
        asyncio.run(
            send_events(settings, [
                EmailLabeled(producer="reviewers", message_key=f"{run}-{m.source_id}",
                             label=m.label, labelled_by="reviewers")  # type: ignore[arg-type]
                for m in chunk
            ])
        )  # fmt: skip
    drift = _first(
        settings, "monitoring.drift",
        lambda e: isinstance(e, DriftDetected) and e.model_version == result.first_version,
        timeout_s,
    )  # fmt: skip
    assert isinstance(drift, DriftDetected)
    result.seconds_to_drift = time.monotonic() - began
    result.drift = {
        "kind": drift.kind, "drift_share": drift.drift_share, "severity": drift.severity,
        "features": [f.feature for f in drift.drifted_features], "report": drift.report_uri,
        "report_url": drift.report_url,
    }  # fmt: skip
    log(f"    DriftDetected after {result.seconds_to_drift:.0f}s: {drift.kind}, "
        f"share {drift.drift_share:.2f}, {drift.report_url or drift.report_uri}")  # fmt: skip
    retrain = _first(
        settings, "datasets.ready",
        lambda e: isinstance(e, DatasetReady) and e.reason == "drift"
        and e.parent_dataset_id == before.dataset_id, timeout_s,
    )  # fmt: skip
    result.retrained_version = _trained_registered_promoted(settings, retrain, approver, timeout_s)
    result.seconds_to_production = time.monotonic() - began
    log(f"    v{result.retrained_version} (retrained) serves production after "
        f"{result.seconds_to_production:.0f}s")  # fmt: skip

    log("5/5 the retrained model on the same held-back messages")
    result.f1_after = _held_back_f1(settings, held, labels, f"after-{run}-")
    log(f"    F1 before {result.f1_before:.3f} -> after {result.f1_after:.3f}")
    return result
