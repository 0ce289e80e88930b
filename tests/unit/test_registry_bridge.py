"""The registry bridge's pure parts: gate, ONNX export and parity, Triton configs, approvals."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pytest
import xgboost as xgb
from pydantic import SecretStr
from spamops_registry_bridge.adapters import VersionInfo
from spamops_registry_bridge.handlers import (
    BridgeDeps,
    check_approval,
    claim_approval,
    gate_failures,
)
from spamops_registry_bridge.onnx_export import export_onnx, onnx_spam_probability
from spamops_registry_bridge.settings import RegistryBridgeSettings
from spamops_registry_bridge.triton_model import kubernetes_config, local_config
from spamops_runtime.kafka import RecordContext, RejectRecord
from spamops_schemas import ClassificationMetrics, PromotionApproved
from spamops_schemas.registry import TAG_GATE, TAG_ONNX_SHA
from spamops_schemas.signing import signed


def metrics(f1: float, fpr: float) -> ClassificationMetrics:
    return ClassificationMetrics(
        f1=f1, precision=f1, recall=f1, roc_auc=0.99, false_positive_rate=fpr
    )


SETTINGS = RegistryBridgeSettings(min_f1=0.95, max_false_positive_rate=0.01, champion_margin=0.01)


# ------------------------------------------------------------------ gate
def test_a_good_model_without_champion_passes() -> None:
    assert gate_failures(metrics(0.97, 0.004), SETTINGS, None) == []


def test_absolute_thresholds_name_every_failed_check() -> None:
    failures = gate_failures(metrics(0.90, 0.02), SETTINGS, None)
    assert {f.gate for f in failures} == {"min_f1", "max_false_positive_rate"}
    f1 = next(f for f in failures if f.gate == "min_f1")
    assert (f1.actual, f1.threshold) == (0.90, 0.95)


def test_challenger_may_not_be_worse_than_the_champion_by_more_than_the_margin() -> None:
    champion = metrics(0.99, 0.001)
    assert gate_failures(metrics(0.985, 0.005), SETTINGS, champion) == []
    worse = gate_failures(metrics(0.975, 0.0125), SETTINGS, champion)
    assert {f.gate for f in worse} == {
        "champion_f1",
        "champion_false_positive_rate",
        "max_false_positive_rate",
    }


# ------------------------------------------------------------------ ONNX
def test_onnx_export_matches_xgboost() -> None:
    rng = np.random.default_rng(0)
    x = rng.random((400, 30), dtype=np.float32)
    y = (x[:, 0] + x[:, 1] > 1).astype(int)
    model = xgb.XGBClassifier(n_estimators=40, max_depth=4, tree_method="hist").fit(x, y)
    onnx_bytes = export_onnx(model, 30)
    p_onnx = onnx_spam_probability(onnx_bytes, x[:100])
    p_xgb = model.predict_proba(x[:100])[:, 1]
    assert np.max(np.abs(p_onnx - p_xgb)) <= 1e-5
    assert len(onnx_bytes) < 5 * 2**20


# --------------------------------------------------------------- configs
def test_local_config_pins_versions_and_batches() -> None:
    text = local_config(
        "spam-detector-staging", 527, [3, 1, 2],
        max_batch_size=64, dynamic_batching=True, max_queue_delay_microseconds=200,
        instance_count=1,
    )  # fmt: skip
    assert 'backend: "python"' in text
    assert "version_policy: { specific: { versions: [ 1, 2, 3 ] } }" in text
    assert "max_batch_size: 64" in text
    assert "dims: [ 527 ]" in text
    assert "dynamic_batching" in text


def test_kubernetes_config_uses_the_onnxruntime_backend_with_the_same_tensors() -> None:
    text = kubernetes_config("spam-detector-production", 527)
    assert 'backend: "onnxruntime"' in text
    assert 'name: "spam_probability"' in text and 'name: "input"' in text


# -------------------------------------------------------------- approvals
@dataclass
class FakeRegistry:
    versions: dict[int, VersionInfo] = field(default_factory=dict)
    model_name: str = "spam-detector"
    claims: dict[str, str] = field(default_factory=dict)

    def version(self, version: int) -> VersionInfo | None:
        return self.versions.get(version)

    def claim_approval(self, event_id: str, record_position: str) -> str:
        return self.claims.setdefault(event_id, record_position)


def deps_with(settings: RegistryBridgeSettings, versions: dict[int, VersionInfo]) -> BridgeDeps:
    return BridgeDeps(
        registry=FakeRegistry(versions),  # type: ignore[arg-type]
        triton=None,  # type: ignore[arg-type]
        publish=None,  # type: ignore[arg-type]
        settings=settings,
    )


PASSED = VersionInfo(2, "run-2", {TAG_GATE: "passed", TAG_ONNX_SHA: "abc"}, ("staging",))
FAILED = VersionInfo(3, "run-3", {TAG_GATE: "failed:onnx_parity"}, ())


@pytest.mark.parametrize(
    ("approval", "settings", "reason"),
    [
        (dict(version=9, approved_by="alice"), {}, "unknown-version"),
        (dict(version=3, approved_by="alice"), {}, "gate-not-passed"),
        (dict(version=2, approved_by="mallory"), {"approvers": ["alice"]}, "approver-not-allowed"),
        (dict(version=2, approved_by="alice"), {"approval_secret": "s3cret"}, "bad-signature"),
        (
            dict(version=2, approved_by="alice", model_name="other-model"),
            {},
            "unknown-model",
        ),
    ],
)
def test_refused_approvals_name_their_reason(
    approval: dict[str, Any], settings: dict[str, Any], reason: str
) -> None:
    event = PromotionApproved(**{"model_name": "spam-detector", **approval})
    if "approval_secret" in settings:
        settings = {**settings, "approval_secret": SecretStr(settings["approval_secret"])}
    deps = deps_with(RegistryBridgeSettings(**settings), {2: PASSED, 3: FAILED})
    with pytest.raises(RejectRecord) as caught:
        check_approval(event, deps)
    assert caught.value.reason == reason


NOW = datetime(2026, 12, 5, 12, 0, tzinfo=UTC)
SECURE = RegistryBridgeSettings(approvers=["alice"], approval_secret=SecretStr("s3cret"))


def _signed(secret: str = "s3cret", issued: datetime = NOW, valid_s: float = 3600,
            **fields: Any) -> PromotionApproved:  # fmt: skip
    event = PromotionApproved(
        **{"model_name": "spam-detector", "version": 2, "approved_by": "alice", **fields},
        occurred_at=issued,
        expires_at=issued + timedelta(seconds=valid_s),
    )
    return signed(secret, event)


def test_a_signed_approval_by_an_allowed_approver_is_accepted() -> None:
    assert check_approval(_signed(), deps_with(SECURE, {2: PASSED}), now=NOW) is PASSED


def test_the_previous_secret_is_accepted_during_a_rotation() -> None:
    rotating = SECURE.model_copy(update={"approval_secret_previous": SecretStr("old")})
    deps = deps_with(rotating, {2: PASSED})
    assert check_approval(_signed("old"), deps, now=NOW) is PASSED
    with pytest.raises(RejectRecord, match="signature"):
        check_approval(_signed("old"), deps_with(SECURE, {2: PASSED}), now=NOW)


@pytest.mark.parametrize(
    ("event", "now", "reason"),
    [
        (_signed(), NOW + timedelta(hours=2), "approval-expired"),
        (_signed(), NOW - timedelta(hours=1), "approval-from-the-future"),
        (_signed(valid_s=8 * 86_400), NOW, "approval-lifetime-too-long"),
        (signed("s3cret", PromotionApproved(model_name="spam-detector", version=2,
                                            approved_by="alice")), NOW, "approval-without-expiry"),
        (_signed("not-the-secret"), NOW, "bad-signature"),
    ],
)  # fmt: skip
def test_approvals_outside_their_time_window_or_unsigned_are_refused(
    event: PromotionApproved, now: datetime, reason: str
) -> None:
    with pytest.raises(RejectRecord) as caught:
        check_approval(event, deps_with(SECURE, {2: PASSED}), now=now)
    assert caught.value.reason == reason


def _record(offset: int) -> RecordContext:
    return RecordContext(
        topic="models.promotion-approved", partition=0, offset=offset, key="spam-detector",
        headers={}, timestamp_ms=0, raw=b"",
    )  # fmt: skip


def test_a_replayed_approval_is_refused_and_a_redelivered_one_resumes() -> None:
    """The same event id from another record is a replay; from the same record, a retry."""
    deps = deps_with(SECURE, {2: PASSED})
    approval = _signed()
    claim_approval(approval, _record(7), deps)
    claim_approval(approval, _record(7), deps)  # redelivered after a crash: resumes
    with pytest.raises(RejectRecord) as caught:
        claim_approval(approval, _record(12), deps)  # the captured bytes re-sent later
    assert caught.value.reason == "approval-replayed"
    assert "models.promotion-approved:0:7" in str(caught.value)


@pytest.mark.parametrize("secret", [None, "", "  "])
@pytest.mark.parametrize("approvers", [[], ["alice"]])
def test_secure_mode_refuses_to_start_without_secret_and_approvers(
    secret: str | None, approvers: list[str]
) -> None:
    from spamops_registry_bridge.app import UnsafeConfigurationError, check_approval_policy
    from spamops_runtime.settings import PlatformSettings

    secure = PlatformSettings(kafka_security_protocol="SASL_PLAINTEXT")
    settings = RegistryBridgeSettings(platform=secure, approvers=approvers, approval_secret=secret)
    assert settings.approval_secret is None  # an empty secret is no secret
    with pytest.raises(UnsafeConfigurationError, match="APPROVAL_SECRET"):
        check_approval_policy(settings)
    ok = settings.model_copy(update={"approvers": ["alice"], "approval_secret": SecretStr("k")})
    check_approval_policy(ok)
    # A plain local stack keeps the convenience (and logs a warning).
    check_approval_policy(settings.model_copy(update={"platform": PlatformSettings()}))


def test_champion_metrics_are_computed_like_the_trainers() -> None:
    from spamops_registry_bridge.champion import metrics_of

    y = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.3, 0.9, 0.8, 0.4, 0.95])
    m = metrics_of(y, p, 0.5)
    # tp 3, fp 1, fn 1, tn 3
    assert m.precision == pytest.approx(0.75)
    assert m.recall == pytest.approx(0.75)
    assert m.f1 == pytest.approx(0.75)
    assert m.false_positive_rate == pytest.approx(0.25)
    assert metrics_of(y, p, 0.75).false_positive_rate == 0.0


def test_the_champion_is_judged_on_the_challengers_test_split(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A same-run champion uses the challenger's metrics; otherwise it is re-scored."""
    from spamops_registry_bridge import handlers

    calls: list[tuple[int, str]] = []

    class Registry(FakeRegistry):
        def alias_version(self, alias: str) -> int | None:
            return 2

        def run_metrics(self, run_id: str) -> ClassificationMetrics | None:
            return metrics(0.99, 0.001)

    def rescored(reg: Any, version: int, run: str, challenger: Any) -> ClassificationMetrics:
        calls.append((version, run))
        return metrics(0.93, 0.004)

    monkeypatch.setattr(handlers, "champion_on_challenger_test", rescored)
    champion = handlers._champion(Registry({2: PASSED}), trained_event("run-9"))  # type: ignore[arg-type]
    assert calls == [(2, "run-2")]
    assert champion is not None and champion.f1 == pytest.approx(0.93)
    # Re-scored, the champion no longer blocks a challenger that is better on new data.
    assert gate_failures(metrics(0.95, 0.005), SETTINGS, champion) == []


