"""Every spamops event (docs/DESIGN.md §3): the payloads on top of the envelope."""

from __future__ import annotations

from datetime import datetime
from typing import ClassVar, Literal, NamedTuple

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from spamops_schemas.envelope import Event

Label = Literal["spam", "ham"]
Environment = Literal["staging", "production"]


class _Part(BaseModel):
    """A nested value object inside an event payload."""

    model_config = ConfigDict(extra="ignore", frozen=True)


class TimeRange(_Part):
    """First and last message Date of a data set or window."""

    start: datetime | None = Field(default=None, description="Earliest message Date seen.")
    end: datetime | None = Field(default=None, description="Latest message Date seen.")


class SplitCounts(_Part):
    """How many rows each split of a snapshot holds."""

    train: int = Field(ge=0, description="Rows in the training split.")
    validation: int = Field(ge=0, description="Rows in the validation split.")
    test: int = Field(ge=0, description="Rows in the held-out test split.")


class DatasetReady(Event):
    """A content-addressed data-set snapshot is ready to train on."""

    EVENT_TYPE: ClassVar[str] = "DatasetReady"
    SCHEMA_VERSION: ClassVar[int] = 1

    dataset_id: str = Field(description="Derived from the sha256 of the snapshot content.")
    uri: str = Field(description="Where the snapshot (parquet) lives.")
    sha256: str = Field(description="sha256 of the snapshot file's bytes.")
    rows: int = Field(ge=0, description="Total messages in the snapshot.")
    counts_by_label: dict[str, int] = Field(description="Messages per label (spam, ham).")
    counts_by_group: dict[str, int] = Field(description="Messages per source group.")
    time_range: TimeRange = Field(
        default_factory=TimeRange, description="Range of the messages' Date headers."
    )
    split: SplitCounts = Field(description="Rows per split (stratified, fixed seed).")
    split_seed: int = Field(default=42, description="Seed of the stratified split.")
    reason: Literal["initial", "drift", "manual"] = Field(
        default="initial", description="Why this snapshot was built."
    )
    parent_dataset_id: str | None = Field(
        default=None, description="The snapshot this one extends (retraining)."
    )


class ClassificationMetrics(_Part):
    """Quality of a model on the held-out test split."""

    f1: float = Field(ge=0, le=1)
    precision: float = Field(ge=0, le=1)
    recall: float = Field(ge=0, le=1)
    roc_auc: float = Field(ge=0, le=1)
    false_positive_rate: float = Field(ge=0, le=1, description="Share of ham flagged as spam.")


class ModelTrained(Event):
    """The trainer finished a run and logged the model to MLflow."""

    EVENT_TYPE: ClassVar[str] = "ModelTrained"
    SCHEMA_VERSION: ClassVar[int] = 1

    run_id: str = Field(description="MLflow run id.")
    model_uri: str = Field(description="MLflow URI of the XGBoost model.")
    dataset_id: str = Field(description="Snapshot the model was trained on.")
    metrics: ClassificationMetrics = Field(description="Metrics on the held-out test split.")
    best_params: dict[str, float | int | str] = Field(description="Chosen hyper-parameters.")
    feature_spec_version: str = Field(description="Version of the feature spec (model inputs).")
    n_features: int = Field(gt=0, description="Number of model inputs.")
    training_seconds: float = Field(ge=0, description="Wall time of the whole training.")
    threshold: float = Field(
        default=0.5,
        gt=0,
        lt=1,
        description="Spam-probability decision threshold, chosen on the validation split.",
    )


