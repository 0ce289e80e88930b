"""The registry bridge's reactions: plain functions on typed events, dependencies passed in.

ModelTrained -> gate -> MLflow version (alias staging) -> ONNX + parity -> Triton
staging -> ModelRegistered (or ModelRejected). PromotionApproved -> checks ->
Triton production -> alias production -> ModelPromoted; an approval of an
earlier version is a rollback on the same path.

Every step leaves a tag on the model version, so a replayed event does nothing
and an interrupted one (a crash after registering, before Triton loaded) is
finished when the uncommitted record comes back. Events to publish are stored
on the version before they are sent, so a resumption republishes the same
event id rather than a new one.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import numpy as np
from spamops_runtime.kafka import RecordContext, RejectRecord, is_transient
from spamops_schemas import (
    ClassificationMetrics,
    Event,
    GateFailure,
    ModelPromoted,
    ModelRegistered,
    ModelRejected,
    ModelTrained,
    PromotionApproved,
)
from spamops_schemas.registry import (
    RUN_TAG_REJECTED,
    TAG_CORRELATION,
    TAG_DATASET,
    TAG_GATE,
    TAG_N_INPUTS,
    TAG_ONNX_SHA,
    TAG_ONNX_URI,
    TAG_PARITY,
    TAG_PROMOTION_EVENT,
    TAG_PROMOTION_PREVIOUS,
    TAG_PUBLISHED,
    TAG_REGISTERED_EVENT,
    TAG_RUN,
    TAG_SPEC,
)
from spamops_schemas.registry import VERSION_TAG_SOURCE_EVENT as TAG_SOURCE_EVENT
from spamops_schemas.signing import verify_approval

from spamops_registry_bridge.adapters import (
    MlflowRegistry,
    TritonDeployer,
    VersionInfo,
    sha256_hex,
)
from spamops_registry_bridge.champion import champion_on_challenger_test
from spamops_registry_bridge.onnx_export import export_onnx, onnx_spam_probability
from spamops_registry_bridge.settings import RegistryBridgeSettings

logger = logging.getLogger(__name__)

SERVICE = "registry-bridge"
STAGING = "staging"
PRODUCTION = "production"


@dataclass
class BridgeDeps:
    """What the handlers need from the outside world."""

    registry: MlflowRegistry
    triton: TritonDeployer
    publish: Callable[[Event], Awaitable[None]]
    settings: RegistryBridgeSettings


# ------------------------------------------------------------------ gate
def gate_failures(
    metrics: ClassificationMetrics,
    settings: RegistryBridgeSettings,
    champion: ClassificationMetrics | None,
) -> list[GateFailure]:
    """Every failed check: absolute thresholds, then not worse than the champion by a margin."""
    failures: list[GateFailure] = []
    if metrics.f1 < settings.min_f1:
        failures.append(
            GateFailure(
                gate="min_f1", actual=metrics.f1, threshold=settings.min_f1,
                detail=f"test F1 {metrics.f1:.4f} < {settings.min_f1}",
            )
        )  # fmt: skip
    if metrics.false_positive_rate > settings.max_false_positive_rate:
        failures.append(
            GateFailure(
                gate="max_false_positive_rate",
                actual=metrics.false_positive_rate,
                threshold=settings.max_false_positive_rate,
                detail=f"{metrics.false_positive_rate:.2%} of ham flagged as spam",
            )
        )
    if champion is not None:
        floor = champion.f1 - settings.champion_margin
        if metrics.f1 < floor:
            failures.append(
                GateFailure(
                    gate="champion_f1", actual=metrics.f1, threshold=floor,
                    detail=f"F1 {metrics.f1:.4f} vs production {champion.f1:.4f}",
                )
            )  # fmt: skip
        ceiling = champion.false_positive_rate + settings.champion_margin
        if metrics.false_positive_rate > ceiling:
            failures.append(
                GateFailure(
                    gate="champion_false_positive_rate",
                    actual=metrics.false_positive_rate,
                    threshold=ceiling,
                    detail=(
                        f"FPR {metrics.false_positive_rate:.4f} vs production "
                        f"{champion.false_positive_rate:.4f}"
                    ),
                )
            )
    return failures


# ------------------------------------------------------------ ModelTrained
def _champion(registry: MlflowRegistry, challenger: ModelTrained) -> ClassificationMetrics | None:
    """The production model's metrics on the challenger's test split (its own as a fallback)."""
    version = registry.alias_version(PRODUCTION)
    info = registry.version(version) if version is not None else None
    if info is None:
        return None
    if info.run_id == challenger.run_id:
        return challenger.metrics
    try:
        return champion_on_challenger_test(registry, info.version, info.run_id, challenger)
    except Exception as exc:
        if is_transient(exc):
            raise  # an outage must not change the gate's decision: retry the whole record
        logger.exception("cannot score the champion on the challenger's test split")
        return registry.run_metrics(info.run_id)


def _reject(
    event: ModelTrained, registry: MlflowRegistry, failures: list[GateFailure]
) -> ModelRejected:
    """The ModelRejected of a ModelTrained, created once and kept on its run."""
    stored = registry.run_tag(event.run_id, _rejected_tag(event))
    if stored:
        return ModelRejected.from_bytes(stored)
    rejected = event.caused(ModelRejected, producer=SERVICE, run_id=event.run_id, failures=failures)
    registry.set_run_tag(event.run_id, _rejected_tag(event), rejected.model_dump_json())
    return rejected


def _rejected_tag(event: ModelTrained) -> str:
    # Keyed by the event: the same run judged again (other metrics, a new champion)
    # gets its own verdict, a replay of the same event gets the stored one.
    return f"{RUN_TAG_REJECTED}.{event.event_id}"


def check_model_source(event: ModelTrained, deps: BridgeDeps) -> None:
    """Only a model of this platform's experiment, logged by the run the event names."""
    registry, experiment = deps.registry, deps.settings.experiment
    found = registry.run_experiment_name(event.run_id)
    if found != experiment:
        raise RejectRecord(
            "model-outside-experiment",
            f"run {event.run_id} is "
            + ("unknown" if found is None else f"in experiment {found!r}")
            + f", not in {experiment!r}",
        )
    uri = event.model_uri
    if uri.startswith("models:/m-"):
        source = registry.logged_model_run(uri.removeprefix("models:/"))
    elif uri.startswith(f"runs:/{event.run_id}/"):
        source = event.run_id
    else:
        source = None
    if source != event.run_id:
        raise RejectRecord(
            "model-outside-experiment",
            f"model {uri} was not logged by run {event.run_id}",
        )


