"""Reading the MLflow registry's aliases: which version serves staging and production.

Services that follow ModelRegistered / ModelPromoted read the aliases once at
start (and when an event may still be on its way); the CLI shows them. mlflow
is imported lazily: only the processes that call this need it installed.
"""

from __future__ import annotations

from pathlib import Path


def is_not_found(exc: BaseException) -> bool:
    """Whether an MLflow error says the thing does not exist (and not that MLflow is down).

    Only RESOURCE_DOES_NOT_EXIST means "not found": a connection error or a 5xx is
    an outage, which callers must retry rather than read as "unknown version".
    """
    return getattr(exc, "error_code", None) == "RESOURCE_DOES_NOT_EXIST"


def serving_aliases(tracking_uri: str, model_name: str) -> dict[str, int]:
    """alias -> version of ``model_name`` ({} when it is not registered yet).

    Raises MlflowException when MLflow cannot answer (callers retry).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    try:
        model = client.get_registered_model(model_name)
    except MlflowException as exc:
        if is_not_found(exc):
            return {}
        raise
    return {alias: int(version) for alias, version in (model.aliases or {}).items()}


def download_version_files(
    tracking_uri: str, model_name: str, version: int, dst: str | Path
) -> tuple[Path, Path]:
    """A registered version's feature pipeline folder and booster file, downloaded to ``dst``.

    Read from the version's training run (the ``spamops.run_id`` tag, else its run
    id): the run's artifacts are the data the registry contract names. Raises
    MlflowException (``is_not_found`` tells an unknown version from an outage) and
    LookupError when the version names no run.
    """
    import mlflow
    from spamops_schemas.registry import MODEL_FILE_ARTIFACT, PIPELINE_ARTIFACT, TAG_RUN

    client = mlflow.MlflowClient(tracking_uri=tracking_uri)
    found = client.get_model_version(model_name, str(version))
    run_id = found.tags.get(TAG_RUN) or found.run_id
    if not run_id:
        raise LookupError(f"{model_name} v{version} names no training run")

    def download(path: str) -> Path:
        local: str = mlflow.artifacts.download_artifacts(
            run_id=run_id, artifact_path=path, dst_path=str(dst), tracking_uri=tracking_uri
        )
        return Path(local)

    return download(PIPELINE_ARTIFACT), download(MODEL_FILE_ARTIFACT)