class ModelRegistered(Event):
    """A model version passed the gate, was exported to ONNX and is served as staging."""

    EVENT_TYPE: ClassVar[str] = "ModelRegistered"
    SCHEMA_VERSION: ClassVar[int] = 1

    model_name: str = Field(description="MLflow registered model name.")
    version: int = Field(gt=0, description="MLflow model version.")
    run_id: str = Field(description="MLflow run that produced it.")
    onnx_uri: str = Field(description="Where the exported ONNX file is stored.")
    onnx_sha256: str = Field(description="sha256 of the ONNX file.")
    parity_max_abs_diff: float = Field(ge=0, description="max |p_onnx - p_xgboost| on test.")
    triton_model: str = Field(description="Triton model name serving it.")
    triton_version: int = Field(gt=0, description="Triton model version serving it.")
    alias: str = Field(default="staging", description="MLflow alias set on the version.")
    feature_spec_version: str = Field(default="", description="Feature spec of the inputs.")


class GateFailure(_Part):
    """One failed quality-gate check."""

    gate: str = Field(description="Which check failed, e.g. min_f1 or champion_margin.")
    actual: float = Field(description="The challenger's value.")
    threshold: float = Field(description="The value it had to reach.")
    detail: str = Field(default="", description="Human-readable explanation.")


class ModelRejected(Event):
    """A trained model did not pass the gate (or the ONNX parity check)."""

    EVENT_TYPE: ClassVar[str] = "ModelRejected"
    SCHEMA_VERSION: ClassVar[int] = 1

    run_id: str = Field(description="MLflow run id of the rejected model.")
    failures: list[GateFailure] = Field(min_length=1, description="Every check that failed.")


class PromotionApproved(Event):
    """A person (or CI) approves moving a version to production; rollback included.

    v2 signs the whole approval (``spamops_schemas.signing``): model, version, approver,
    reason, event id, issued-at (``occurred_at``) and expiry. v1 signed only
    ``model|version|approved_by``, so a captured approval could be re-sent under a new
    event id; a v1 record is upcast without an expiry and refused where signatures are
    required.
    """

    EVENT_TYPE: ClassVar[str] = "PromotionApproved"
    SCHEMA_VERSION: ClassVar[int] = 2

    model_name: str = Field(description="MLflow registered model name.")
    version: int = Field(gt=0, description="Version to serve in production.")
    approved_by: str = Field(min_length=1, description="Who approves.")
    reason: str = Field(default="", description="Why.")
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="After this instant the approval is refused (required when signed).",
    )
    signature: str | None = Field(
        default=None,
        description="HMAC-SHA256 hex of the approval's canonical encoding "
        "(spamops_schemas.signing.approval_message).",
    )


class ModelPromoted(Event):
    """The production alias and the Triton production model now point at a version."""

    EVENT_TYPE: ClassVar[str] = "ModelPromoted"
    SCHEMA_VERSION: ClassVar[int] = 1

    model_name: str = Field(description="MLflow registered model name.")
    version: int = Field(gt=0, description="Version now in production.")
    previous_version: int | None = Field(default=None, description="Version it replaced.")
    alias: str = Field(default="production", description="Alias that moved.")
    triton_model: str = Field(default="", description="Triton model serving production.")
    triton_version: int | None = Field(default=None, description="Its Triton version.")


class InboxRecordRef(NamedTuple):
    """An emails.inbox record: the platform-assigned identity of one mail."""

    partition: int
    offset: int


def _inbox_ref(partition: int | None, offset: int | None) -> InboxRecordRef | None:
    return None if partition is None or offset is None else InboxRecordRef(partition, offset)