def checked_model_file(event: ModelTrained, registry: MlflowRegistry) -> bytes:
    """The run's booster file, refused unless its sha256 is the one the trainer recorded."""
    from mlflow.exceptions import MlflowException

    try:
        data, recorded = registry.model_file(event.run_id)
    except (MlflowException, OSError) as exc:
        if is_transient(exc):
            raise
        raise RejectRecord(
            "model-file-missing", f"run {event.run_id} has no readable model file: {exc}"
        ) from exc
    if not recorded or sha256_hex(data) != recorded:
        raise RejectRecord(
            "model-file-mismatch",
            f"the model file of run {event.run_id} does not match the sha256 its trainer recorded",
        )
    return data


def _export_and_check(
    event: ModelTrained, info: VersionInfo, deps: BridgeDeps, model_file: bytes | None = None
) -> tuple[bytes, float] | list[GateFailure]:
    """ONNX export + parity with XGBoost on the logged test sample (stored on the run).

    ``model_file``: the booster bytes already checked against their sha256; None (a
    resumed registration) downloads and checks them again.
    """
    registry, tolerance = deps.registry, deps.settings.parity_tolerance
    if TAG_ONNX_SHA in info.tags:
        onnx_bytes = registry.load_onnx(event.run_id, info.version)
        if sha256_hex(onnx_bytes) != info.tags[TAG_ONNX_SHA]:
            raise RuntimeError(f"stored ONNX of version {info.version} does not match its sha256")
        return onnx_bytes, float(info.tags.get(TAG_PARITY, "0"))
    model = registry.load_xgboost(model_file or checked_model_file(event, registry))
    x, p_xgboost = registry.parity_sample(event.run_id)
    onnx_bytes = export_onnx(model, event.n_features)
    difference = float(np.max(np.abs(onnx_spam_probability(onnx_bytes, x) - p_xgboost)))
    if difference > tolerance:
        registry.set_tags(info.version, {TAG_GATE: "failed:onnx_parity"})
        return [
            GateFailure(
                gate="onnx_parity", actual=difference, threshold=tolerance,
                detail="ONNX and XGBoost probabilities differ on the test sample",
            )
        ]  # fmt: skip
    uri = registry.store_onnx(event.run_id, info.version, onnx_bytes)
    registry.set_tags(
        info.version,
        {TAG_ONNX_SHA: sha256_hex(onnx_bytes), TAG_ONNX_URI: uri, TAG_PARITY: repr(difference)},
    )
    return onnx_bytes, difference