def trained_event(run_id: str) -> Any:
    from spamops_schemas import ModelTrained

    return ModelTrained(
        producer="t", run_id=run_id, model_uri="models:/m-1", dataset_id="ds-1",
        metrics=metrics(0.95, 0.005), best_params={}, feature_spec_version="1",
        n_features=527, training_seconds=1.0,
    )  # fmt: skip


# ------------------------------------------------- only data crosses the registry
@dataclass
class RunsRegistry(FakeRegistry):
    """Runs by id: (experiment name, model file bytes, recorded sha256); logged models."""

    runs: dict[str, tuple[str, bytes, str | None]] = field(default_factory=dict)
    logged: dict[str, str] = field(default_factory=dict)

    def run_experiment_name(self, run_id: str) -> str | None:
        return self.runs[run_id][0] if run_id in self.runs else None

    def logged_model_run(self, model_id: str) -> str | None:
        return self.logged.get(model_id)

    def model_file(self, run_id: str) -> tuple[bytes, str | None]:
        if run_id not in self.runs:
            raise OSError(f"no artifact for {run_id}")
        _, data, recorded = self.runs[run_id]
        return data, recorded


def _booster_bytes() -> bytes:
    rng = np.random.default_rng(1)
    x = rng.random((200, 6), dtype=np.float32)
    model = xgb.XGBClassifier(n_estimators=5, max_depth=2).fit(x, (x[:, 0] > 0.5).astype(int))
    return bytes(model.get_booster().save_raw("ubj"))