class EmailClassified(Event):
    """The verdict on one inbox message (topic emails.verdicts)."""

    EVENT_TYPE: ClassVar[str] = "EmailClassified"
    SCHEMA_VERSION: ClassVar[int] = 1

    message_key: str = Field(description="Key of the inbox record.")
    verdict: Label = Field(description="spam or ham.")
    spam_probability: float = Field(ge=0, le=1)
    threshold: float = Field(ge=0, le=1, description="Probability at or above which: spam.")
    model_name: str
    model_version: int = Field(gt=0)
    environment: Environment
    features: dict[str, float] = Field(
        default_factory=dict, description="Handcrafted feature values, for drift monitoring."
    )
    latency_ms: float = Field(ge=0, description="Inbox record timestamp -> verdict.")
    shadow_probability: float | None = Field(
        default=None, description="Staging model's probability when shadow scoring is on."
    )
    shadow_version: int | None = Field(default=None)
    note: str = Field(default="", description="E.g. why staging classified a production request.")
    inbox_partition: int | None = Field(
        default=None, ge=0, description="Partition of the emails.inbox record judged."
    )
    inbox_offset: int | None = Field(
        default=None, ge=0, description="Offset of the emails.inbox record judged."
    )

    @property
    def inbox_record(self) -> InboxRecordRef | None:
        """The judged inbox record: the platform's own id for this mail (not the Message-ID)."""
        return _inbox_ref(self.inbox_partition, self.inbox_offset)


class EmailLabeled(Event):
    """Ground truth for one message from a person or a mail client (emails.feedback).

    v2 replaced v1's boolean ``is_spam`` with ``label``; see the upcaster below.
    """

    EVENT_TYPE: ClassVar[str] = "EmailLabeled"
    SCHEMA_VERSION: ClassVar[int] = 2

    message_key: str = Field(description="Key of the inbox record.")
    label: Label
    labelled_by: str = Field(default="unknown", description="Who gave the label.")
    sender_domain: str | None = Field(default=None, description="Sender domain, if known.")
    message_date: AwareDatetime | None = Field(default=None, description="Message Date.")
    # The platform's id of the mail, copied from its verdict. A Message-ID is the sender's
    # to choose: two mails can share one, and a label must not reach the wrong mail.
    inbox_partition: int | None = Field(
        default=None,
        ge=0,
        description="emails.inbox partition of the labelled mail (from its verdict); with "
        "inbox_offset it names the mail exactly, whatever its Message-ID.",
    )
    inbox_offset: int | None = Field(
        default=None, ge=0, description="emails.inbox offset of the labelled mail."
    )

    @property
    def inbox_record(self) -> InboxRecordRef | None:
        """The labelled inbox record when the label names it, else None (key only)."""
        return _inbox_ref(self.inbox_partition, self.inbox_offset)


class DriftedFeature(_Part):
    """One drifted column with its statistic."""

    feature: str
    statistic: str = Field(description="psi, ks, ...")
    score: float
    threshold: float


class DriftWindow(_Part):
    """Which verdicts a drift check looked at."""

    size: int = Field(ge=0)
    first_offset: int | None = None
    last_offset: int | None = None
    start: AwareDatetime | None = None
    end: AwareDatetime | None = None


class DriftDetected(Event):
    """The monitor found data drift (or a quality drop) for a serving model version."""

    EVENT_TYPE: ClassVar[str] = "DriftDetected"
    SCHEMA_VERSION: ClassVar[int] = 1

    model_name: str
    model_version: int = Field(gt=0)
    kind: Literal["data", "performance"] = Field(default="data")
    window: DriftWindow
    drift_share: float = Field(ge=0, le=1, description="Share of features that drifted.")
    drifted_features: list[DriftedFeature] = Field(default_factory=list)
    report_uri: str = Field(default="", description="HTML report of the check.")
    severity: Literal["low", "medium", "high"] = Field(default="medium")
    # Optional with a default: older consumers ignore it, older events read as "" (no
    # schema_version bump, as ModelTrained.threshold was added in b8f1b38).
    report_url: str = Field(
        default="",
        description="Where a person opens the check's report in a browser: its snapshot in "
        "the Evidently UI (empty when the monitor has no UI workspace or no report).",
    )


ALL_EVENTS: tuple[type[Event], ...] = (
    DatasetReady,
    ModelTrained,
    ModelRegistered,
    ModelRejected,
    PromotionApproved,
    ModelPromoted,
    EmailClassified,
    EmailLabeled,
    DriftDetected,
)
