"""The MLflow contract: every tag and artifact path one service writes and another reads.

The trainer writes runs, the registry-bridge writes model versions and the
registered model; inference, the monitor and the CLI read them. The monitor writes
its own runs (drift reports) in an experiment of its own. Each name is
defined here once so a reader can never drift from its writer.
"""

from __future__ import annotations

# ------------------------------------------------------------- run tags (trainer)
RUN_TAG_SOURCE_EVENT = "spamops.source_event_id"  # the DatasetReady/DriftDetected trained on
RUN_TAG_DATASET_REASON = "spamops.dataset_reason"
RUN_TAG_ABANDONED = "spamops.abandoned"  # a training stopped mid-way
RUN_TAG_MODEL_TRAINED = "spamops.model_trained"  # the ModelTrained event's JSON
RUN_TAG_PROGRESS = "spamops.trials_done"  # "done/total" while the search runs
RUN_TAG_MODEL_SHA256 = "spamops.model_sha256"  # sha256 of MODEL_FILE_ARTIFACT
RUN_TAG_REJECTED = "spamops.model_rejected"  # + ".<ModelTrained event id>" (bridge)

# ------------------------------------------------- run and version tags (both)
TAG_DATASET = "spamops.dataset_id"
TAG_CORRELATION = "spamops.correlation_id"
TAG_SPEC = "spamops.feature_spec_version"

# ------------------------------------------------------ version tags (bridge)
VERSION_TAG_SOURCE_EVENT = "spamops.model_trained_event_id"
TAG_RUN = "spamops.run_id"
TAG_GATE = "spamops.gate"  # "passed" or "failed:<check>"
TAG_ONNX_SHA = "spamops.onnx_sha256"
TAG_ONNX_URI = "spamops.onnx_uri"
TAG_PARITY = "spamops.parity_max_abs_diff"
TAG_N_INPUTS = "spamops.n_inputs"
TAG_REGISTERED_EVENT = "spamops.model_registered"  # the ModelRegistered event's JSON
TAG_PUBLISHED = "spamops.model_registered_published"
TAG_PROMOTION_EVENT = "spamops.promotion_event_id"
# "<approval event id>:<previous production version>", written before the alias moves.
TAG_PROMOTION_PREVIOUS = "spamops.promotion_previous"

# --------------------------------------------- registered-model tags (bridge)
# One per consumed approval: "<topic>:<partition>:<offset>" of its record (replays).
TAG_APPROVAL_PREFIX = "spamops.approval."

# ------------------------------------------------------------ run artifacts
PIPELINE_ARTIFACT = "feature_pipeline"  # the fitted FeatureSpec (data, no pickle)
PARITY_ARTIFACT = "parity/test_sample.npz"  # test rows and XGBoost probabilities
# The booster as plain UBJSON data: what the bridge exports (never an MLmodel flavour).
MODEL_FILE_ARTIFACT = "xgboost/model.ubj"

# ------------------------------------------------- monitoring runs (monitor)
# One run per monitored model version in an experiment of its own (never the trainer's
# runs: those are the verified record of a training). Each drift check's Evidently HTML
# and JSON summary are artifacts under MONITORING_REPORTS_ARTIFACT; its drift share and
# per-column scores are metrics (step = the check's Unix time in seconds).
MONITORING_EXPERIMENT = "spamops-monitoring"
MONITORING_RUN_NAME = "monitoring-v{version}"  # .format(version=...)
MONITORING_REPORTS_ARTIFACT = "drift_reports"
RUN_TAG_MONITORED_MODEL = "spamops.monitored_model"  # the registered model's name
RUN_TAG_MONITORED_VERSION = "spamops.monitored_version"  # its version, as a string
