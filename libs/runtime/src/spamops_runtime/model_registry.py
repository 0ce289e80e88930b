"""Reading the MLflow registry's aliases: which version serves staging and production.

Services that follow ModelRegistered / ModelPromoted read the aliases once at
start (and when an event may still be on its way); the CLI shows them. mlflow
is imported lazily: only the processes that call this need it installed.
"""

from __future__ import annotations


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
