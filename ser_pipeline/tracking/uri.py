"""The tracking URI and its reachability, without importing mlflow (a fully cached run never does)."""

from __future__ import annotations

import os
import urllib.error
import urllib.request
from pathlib import Path

from ser_pipeline.errors import TrackingError


def default_tracking_uri(base: str | os.PathLike[str] | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<base or cwd>/mlruns/mlflow.db``.

    MLflow 3 recommends a database backend over the plain file store for local use; SQLite needs no
    service.
    """
    env = os.environ.get("MLFLOW_TRACKING_URI")
    if env:
        return env
    return f"sqlite:///{Path(base or Path.cwd()).resolve() / 'mlruns' / 'mlflow.db'}"


def artifact_root(uri: str) -> str | None:
    """Artifact location for new experiments: ``mlruns/artifacts`` beside a local sqlite store;
    ``None`` (the server decides) for a tracking server."""
    if uri.startswith("sqlite:///"):
        return (Path(uri.removeprefix("sqlite:///")).parent / "artifacts").as_uri()
    return None


def check_reachable(uri: str, *, timeout: float = 3.0) -> None:
    """Fail fast with :class:`TrackingError` naming ``uri`` when the store cannot be used.

    HTTP(S) servers must answer ``GET <uri>/health``; a sqlite store's folder must be creatable.
    """
    if uri.startswith(("http://", "https://")):
        url = uri.rstrip("/") + "/health"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310 (user-given URI)
                if response.status != 200:
                    raise TrackingError(f"MLflow tracking server {uri} answered {response.status} on /health")
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise TrackingError(
                f"MLflow tracking server {uri} is unreachable ({exc}); start it or unset MLFLOW_TRACKING_URI"
            ) from None
    elif uri.startswith("sqlite:///"):
        folder = Path(uri.removeprefix("sqlite:///")).parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise TrackingError(f"MLflow store {uri}: cannot create {folder} ({exc})") from None


