"""Logging an :class:`ExperimentRecord` as an MLflow parent run with nested fold runs."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import json  # noqa: E402
import logging  # noqa: E402
import math  # noqa: E402
import subprocess  # noqa: E402
from importlib.metadata import PackageNotFoundError, version  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from ser_pipeline.errors import ConfigError, TrackingError  # noqa: E402
from ser_pipeline.experiments.record import ExperimentRecord  # noqa: E402
from ser_pipeline.inference.model_folder import predicts_from_audio  # noqa: E402
from ser_pipeline.tracking.dbinit import initialise_once  # noqa: E402
from ser_pipeline.tracking.names import run_name, run_params  # noqa: E402
from ser_pipeline.tracking.pyfunc import log_model as log_pyfunc  # noqa: E402
from ser_pipeline.tracking.uri import artifact_root, check_reachable, default_tracking_uri  # noqa: E402

log = logging.getLogger(__name__)

EPOCH_METRICS = ("train_loss", "val_loss", "val_ua")
EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3's UI opens "custom_model_development" on the training runs
TRAINING_KIND = "custom_model_development"
EXPERIMENT_NOTE = ("One parent run per experiment configuration (tag ser.kind = parent; run name = model, what "
                   "differs from its defaults, config digest) with a nested run per fold. Compare on the parent "
                   "runs' mean_ua (unweighted average recall, mean over folds), mean_wa and mean_macro_f1: in the "
                   "runs table, filter with tags.`ser.kind` = 'parent' and add these three metric columns "
                   "(MLflow 3 stores no default column set; the UI keeps the column choice per browser).")
TAG = "ser."


def init_store(uri: str) -> None:
    """Create a local SQLite store's schema once, under a file lock (two processes starting on a
    fresh store at the same moment would both run MLflow's migrations)."""
    if uri.startswith("sqlite:///"):
        initialise_once(uri.removeprefix("sqlite:///"),
                        lambda: MlflowClient(tracking_uri=uri, registry_uri=uri).search_experiments(max_results=1))


