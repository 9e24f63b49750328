"""Where MLflow keeps runs: an embedded SQLite store in the repository, or a team server.

Embedded (default): runs and the model registry live in ``<root>/registry/mlflow.db`` (the URI
uses the absolute path, so it does not depend on the working directory) and artifacts under
``<root>/registry/artifacts`` -- never in ``./mlruns``.

Team mode: set ``MLFLOW_TRACKING_URI`` (e.g. ``http://mlflow.internal:5000``, an ``mlflow server``
with a database backend); it wins over the embedded store and the server decides where artifacts go.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException

ENV_VAR = "MLFLOW_TRACKING_URI"
REGISTRY_DIR = "registry"


def _registry(root) -> Path:
    return Path(root).resolve() / REGISTRY_DIR


def tracking_uri(root=".") -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<root>/registry/mlflow.db`` (absolute)."""
    return os.environ.get(ENV_VAR) or f"sqlite:///{(_registry(root) / 'mlflow.db').as_posix()}"


def artifact_root(root=".") -> str:
    """``file://`` URI of ``<root>/registry/artifacts``, where the embedded store keeps artifacts."""
    return (_registry(root) / "artifacts").as_uri()


def is_embedded(uri: str) -> bool:
    """True unless `uri` names a tracking server (which then owns the artifact location)."""
    return not uri.startswith(("http://", "https://", "databricks"))


def configure(root=".") -> str:
    """Point mlflow's tracking and model-registry URIs at our store; returns the tracking URI."""
    uri = tracking_uri(root)
    if is_embedded(uri):
        (_registry(root) / "artifacts").mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


def experiment_id(name: str, root=".") -> str:
    """Get or create experiment `name` (restoring it if deleted); returns its id.

    With a local store a new experiment's artifact_location is ``registry/artifacts/<name>``
    (`name` made safe as a folder name).
    """
    uri = configure(root)
    client = mlflow.MlflowClient(uri)
    exp = client.get_experiment_by_name(name)
    if exp is None:
        folder = re.sub(r"[^\w.-]+", "_", name).strip("._") or "experiment"
        location = (_registry(root) / "artifacts" / folder).as_uri() if is_embedded(uri) else None
        try:
            return client.create_experiment(name, artifact_location=location)
        except MlflowException:  # created concurrently by another stage
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage == "deleted":
        client.restore_experiment(exp.experiment_id)
    return exp.experiment_id