def _served_versions(deps: BridgeDeps, name: str, newest: int) -> list[int]:
    """The last ``keep_versions`` versions on disk, ``newest`` included."""
    on_disk = set(deps.triton.versions_on_disk(name)) | {newest}
    return sorted(on_disk)[-deps.settings.keep_versions :]


def _smoke(deps: BridgeDeps, name: str, version: int, onnx_bytes: bytes, x: np.ndarray) -> float:
    """Triton must answer what onnxruntime answers; returns the max difference."""
    rows = x[: deps.settings.smoke_rows]
    served = deps.triton.infer(name, version, rows)
    expected = onnx_spam_probability(onnx_bytes, rows)
    difference = float(np.max(np.abs(served - expected))) if len(rows) else 0.0
    if difference > deps.settings.parity_tolerance:
        raise RuntimeError(
            f"triton {name} v{version} answers differently from onnxruntime ({difference:.2e})"
        )
    return difference


def register_trained(event: ModelTrained, deps: BridgeDeps) -> tuple[Event, int | None]:
    """The blocking part of ModelTrained: returns the event to publish and the version (if any).

    A version whose ModelRegistered was already published returns it with
    ``None``: nothing is to be done.
    """
    registry, settings = deps.registry, deps.settings
    info = registry.version_for_event(str(event.event_id))
    if info is not None and info.tags.get(TAG_PUBLISHED) == "true":
        return ModelRegistered.from_bytes(info.tags[TAG_REGISTERED_EVENT]), None
    model_file: bytes | None = None
    if info is None:
        # Before anything is registered: the model is this platform's, its file intact.
        check_model_source(event, deps)
        model_file = checked_model_file(event, registry)
        if registry.run_tag(event.run_id, _rejected_tag(event)):
            return _reject(event, registry, []), None
        failures = gate_failures(event.metrics, settings, _champion(registry, event))
        if failures:
            logger.warning(
                "model rejected by the gate",
                extra={"run_id": event.run_id, "failures": [f.gate for f in failures]},
            )
            return _reject(event, registry, failures), None
        info = registry.register(
            event.model_uri,
            event.run_id,
            tags={
                TAG_SOURCE_EVENT: str(event.event_id),
                TAG_RUN: event.run_id,
                TAG_DATASET: event.dataset_id,
                TAG_CORRELATION: event.correlation_id,
                TAG_SPEC: event.feature_spec_version,
                TAG_N_INPUTS: str(event.n_features),
                TAG_GATE: "passed",
            },
        )
        logger.info("model version registered", extra={"version": info.version})
    exported = _export_and_check(event, info, deps, model_file)
    if isinstance(exported, list):
        return _reject(event, registry, exported), None
    onnx_bytes, parity = exported
    name = settings.triton_name(STAGING)
    deps.triton.deploy(
        name,
        info.version,
        onnx_bytes,
        event.n_features,
        _served_versions(deps, name, info.version),
    )
    x, _ = registry.parity_sample(event.run_id)
    _smoke(deps, name, info.version, onnx_bytes, x)
    registry.set_alias(STAGING, info.version)
    stored = info.tags.get(TAG_REGISTERED_EVENT)
    if stored:
        registered = ModelRegistered.from_bytes(stored)
    else:
        registered = event.caused(
            ModelRegistered,
            producer=SERVICE,
            model_name=registry.model_name,
            version=info.version,
            run_id=event.run_id,
            onnx_uri=registry_onnx_uri(info, registry, event.run_id),
            onnx_sha256=sha256_hex(onnx_bytes),
            parity_max_abs_diff=parity,
            triton_model=name,
            triton_version=info.version,
            alias=STAGING,
            feature_spec_version=event.feature_spec_version,
        )
        registry.set_tags(info.version, {TAG_REGISTERED_EVENT: registered.model_dump_json()})
    return registered, info.version


