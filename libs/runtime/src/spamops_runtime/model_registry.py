"""Reading the MLflow registry's aliases: which version serves staging and production.

Services that follow ModelRegistered / ModelPromoted read the aliases once at
start (and when an event may still be on its way); the CLI shows them. mlflow
is imported lazily: only the processes that call this need it installed.
"""

from __future__ import annotations


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
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return {}
        raise
    return {alias: int(version) for alias, version in (model.aliases or {}).items()}