def test_a_model_from_another_experiment_or_run_is_refused() -> None:
    from spamops_registry_bridge.handlers import check_model_source

    good = _booster_bytes()
    registry = RunsRegistry(
        runs={"run-1": ("spam-detector", good, "x"), "run-9": ("elsewhere", good, "x")},
        logged={"m-1": "run-1", "m-9": "run-9"},
    )
    deps = BridgeDeps(registry=registry, triton=None, publish=None, settings=SETTINGS)  # type: ignore[arg-type]
    check_model_source(trained_event("run-1"), deps)  # models:/m-1, logged by run-1
    check_model_source(
        trained_event("run-1").model_copy(update={"model_uri": "runs:/run-1/model"}), deps
    )
    cases = [
        trained_event("run-9").model_copy(update={"model_uri": "models:/m-9"}),  # other experiment
        trained_event("run-404"),  # no such run
        trained_event("run-1").model_copy(update={"model_uri": "models:/m-9"}),  # another run's
        trained_event("run-1").model_copy(update={"model_uri": "runs:/run-9/model"}),
        trained_event("run-1").model_copy(update={"model_uri": "file:///tmp/evil"}),
    ]
    for event in cases:
        with pytest.raises(RejectRecord) as caught:
            check_model_source(event, deps)
        assert caught.value.reason == "model-outside-experiment", event.model_uri


def test_the_model_file_must_match_the_sha256_the_trainer_recorded() -> None:
    from spamops_registry_bridge.adapters import MlflowRegistry, sha256_hex
    from spamops_registry_bridge.handlers import checked_model_file

    good = _booster_bytes()
    registry = RunsRegistry(
        runs={
            "ok": ("spam-detector", good, sha256_hex(good)),
            "tampered": ("spam-detector", good + b"\0", sha256_hex(good)),
            "unrecorded": ("spam-detector", good, None),
        }
    )
    data = checked_model_file(trained_event("ok"), registry)  # type: ignore[arg-type]
    model = MlflowRegistry.load_xgboost(data)  # data only: a plain booster file
    assert model.predict_proba(np.zeros((1, 6), dtype=np.float32)).shape == (1, 2)
    for run, reason in [
        ("tampered", "model-file-mismatch"),
        ("unrecorded", "model-file-mismatch"),
        ("missing", "model-file-missing"),
    ]:
        with pytest.raises(RejectRecord) as caught:
            checked_model_file(trained_event(run), registry)  # type: ignore[arg-type]
        assert caught.value.reason == reason
