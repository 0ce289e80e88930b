"""The closed loop on the real temporal shift of the corpus (issue 6, item 4).

The whole platform runs (trainer, registry-bridge, inference, monitor as
processes). A model trained on the `-1` groups serves production; the `-2`
groups then stream in while people label most of them; the monitor sees the
shift and publishes DriftDetected; the trainer builds parent + labelled
feedback into a new snapshot and trains; the new version is registered and
approved; it classifies a held-back part of the `-2` messages (never labelled,
never trained on) better than the first model: at least a fifth of the
first model's errors there are gone.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest
from sklearn.metrics import f1_score
from spamops_cli import stack as local_stack
from spamops_features.snapshot_io import load_snapshot
from spamops_runtime.settings import PlatformSettings
from spamops_schemas import (
    DatasetReady,
    DriftDetected,
    EmailClassified,
    EmailLabeled,
    ModelPromoted,
    ModelRegistered,
    PromotionApproved,
)

from tests.integration.conftest import StackFactory
from tests.integration.helpers import events_on, send, spamops

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

MODEL = "spam-detector"
ENV = {
    "SPAMOPS_TRAINER_NUM_SAMPLES": "2",
    "SPAMOPS_TRAINER_MAX_ESTIMATORS": "100",
    "SPAMOPS_TRAINER_GRACE_REPORTS": "1",
    "SPAMOPS_TRAINER_DRIFT_COOLDOWN_S": "3600",
    "SPAMOPS_REGISTRY_BRIDGE_MIN_F1": "0.5",
    "SPAMOPS_REGISTRY_BRIDGE_MAX_FALSE_POSITIVE_RATE": "0.2",
    "SPAMOPS_REGISTRY_BRIDGE_CHAMPION_MARGIN": "1.0",
    "SPAMOPS_MONITOR_WINDOW_SIZE": "400",
    "SPAMOPS_MONITOR_MIN_WINDOW_SIZE": "200",
    "SPAMOPS_MONITOR_COOLDOWN_S": "3600",
}


@pytest.fixture(scope="module")
def platform(stack_factory: StackFactory) -> Iterator[PlatformSettings]:
    """Everything: infrastructure and the four services."""
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ENV.items():
            patch.setenv(key, value)
        settings = stack_factory(components=None, name="drift-loop-stack")
    yield settings
    local_stack.down(settings)


def verdicts(settings: PlatformSettings, keys: set[str]) -> dict[str, EmailClassified]:
    def match(e: object) -> bool:
        return isinstance(e, EmailClassified) and e.message_key in keys

    deadline = time.monotonic() + 300
    while True:
        found = {
            e.message_key: e for e, _ in asyncio.run(events_on(settings, "emails.verdicts", match))
        }
        if len(found) == len(keys) or time.monotonic() > deadline:
            return found
        time.sleep(2)


def f1_of(found: dict[str, EmailClassified], labels: dict[str, str]) -> float:
    keys = sorted(found)
    return float(
        f1_score([labels[k] == "spam" for k in keys], [found[k].verdict == "spam" for k in keys])
    )


def test_a_real_shift_is_detected_and_retraining_fixes_it(platform: PlatformSettings) -> None:
    # 1. A model of the -1 groups, promoted (make up's path).
    result = spamops(
        platform, "ingest", "--groups", "easy-ham-1,hard-ham-1,spam-1", "--promote-first",
        "--timeout-minutes", "10",
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    # 2. The -2 groups, read from a snapshot that is not published (no training on it).
    later = spamops(platform, "ingest", "--groups", "easy-ham-2,spam-2", "--no-publish")
    assert later.returncode == 0, later.stderr
    # The newest snapshot of the state directory is the one just built.
    path = max(
        (platform.state_dir / "data" / "datasets").glob("*/snapshot.parquet"),
        key=lambda p: p.stat().st_mtime,
    )
    uri = path.as_uri()
    frame = load_snapshot(uri, hashlib.sha256(path.read_bytes()).hexdigest())
    run = uuid.uuid4().hex[:6]
    columns = zip(
        frame["source_id"], frame["raw"], frame["label"], frame["sender_domain"], strict=True
    )
    messages = {
        f"{run}-{sid}": (bytes(raw), str(label), str(domain)) for sid, raw, label, domain in columns
    }
    held = {k for k in messages if int(hashlib.sha256(k.encode()).hexdigest(), 16) % 10 < 3}
    labelled = [k for k in messages if k not in held]
    labels = {k: v[1] for k, v in messages.items()}

    # 3. The first model on the held-back -2 messages.
    before_keys = {f"before-{k}" for k in held}
    asyncio.run(send(platform, "emails.inbox", [(f"before-{k}", messages[k][0]) for k in held]))
    before = verdicts(platform, before_keys)
    f1_before = f1_of({k.removeprefix("before-"): v for k, v in before.items()}, labels)

    # 4. The shifted stream, with people's labels arriving on emails.feedback.
    began = time.monotonic()
    for start in range(0, len(labelled), 200):
        chunk = labelled[start : start + 200]
        asyncio.run(send(platform, "emails.inbox", [(k, messages[k][0]) for k in chunk]))
        feedback = [
            EmailLabeled(producer="reviewers", message_key=k, label=labels[k],
                         labelled_by="qa", sender_domain=messages[k][2] or None)
            for k in chunk
        ]  # fmt: skip
        asyncio.run(
            send(platform, "emails.feedback", [(e.message_key, e.to_bytes()) for e in feedback])
        )

    # 5. DriftDetected -> the trainer's drift snapshot -> a new version.
    [(drift, _)] = asyncio.run(
        events_on(platform, "monitoring.drift", lambda e: isinstance(e, DriftDetected), wait_s=600)
    )[:1]
    detected_s = time.monotonic() - began
    assert drift.model_version == 1
    # The on-call engineer's view: plain kcat on monitoring.drift.
    kcat = shutil.which("kcat")
    if kcat is not None:
        read = subprocess.run(
            [kcat, "-b", platform.kafka_bootstrap, "-C", "-t", "monitoring.drift", "-e", "-q"],
            capture_output=True, text=True, check=True, timeout=60,
        )  # fmt: skip
        seen = [json.loads(line) for line in read.stdout.splitlines() if line.strip()]
        assert any(e["event_id"] == str(drift.event_id) for e in seen)
    [(retrain, _)] = asyncio.run(
        events_on(platform, "datasets.ready",
                  lambda e: isinstance(e, DatasetReady) and e.reason == "drift", wait_s=300)
    )[:1]  # fmt: skip
    assert retrain.counts_by_group.get("feedback", 0) > 0
    asyncio.run(
        events_on(platform, "models.registered",
                  lambda e: isinstance(e, ModelRegistered) and e.version == 2, wait_s=600)
    )  # fmt: skip
    approval = PromotionApproved(model_name=MODEL, version=2, approved_by="on-call")
    asyncio.run(send(platform, "models.promotion-approved", [(MODEL, approval.to_bytes())]))
    asyncio.run(
        events_on(platform, "models.promoted",
                  lambda e: isinstance(e, ModelPromoted) and e.version == 2, wait_s=120)
    )  # fmt: skip
    promoted_s = time.monotonic() - began

    # 6. The retrained model on the same held-back messages.
    after_keys = {f"after-{k}" for k in held}
    asyncio.run(send(platform, "emails.inbox", [(f"after-{k}", messages[k][0]) for k in held]))
    after = verdicts(platform, after_keys)
    assert {v.model_version for v in after.values()} == {2}
    f1_after = f1_of({k.removeprefix("after-"): v for k, v in after.items()}, labels)
    print(
        f"\nheld-back -2 messages: {len(held)}; F1 before {f1_before:.3f}, after {f1_after:.3f}; "
        f"drift after {detected_s:.0f}s ({drift.kind}, share {drift.drift_share:.2f}), "
        f"new model in production after {promoted_s:.0f}s"
    )
    # The first model's errors on the shifted mail are what retraining is for:
    # it must remove at least a fifth of them. (A fixed absolute gain depends
    # on how good the first model already is: with features 2.0 one CI run saw
    # 0.964 -> 0.978, 40 % of the errors gone, and failed a +0.02 bar.)
    assert f1_after > f1_before
    assert 1 - f1_after <= 0.8 * (1 - f1_before), (f1_before, f1_after)