def registry_onnx_uri(info: VersionInfo, registry: MlflowRegistry, run_id: str) -> str:
    """Where the version's ONNX file is (its tag, read again if it was just written)."""
    uri = info.tags.get(TAG_ONNX_URI)
    if uri:
        return uri
    fresh = registry.version(info.version)
    stored = fresh.tags.get(TAG_ONNX_URI) if fresh else None
    return stored or f"runs:/{run_id}/{registry.onnx_artifact(info.version)}"


async def on_model_trained(event: ModelTrained, record: RecordContext, deps: BridgeDeps) -> None:
    """ModelTrained -> ModelRegistered (staging, served by Triton) or ModelRejected."""
    started = asyncio.get_running_loop().time()
    outcome, version = await asyncio.to_thread(register_trained, event, deps)
    if version is None and isinstance(outcome, ModelRegistered):
        logger.info("already registered: nothing to do", extra={"version": outcome.version})
        return
    await deps.publish(outcome)
    if version is not None:
        await asyncio.to_thread(deps.registry.set_tags, version, {TAG_PUBLISHED: "true"})
        logger.info(
            "model registered and served as staging",
            extra={
                "version": version,
                "seconds": round(asyncio.get_running_loop().time() - started, 2),
            },
        )


# -------------------------------------------------------- PromotionApproved
def check_approval(
    event: PromotionApproved, deps: BridgeDeps, now: datetime | None = None
) -> VersionInfo:
    """Refuse (RejectRecord) what may not be promoted; returns the version to promote.

    With a secret the signature must cover the whole approval (current or previous
    secret, for key rotation) and carry an expiry; an expiry is enforced either way.
    """
    settings, registry = deps.settings, deps.registry
    if event.model_name != registry.model_name:
        raise RejectRecord("unknown-model", f"no registered model {event.model_name!r} here")
    if settings.approvers and event.approved_by not in settings.approvers:
        raise RejectRecord(
            "approver-not-allowed", f"{event.approved_by!r} may not approve promotions"
        )
    secrets = settings.approval_secrets()
    if secrets and not verify_approval(secrets, event):
        raise RejectRecord("bad-signature", "the approval's HMAC signature is missing or wrong")
    check_validity(event, settings, now or datetime.now(UTC), signed=bool(secrets))
    info = registry.version(event.version)
    if info is None:
        raise RejectRecord("unknown-version", f"{event.model_name} has no version {event.version}")
    if info.tags.get(TAG_GATE) != "passed" or TAG_ONNX_SHA not in info.tags:
        raise RejectRecord(
            "gate-not-passed", f"version {event.version} did not pass the gate and parity check"
        )
    return info


def check_validity(
    event: PromotionApproved, settings: RegistryBridgeSettings, now: datetime, signed: bool
) -> None:
    """The approval's time window: issued not in the future, not expired, not too long."""
    skew = timedelta(seconds=settings.approval_clock_skew_s)
    if event.expires_at is None:
        if signed:
            raise RejectRecord("approval-without-expiry", "a signed approval must carry expires_at")
        return
    if event.occurred_at > now + skew:
        raise RejectRecord(
            "approval-from-the-future",
            f"issued at {event.occurred_at.isoformat()}, after now ({now.isoformat()})",
        )
    if event.expires_at <= now - skew:
        raise RejectRecord(
            "approval-expired", f"the approval expired at {event.expires_at.isoformat()}"
        )
    lifetime = (event.expires_at - event.occurred_at).total_seconds()
    if lifetime > settings.approval_max_lifetime_s:
        raise RejectRecord(
            "approval-lifetime-too-long",
            f"valid for {lifetime:.0f} s, at most {settings.approval_max_lifetime_s:.0f} s",
        )