def client_for(uri: str) -> MlflowClient:
    """A client on ``uri`` (also set as mlflow's default tracking and registry URI)."""
    init_store(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def ensure_experiment(client: MlflowClient, name: str, uri: str) -> str:
    """The id of experiment ``name``, created (with the local artifact root) when missing."""
    found = client.get_experiment_by_name(name)
    if found is not None:
        if found.lifecycle_stage == "deleted":
            client.restore_experiment(found.experiment_id)
        if found.tags.get(EXPERIMENT_KIND) is None:  # experiments made before: open on the training runs too
            client.set_experiment_tag(found.experiment_id, EXPERIMENT_KIND, TRAINING_KIND)
        return found.experiment_id
    location = artifact_root(uri)
    tags = {"mlflow.note.content": EXPERIMENT_NOTE, EXPERIMENT_KIND: TRAINING_KIND,
            f"{TAG}columns": "metrics.mean_ua,metrics.mean_wa,metrics.mean_macro_f1"}
    try:
        return client.create_experiment(name, artifact_location=location, tags=tags)
    except mlflow.exceptions.MlflowException:  # another process created it at the same moment
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id


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


def training_times(record: ExperimentRecord) -> tuple[int, int, list[tuple[int, int]]]:
    """``(start_ms, end_ms, [(fold start_ms, fold end_ms)...])`` of the training: the record was
    written when training ended (its file time); the runner measured the total and each fold's
    seconds (``metrics.json``), so the start is the end minus the total and folds follow one another."""
    end = int(record.folder.joinpath("record.json").stat().st_mtime * 1000)
    total = float(record.metrics.get("seconds") or sum(float(f.get("seconds") or 0) for f in record.folds))
    start = end - int(total * 1000)
    spans, t = [], start
    for fold in record.folds:
        length = int(float(fold.get("seconds") or 0) * 1000)
        spans.append((t, min(t + length, end)))
        t += length
    return start, end, spans


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
    dataset_dir: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Log one finished experiment (its record, or the folder holding it) as a parent run with
    nested fold runs, with the training's start and end times; ``dataset_dir`` (the corpus
    exploration) is logged under the parent's ``dataset/`` artifacts.

    Idempotent in the store: a finished parent run with the same config digest is returned
    (``status="existing"``) unless ``force``. The run name says what differs from the model's
    defaults (:func:`ser_pipeline.tracking.names.run_name`); ``label`` (the pipeline's model label)
    is kept as the tag ``ser.label``. Returns ``{"run_id", "status", "experiment", "run_name",
    "model_uri", "registered", "ua"}``.
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
        run_id, end_ms = _log_runs(client, exp_id, record, manifest_path, label, dataset_dir)
        model_info = None
        model_dir = record.folder / record.model_folder
        try:
            if log_model and predicts_from_audio(model_dir):  # a classic estimator is tracked without a pyfunc
                model_info = log_pyfunc(run_id, record.folder, model_dir, registered=registered_name(record.config)
                                        if register else None, example_audio=example_audio)
        except BaseException:
            client.set_terminated(run_id, "FAILED", end_time=end_ms)
            raise
        client.set_terminated(run_id, "FINISHED", end_time=end_ms)
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
    if record.final_model:  # what the logged model is: the best fold's or one trained on every speaker
        tags[f"{TAG}final_model"] = str(record.final_model.get("selected_by", record.final_model.get("kind")))
    if record.dropped_classes:  # cross_corpus
        tags[f"{TAG}dropped_classes"] = "; ".join(f"{c}: {', '.join(v)}" for c, v in record.dropped_classes.items())
    return tags


def _batch(client: MlflowClient, run_id: str, *, params: dict[str, str] | None = None,
           metrics: dict[str, float] | None = None, step: int = 0, timestamp: int) -> None:
    from mlflow.entities import Metric, Param

    items_p = [Param(k, v) for k, v in (params or {}).items()]
    items_m = [Metric(k, float(v), timestamp, step) for k, v in (metrics or {}).items()]
    for i in range(0, max(len(items_p), len(items_m)), 100):
        client.log_batch(run_id, metrics=items_m[i:i + 100], params=items_p[i:i + 100])


def resolved_section(record: ExperimentRecord) -> dict[str, Any] | None:
    """``config.json``'s ``resolved`` section (every default filled in), or None."""
    if "config" not in record.artifacts or not record.path("config").is_file():
        return None
    return json.loads(record.path("config").read_text()).get("resolved")


def _log_runs(client: MlflowClient, exp_id: str, record: ExperimentRecord,
              manifest_path: str | os.PathLike[str] | None, label: str | None,
              dataset_dir: str | os.PathLike[str] | None = None) -> tuple[str, int]:
    """Create the parent run (left RUNNING for the model; the caller terminates it) and the fold runs."""
    metrics, classes = record.metrics, list(record.classes)
    history = json.loads(record.path("history").read_text())
    name = run_name(record.config, record.digests.config)
    tags = {**_tags(record), f"{TAG}label": label or record.model, f"{TAG}run_name": name}
    start, end, spans = training_times(record)
    parent = client.create_run(exp_id, start_time=start, run_name=name, tags={**tags, f"{TAG}kind": "parent"})
    run_id = parent.info.run_id
    params = run_params(record.config, resolved_section(record), protocol=record.protocol,
                        features_label=record.feature_label)
    _batch(client, run_id, params=params, timestamp=end)
    if manifest_path:
        _log_dataset(client, run_id, Path(manifest_path), record)
    for fold, (f_start, f_end) in zip(record.folds, spans, strict=True):
        fold_name = str(fold["fold"])
        child = client.create_run(exp_id, start_time=f_start, run_name=f"{name} / {fold_name}", tags={
            **tags, f"{TAG}kind": "fold", f"{TAG}fold": fold_name, "mlflow.parentRunId": run_id})
        cid = child.info.run_id
        _batch(client, cid, params={"fold": fold_name}, timestamp=f_end)
        rows = history.get(fold_name, [])
        for row in rows:
            step = int(row["epoch"])
            t = f_start + (f_end - f_start) * (step + 1) // max(len(rows), 1)
            _batch(client, cid, metrics={k: float(row[k]) for k in EPOCH_METRICS if _finite(row.get(k))},
                   step=step, timestamp=t)
        _batch(client, cid, metrics={**scalar_metrics(fold), **per_class(fold, classes)}, timestamp=f_end)
        for ext in ("png", "csv"):
            key = f"confusion_{fold_name}_{ext}"
            if key in record.artifacts:
                client.log_artifact(cid, str(record.path(key)), artifact_path="confusion")
        client.set_terminated(cid, "FINISHED", end_time=f_end)
    pooled = metrics["pooled"]
    _batch(client, run_id, timestamp=end, metrics={
        **scalar_metrics(pooled, "pooled_"),
        **{f"pooled_{k}": v for k, v in per_class(pooled, classes).items()},
        **scalar_metrics(metrics["mean"], "mean_"),
        **scalar_metrics(metrics["std"], "std_"),
        "n_folds": float(len(record.folds)),
    })
    for ext in ("png", "csv"):
        client.log_artifact(run_id, str(record.path(f"confusion_pooled_{ext}")), artifact_path="confusion")
    for key in ("predictions", "config", "metrics", "history", "curves", "layer_weights"):
        # records of models without epochs written before 2026-12-07 list curves.png that was never drawn
        if key in record.artifacts and (key != "curves" or record.path(key).exists()):
            client.log_artifact(run_id, str(record.path(key)))
    if dataset_dir is not None and Path(dataset_dir).is_dir():  # the corpus exploration (plots, explore.json)
        client.log_artifacts(run_id, str(dataset_dir), artifact_path="dataset")
    return run_id, end


def _log_dataset(client: MlflowClient, run_id: str, manifest_path: Path, record: ExperimentRecord) -> None:
    if not manifest_path.is_file():
        log.warning("manifest %s not found; dataset lineage not logged", manifest_path)
        return
    import warnings

    from mlflow.entities import DatasetInput, InputTag

    frame = pd.read_parquet(manifest_path)
    keep = [c for c in ("utterance_id", "speaker", "emotion", "duration_s", "path") if c in frame.columns]
    with warnings.catch_warnings():  # "source can be interpreted in multiple ways": both are local files
        warnings.simplefilter("ignore")
        dataset = mlflow.data.from_pandas(
            frame[keep], source=str(manifest_path), name=record.corpus,
            digest=record.digests.manifest[:36] or None, targets="emotion" if "emotion" in keep else None,
        )
    client.log_inputs(run_id, datasets=[DatasetInput(dataset._to_mlflow_entity(),
                                                     tags=[InputTag("mlflow.data.context", "training")])])
