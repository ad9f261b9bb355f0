"""Logging an :class:`ExperimentRecord` as an MLflow parent run with nested fold runs."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

from ser_pipeline.errors import ConfigError, TrackingError  # noqa: E402
from ser_pipeline.experiments.record import ExperimentRecord  # noqa: E402
from ser_pipeline.tracking.pyfunc import log_model as log_pyfunc  # noqa: E402
from ser_pipeline.tracking.uri import artifact_root, check_reachable, default_tracking_uri  # noqa: E402

log = logging.getLogger(__name__)

EPOCH_METRICS = ("train_loss", "val_loss", "val_ua")
TAG = "ser."


def client_for(uri: str) -> MlflowClient:
    """A client on ``uri`` (also set as mlflow's default tracking and registry URI)."""
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (with the local artifact root) when missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        return found.experiment_id
    location = artifact_root(uri)
    return client.create_experiment(name, artifact_location=location) if location else client.create_experiment(name)


def flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """Nested mappings to dotted keys with string values (MLflow params), lists as JSON."""
    if isinstance(obj, dict):
        flat: dict[str, str] = {}
        for key, value in obj.items():
            flat.update(flatten(value, f"{prefix}{key}."))
        if not obj and prefix:
            flat[prefix[:-1]] = "{}"
        return flat
    value = json.dumps(obj) if isinstance(obj, list | tuple) else str(obj)
    return {prefix[:-1]: value[:6000]}


def per_class(metrics: dict[str, Any], classes: list[str]) -> dict[str, float]:
    """``{"recall_<class>": value}`` from a fold's ``per_class_recall`` (a dict or a list by class)."""
    recall = metrics.get("per_class_recall") or {}
    if isinstance(recall, list | tuple):
        recall = dict(zip(classes, recall, strict=False))
    return {f"recall_{c}": float(v) for c, v in recall.items() if _finite(v)}


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def scalar_metrics(values: dict[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite scalar entries of ``values`` (wa, ua, macro_f1, ...) with ``prefix``."""
    return {f"{prefix}{k}": float(v) for k, v in values.items()
            if not isinstance(v, bool) and isinstance(v, int | float) and _finite(v)}


def run_label(config: dict[str, Any], label: str | None = None) -> str:
    """The parent run name: the model label (default the model name) and the seed, e.g. ``cnn-s0``."""
    return f"{label or config.get('model', 'model')}-s{config.get('seed', 0)}"


def git_commit(cwd: str | os.PathLike[str] | None = None) -> str:
    """The checkout's commit hash, or ``unknown`` outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=cwd or Path(__file__).resolve().parent, check=False)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def package_version() -> str:
    try:
        return version("ser-pipeline")
    except PackageNotFoundError:
        return "unknown"


# --------------------------------------------------------------------------------------------
# logging
# --------------------------------------------------------------------------------------------
def find_run(client: MlflowClient, experiment_id: str, config_digest: str) -> Any | None:
    """The finished parent run tagged with ``config_digest``, or None."""
    runs = client.search_runs(
        [experiment_id],
        filter_string=f"tags.`ser.digest.config` = '{config_digest}' and tags.`ser.kind` = 'parent' "
        "and attributes.status = 'FINISHED'",
        max_results=1,
    )
    return runs[0] if runs else None


def log_experiment(
    exp_dir: str | os.PathLike[str] | ExperimentRecord,
    *,
    experiment: str,
    uri: str | None = None,
    manifest_path: str | os.PathLike[str] | None = None,
    register: bool = True,
    log_model: bool = True,
    force: bool = False,
    example_audio: str | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """Log one finished experiment (its record, or the folder holding it) as a parent run with
    nested fold runs.

    Idempotent in the store: a finished parent run with the same config digest is returned
    (``status="existing"``) unless ``force``. ``label`` names the model configuration in the run
    name (``<label>-s<seed>``; default the model name). Returns ``{"run_id", "status", "experiment",
    "run_name", "model_uri", "registered", "ua"}``.
    """
    uri = uri or default_tracking_uri()
    check_reachable(uri)
    try:
        record = exp_dir if isinstance(exp_dir, ExperimentRecord) else ExperimentRecord.read(exp_dir)
    except ConfigError as exc:
        raise TrackingError(str(exc)) from None
    try:
        client = client_for(uri)
        exp_id = ensure_experiment(client, experiment, uri)
        if not force:
            found = find_run(client, exp_id, record.digests.config)
            if found is not None:
                return _summary(found, experiment, "existing")
        run_id = _log_runs(exp_id, record, manifest_path, run_label(record.config, label))
        model_info = None
        model_dir = record.folder / record.model_folder
        if log_model and (model_dir / "model.json").is_file():
            model_info = log_pyfunc(run_id, record.folder, model_dir, registered=registered_name(record.config)
                                   if register else None, example_audio=example_audio)
        return _summary(client.get_run(run_id), experiment, "logged", model_info)
    except TrackingError:
        raise
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"MLflow at {uri} rejected the request for {record.folder}: {exc}") from exc


def registered_name(config: dict[str, Any]) -> str:
    """Registered model name per (model, corpus): ``ser-<model>-<corpus>``."""
    return f"ser-{config['model']}-{config['corpus']}"


def _summary(run: Any, experiment: str, status: str, model_info: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": status,
        "experiment": experiment,
        "ua": run.data.metrics.get("mean_ua"),
        "model_uri": model_info["model_uri"] if model_info else run.data.tags.get("ser.model_uri"),
        "registered": model_info["registered"] if model_info else run.data.tags.get("ser.registered_model"),
    }


def _tags(record: ExperimentRecord) -> dict[str, str]:
    tags = {f"{TAG}digest.{k}": str(v) for k, v in record.digests.__dict__.items()}
    tags.update({
        f"{TAG}git_commit": git_commit(),
        f"{TAG}version": package_version(),
        f"{TAG}protocol": record.protocol,
        f"{TAG}speaker_dependent": str(record.speaker_dependent).lower(),
        f"{TAG}model": record.model,
        f"{TAG}corpus": record.corpus,
        f"{TAG}seed": str(record.seed),
        f"{TAG}features": record.feature_label,
    })
    return tags


def _log_runs(exp_id: str, record: ExperimentRecord, manifest_path: str | os.PathLike[str] | None, name: str) -> str:
    metrics, classes = record.metrics, list(record.classes)
    history = json.loads(record.path("history").read_text())
    tags = _tags(record)
    with mlflow.start_run(experiment_id=exp_id, run_name=name, tags={**tags, f"{TAG}kind": "parent"}) as parent:
        params = flatten({**record.config, "protocol": record.protocol, "features_label": record.feature_label})
        mlflow.log_params(params)
        if manifest_path:
            _log_dataset(Path(manifest_path), record)
        for fold in record.folds:
            fold_name = str(fold["fold"])
            with mlflow.start_run(experiment_id=exp_id, run_name=f"{name}/{fold_name}", nested=True,
                                  tags={**tags, f"{TAG}kind": "fold", f"{TAG}fold": fold_name}):
                mlflow.log_params(params)
                for row in history.get(fold_name, []):
                    step = int(row["epoch"])
                    mlflow.log_metrics({k: float(row[k]) for k in EPOCH_METRICS if _finite(row.get(k))}, step=step)
                mlflow.log_metrics({**scalar_metrics(fold), **per_class(fold, classes)})
                for ext in ("png", "csv"):
                    key = f"confusion_{fold_name}_{ext}"
                    if key in record.artifacts:
                        mlflow.log_artifact(str(record.path(key)), artifact_path="confusion")
        pooled = metrics["pooled"]
        mlflow.log_metrics({
            **scalar_metrics(pooled, "pooled_"),
            **{f"pooled_{k}": v for k, v in per_class(pooled, classes).items()},
            **scalar_metrics(metrics["mean"], "mean_"),
            **scalar_metrics(metrics["std"], "std_"),
            "n_folds": float(len(record.folds)),
        })
        for ext in ("png", "csv"):
            mlflow.log_artifact(str(record.path(f"confusion_pooled_{ext}")), artifact_path="confusion")
        for key in ("predictions", "config", "metrics", "history", "curves"):
            if key in record.artifacts:
                mlflow.log_artifact(str(record.path(key)))
        return parent.info.run_id


def _log_dataset(manifest_path: Path, record: ExperimentRecord) -> None:
    if not manifest_path.is_file():
        log.warning("manifest %s not found; dataset lineage not logged", manifest_path)
        return
    frame = pd.read_parquet(manifest_path)
    keep = [c for c in ("utterance_id", "speaker", "emotion", "duration_s", "path") if c in frame.columns]
    dataset = mlflow.data.from_pandas(
        frame[keep], source=str(manifest_path), name=record.corpus,
        digest=record.digests.manifest[:36] or None, targets="emotion" if "emotion" in keep else None,
    )
    mlflow.log_input(dataset, context="training")