def claim_approval(event: PromotionApproved, record: RecordContext, deps: BridgeDeps) -> None:
    """Refuse an approval already consumed from another record (a replay); persisted in MLflow.

    The same record redelivered after a crash holds its own claim and resumes.
    """
    position = f"{record.topic}:{record.partition}:{record.offset}"
    holder = deps.registry.claim_approval(str(event.event_id), position)
    if holder != position:
        raise RejectRecord(
            "approval-replayed",
            f"approval {event.event_id} was already consumed from record {holder}",
        )


def _previous_production(
    event: PromotionApproved, info: VersionInfo, registry: MlflowRegistry
) -> int | None:
    """The production version before this approval, also when resuming an interrupted one."""
    stored = info.tags.get(TAG_PROMOTION_PREVIOUS, "")
    approval, _, version = stored.partition(":")
    if approval == str(event.event_id):
        return int(version) if version else None
    return registry.alias_version(PRODUCTION)


def promote(
    event: PromotionApproved, record: RecordContext, deps: BridgeDeps
) -> ModelPromoted | None:
    """The blocking part of PromotionApproved; None when this approval was already applied."""
    registry, settings = deps.registry, deps.settings
    info = check_approval(event, deps)
    claim_approval(event, record, deps)
    if info.tags.get(TAG_PROMOTION_EVENT) == str(event.event_id):
        return None
    previous = _previous_production(event, info, registry)
    onnx_bytes = registry.load_onnx(info.run_id, info.version)
    if sha256_hex(onnx_bytes) != info.tags[TAG_ONNX_SHA]:
        raise RuntimeError(f"stored ONNX of version {info.version} does not match its sha256")
    name = settings.triton_name(PRODUCTION)
    # The previous version stays loaded so in-flight requests pinned to it finish.
    serve = [info.version] + ([previous] if previous and previous != info.version else [])
    n_inputs = int(info.tags.get(TAG_N_INPUTS, "0"))
    deps.triton.deploy(name, info.version, onnx_bytes, n_inputs, serve)
    x, _ = registry.parity_sample(info.run_id)
    _smoke(deps, name, info.version, onnx_bytes, x)
    # Remember the previous version before the alias moves: a promotion interrupted after
    # the move resumes with it (the alias itself then already names this version).
    registry.set_tags(info.version, {TAG_PROMOTION_PREVIOUS: f"{event.event_id}:{previous or ''}"})
    registry.set_alias(PRODUCTION, info.version)  # only once Triton serves it
    kind = "rollback" if previous is not None and info.version < previous else "promotion"
    logger.info(
        f"{kind} applied",
        extra={"version": info.version, "previous": previous, "approved_by": event.approved_by},
    )
    return event.caused(
        ModelPromoted,
        producer=SERVICE,
        model_name=registry.model_name,
        version=info.version,
        previous_version=previous,
        alias=PRODUCTION,
        triton_model=name,
        triton_version=info.version,
    )


async def on_promotion_approved(
    event: PromotionApproved, record: RecordContext, deps: BridgeDeps
) -> None:
    """PromotionApproved -> Triton production ready -> alias production -> ModelPromoted."""
    promoted = await asyncio.to_thread(promote, event, record, deps)
    if promoted is None:
        logger.info("approval already applied: nothing to do", extra={"version": event.version})
        return
    await deps.publish(promoted)
    # After the publish: a crash before this line republishes, never loses, the event.
    await asyncio.to_thread(
        deps.registry.set_tags, event.version, {TAG_PROMOTION_EVENT: str(event.event_id)}
    )
