"""MLflow tracking: the only module that imports mlflow (DESIGN.md convention 1).

It reads an experiment directory (the contract in docs/ARCHITECTURE.md) and logs it as

- one MLflow experiment per corpus and protocol (``<corpus>-<protocol>`` unless named);
- one parent run per model configuration (run name = model label, e.g. ``cnn`` or
  ``att_res-1a2b3c4d``, plus ``-s<seed>``), with a nested run per fold (``<label>/<fold>``);
- params: the resolved config flattened (``hparams.channels``, ``protocol_options.k``...);
- tags: ``ser.digest.{manifest,features,augment,config}``, ``ser.git_commit``, ``ser.version``,
  ``ser.protocol``, ``ser.speaker_dependent``, ``ser.model``, ``ser.corpus``, ``ser.kind``;
- metrics: per epoch in each fold run (``train_loss``, ``val_loss``, ``val_ua``; step = epoch), per
  fold (``wa``, ``ua``, ``macro_f1``, ``recall_<class>``), on the parent the pooled values
  (``pooled_<m>``) and mean/std over folds (``mean_<m>``, ``std_<m>``);
- artifacts: confusion PNG+CSV per fold (fold runs) and pooled, predictions.csv, config.json,
  metrics.json and ``training_curves.png`` (parent);
- the model as an ``mlflow.pyfunc`` that predicts from audio paths (feature extraction + view +
  network, from :mod:`ser_pipeline.predict`), registered as ``ser-<model>-<corpus>`` with the alias
  ``champion`` on the version with the best mean UA over folds;
- the manifest as an MLflow dataset input (name, digest, source).

The default store is ``sqlite:///<cwd>/mlruns/mlflow.db`` with artifacts in ``mlruns/artifacts``
(MLflow 3 recommends a database backend over the plain file store for local use);
``MLFLOW_TRACKING_URI`` selects a server.
"""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from ser_pipeline.errors import TrackingError
from ser_pipeline.pipeline_config import default_tracking_uri

log = logging.getLogger(__name__)

PARENT_METRICS = ("wa", "ua", "macro_f1")
EPOCH_METRICS = ("train_loss", "val_loss", "val_ua")
CHAMPION = "champion"
TAG = "ser."


# --------------------------------------------------------------------------------------------
# tracking URI and reachability
# --------------------------------------------------------------------------------------------
def local_store(base: str | os.PathLike[str] | None = None) -> Path:
    """The local store folder: ``<base or cwd>/mlruns``."""
    return Path(base or Path.cwd()).resolve() / "mlruns"


def tracking_uri(base: str | os.PathLike[str] | None = None) -> str:
    """``$MLFLOW_TRACKING_URI`` if set, else ``sqlite:///<base or cwd>/mlruns/mlflow.db``."""
    return default_tracking_uri(base)


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


def _client(uri: str) -> MlflowClient:
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


# --------------------------------------------------------------------------------------------
# reading an experiment directory (pure helpers)
# --------------------------------------------------------------------------------------------
def read_experiment_dir(exp_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Load config.json, metrics.json and history.json of an experiment directory.

    Returns ``{"dir", "config", "digests", "metrics", "history"}``; errors name the missing file.
    """
    exp_dir = Path(exp_dir)
    out: dict[str, Any] = {"dir": exp_dir}
    for name in ("config", "metrics"):
        path = exp_dir / f"{name}.json"
        if not path.is_file():
            raise TrackingError(f"experiment {exp_dir}: {path.name} is missing; was the experiment completed?")
        out[name] = json.loads(path.read_text())
    history = exp_dir / "history.json"
    out["history"] = json.loads(history.read_text()) if history.is_file() else {}
    config = out["config"]
    digests = dict(config.get("digests") or {})
    if "config" in config and isinstance(config["config"], dict):
        config = {**config["config"], **{k: v for k, v in config.items() if k not in ("config", "digests")}}
    out["config"] = {k: v for k, v in config.items() if k != "digests"}
    out["digests"] = digests
    return out


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
        from importlib.metadata import version

        return version("ser-pipeline")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


def training_curves_png(history: dict[str, list[dict[str, Any]]], path: Path) -> Path | None:
    """Plot train/val loss and val UA per epoch for every fold into ``path``; None without history."""
    if not history:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_ua) = plt.subplots(1, 2, figsize=(10, 4))
    for fold, rows in history.items():
        epochs = [r.get("epoch", i) for i, r in enumerate(rows)]
        ax_loss.plot(epochs, [r.get("train_loss", float("nan")) for r in rows], label=f"{fold} train")
        ax_loss.plot(epochs, [r.get("val_loss", float("nan")) for r in rows], "--", label=f"{fold} val")
        ax_ua.plot(epochs, [r.get("val_ua", float("nan")) for r in rows], label=str(fold))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_ua.set(xlabel="epoch", ylabel="UA", title="validation UA")
    ax_loss.legend(fontsize=6)
    ax_ua.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


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
    exp_dir: str | os.PathLike[str],
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
    """Log one experiment directory as a parent run with nested fold runs.

    Idempotent: when a finished parent run with the same config digest exists, it is returned
    (``status="existing"``) unless ``force``. ``label`` names the model configuration in the run
    name (``<label>-s<seed>``; default the model name). Returns ``{"run_id", "status", "experiment",
    "run_name", "model_uri", "registered", "ua"}``.
    """
    uri = uri or tracking_uri()
    check_reachable(uri)
    data = read_experiment_dir(exp_dir)
    digests = data["digests"]
    config_digest = str(digests.get("config") or digests.get("experiment") or Path(exp_dir).name)
    try:
        client = _client(uri)
        exp_id = ensure_experiment(client, experiment, uri)
        if not force:
            found = find_run(client, exp_id, config_digest)
            if found is not None:
                return _summary(found, experiment, "existing")
        run_id = _log_runs(client, exp_id, data, config_digest, manifest_path, run_label(data["config"], label))
        model_info = None
        if log_model and (Path(exp_dir) / "model").is_dir():
            model_info = _log_model(run_id, data, register=register, example_audio=example_audio)
        return _summary(client.get_run(run_id), experiment, "logged", model_info)
    except TrackingError:
        raise
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"MLflow at {uri} rejected the request for {exp_dir}: {exc}") from exc


def _summary(run: Any, experiment: str, status: str, model_info: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "run_id": run.info.run_id,
        "run_name": run.info.run_name,
        "status": status,
        "experiment": experiment,
        "ua": run.data.metrics.get("mean_ua"),
        "model_uri": (model_info or {}).get("model_uri") or run.data.tags.get("ser.model_uri"),
        "registered": (model_info or {}).get("registered") or run.data.tags.get("ser.registered_model"),
    }


def _tags(config: dict[str, Any], metrics: dict[str, Any], digests: dict[str, Any], config_digest: str) -> dict[str, str]:
    tags = {f"{TAG}digest.{k}": str(v) for k, v in digests.items()}
    tags.update({
        f"{TAG}digest.config": config_digest,
        f"{TAG}git_commit": git_commit(),
        f"{TAG}version": package_version(),
        f"{TAG}protocol": str(metrics.get("protocol", config.get("protocol", ""))),
        f"{TAG}speaker_dependent": str(bool(metrics.get("speaker_dependent", False))).lower(),
        f"{TAG}model": str(config.get("model", "")),
        f"{TAG}corpus": str(config.get("corpus", "")),
        f"{TAG}seed": str(config.get("seed", "")),
    })
    return tags


def _log_runs(client: MlflowClient, exp_id: str, data: dict[str, Any], config_digest: str,
              manifest_path: str | os.PathLike[str] | None, name: str) -> str:
    config, metrics, history, exp_dir = data["config"], data["metrics"], data["history"], data["dir"]
    classes = list(metrics.get("classes") or [])
    tags = _tags(config, metrics, data["digests"], config_digest)
    with mlflow.start_run(experiment_id=exp_id, run_name=name, tags={**tags, f"{TAG}kind": "parent"}) as parent:
        params = flatten({k: v for k, v in config.items() if not k.startswith("_")})
        mlflow.log_params(params)
        if manifest_path:
            _log_dataset(Path(manifest_path), config, data["digests"])
        for fold in metrics.get("folds", []):
            fold_name = str(fold.get("fold"))
            with mlflow.start_run(experiment_id=exp_id, run_name=f"{name}/{fold_name}", nested=True,
                                  tags={**tags, f"{TAG}kind": "fold", f"{TAG}fold": fold_name}):
                mlflow.log_params(params)
                for row in history.get(fold_name, []):
                    step = int(row.get("epoch", 0))
                    mlflow.log_metrics({k: float(row[k]) for k in EPOCH_METRICS if _finite(row.get(k))}, step=step)
                mlflow.log_metrics({**scalar_metrics(fold), **per_class(fold, classes)})
                for ext in ("png", "csv"):
                    path = exp_dir / f"confusion_{fold_name}.{ext}"
                    if path.is_file():
                        mlflow.log_artifact(str(path), artifact_path="confusion")
        pooled = metrics.get("pooled", {})
        mlflow.log_metrics({
            **scalar_metrics(pooled, "pooled_"),
            **{f"pooled_{k}": v for k, v in per_class(pooled, classes).items()},
            **scalar_metrics(metrics.get("mean", {}), "mean_"),
            **scalar_metrics(metrics.get("std", {}), "std_"),
            "n_folds": float(len(metrics.get("folds", []))),
        })
        for ext in ("png", "csv"):
            path = exp_dir / f"confusion_pooled.{ext}"
            if path.is_file():
                mlflow.log_artifact(str(path), artifact_path="confusion")
        for fname in ("predictions.csv", "config.json", "metrics.json", "history.json"):
            if (exp_dir / fname).is_file():
                mlflow.log_artifact(str(exp_dir / fname))
        curves = training_curves_png(history, exp_dir / "training_curves.png")
        if curves:
            mlflow.log_artifact(str(curves))
        return parent.info.run_id


def _log_dataset(manifest_path: Path, config: dict[str, Any], digests: dict[str, Any]) -> None:
    if not manifest_path.is_file():
        log.warning("manifest %s not found; dataset lineage not logged", manifest_path)
        return
    frame = pd.read_parquet(manifest_path)
    keep = [c for c in ("utterance_id", "speaker", "emotion", "duration_s", "path") if c in frame.columns]
    dataset = mlflow.data.from_pandas(
        frame[keep], source=str(manifest_path), name=str(config.get("corpus", manifest_path.stem)),
        digest=str(digests.get("manifest", ""))[:36] or None, targets="emotion" if "emotion" in keep else None,
    )
    mlflow.log_input(dataset, context="training")


class SerAudioModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: DataFrame with a ``path`` column (audio files) -> emotion and probabilities.

    Loads the experiment's ``model/`` folder through :func:`ser_pipeline.predict.load_predictor`, so
    the feature spec and view recorded at training time are the ones used here.
    """

    def load_context(self, context: Any) -> None:
        from ser_pipeline.predict import load_predictor

        self.predictor = load_predictor(context.artifacts["model_dir"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        from ser_pipeline.predict import predict_paths, results_frame

        paths = [str(p) for p in model_input["path"]]
        return results_frame(predict_paths(self.predictor, paths), self.predictor.classes)


def registered_name(config: dict[str, Any]) -> str:
    """Registered model name per (model, corpus): ``ser-<model>-<corpus>``."""
    return f"ser-{config.get('model', 'model')}-{config.get('corpus', 'corpus')}"


def _log_model(run_id: str, data: dict[str, Any], *, register: bool, example_audio: str | None) -> dict[str, Any]:
    from mlflow.models import infer_signature

    from ser_pipeline.predict import load_predictor

    model_dir = Path(data["dir"]) / "model"
    classes = list(load_predictor(model_dir).classes)
    example_path = example_audio or _example_path(Path(data["dir"]))
    example = pd.DataFrame({"path": [example_path]})
    output = pd.DataFrame({"emotion": [classes[0]], **{f"p_{c}": [0.0] for c in classes}, "error": [""]})
    signature = infer_signature(example, output)
    name = registered_name(data["config"]) if register else None
    with mlflow.start_run(run_id=run_id):
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=SerAudioModel(),
            artifacts={"model_dir": str(model_dir)},
            signature=signature,
            input_example=example,
            registered_model_name=name,
            pip_requirements=["ser-pipeline", "torch", "librosa", "soundfile", "soxr", "pandas"],
        )
        mlflow.set_tag("ser.model_uri", info.model_uri)
    out = {"model_uri": info.model_uri, "registered": None}
    if name:
        client = MlflowClient(tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri())
        version = _version_of_run(client, name, run_id)
        client.set_tag(run_id, "ser.registered_model", f"{name}/{version}")
        update_champion(client, name)
        out["registered"] = f"{name}/{version}"
    return out


def _example_path(exp_dir: Path) -> str:
    predictions = exp_dir / "predictions.csv"
    if predictions.is_file():
        frame = pd.read_csv(predictions, nrows=1)
        for column in ("path", "audio_path"):
            if column in frame.columns:
                return str(frame[column].iloc[0])
    return "example.wav"


def _version_of_run(client: MlflowClient, name: str, run_id: str) -> str:
    versions = [v for v in client.search_model_versions(f"name = '{name}'") if v.run_id == run_id]
    if not versions:
        raise TrackingError(f"registered model {name}: no version for run {run_id}")
    return str(max(int(v.version) for v in versions))


def update_champion(client: MlflowClient, name: str, *, metric: str = "mean_ua") -> str | None:
    """Point the ``champion`` alias of ``name`` at the version whose run has the best ``metric``."""
    best: tuple[float, int] | None = None
    for version in client.search_model_versions(f"name = '{name}'"):
        if not version.run_id:
            continue
        value = client.get_run(version.run_id).data.metrics.get(metric)
        if value is None:
            continue
        key = (float(value), int(version.version))
        best = key if best is None or key > best else best
    if best is None:
        return None
    client.set_registered_model_alias(name, CHAMPION, str(best[1]))
    return str(best[1])


# --------------------------------------------------------------------------------------------
# comparison
# --------------------------------------------------------------------------------------------
def list_experiments(uri: str | None = None) -> list[str]:
    """Names of the active MLflow experiments in the store."""
    uri = uri or tracking_uri()
    check_reachable(uri)
    return sorted(e.name for e in _client(uri).search_experiments() if e.name != "Default")


def compare_runs(experiment: str, *, uri: str | None = None) -> list[dict[str, Any]]:
    """One row per finished parent run of ``experiment``: name, model, UA/WA/F1 (mean ± std and pooled),
    folds, protocol, speaker-dependent flag, run id; sorted by mean UA, best first."""
    uri = uri or tracking_uri()
    check_reachable(uri)
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"MLflow experiment {experiment!r} not found at {uri}")
    runs = client.search_runs([found.experiment_id], filter_string="tags.`ser.kind` = 'parent' "
                              "and attributes.status = 'FINISHED'", max_results=1000)
    rows = [compare_row(run.info.run_name, run.info.run_id, run.data.metrics, run.data.tags) for run in runs]
    return sorted(rows, key=lambda r: -(r["ua"] if r["ua"] is not None else -1.0))


def compare_row(name: str, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> dict[str, Any]:
    """A comparison-table row from a parent run's metrics and tags."""
    def pick(key: str) -> float | None:
        return metrics.get(f"mean_{key}")

    return {
        "run": name,
        "model": tags.get("ser.model", ""),
        "ua": pick("ua"),
        "ua_std": metrics.get("std_ua"),
        "wa": pick("wa"),
        "f1": pick("macro_f1"),
        "pooled_ua": metrics.get("pooled_ua"),
        "folds": int(metrics.get("n_folds", 0)),
        "protocol": tags.get("ser.protocol", ""),
        "speaker_dependent": tags.get("ser.speaker_dependent", "false") == "true",
        "run_id": run_id,
    }


def fold_scores(experiment: str, run: str, *, metric: str = "ua", uri: str | None = None) -> dict[str, float]:
    """``{fold: metric}`` from the nested fold runs of the parent run named (or with id) ``run``."""
    uri = uri or tracking_uri()
    client = _client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"MLflow experiment {experiment!r} not found at {uri}")
    parents = [r for r in client.search_runs([found.experiment_id], "tags.`ser.kind` = 'parent'", max_results=1000)
               if run in (r.info.run_name, r.info.run_id)]
    if not parents:
        names = sorted({r.info.run_name for r in client.search_runs([found.experiment_id], "tags.`ser.kind` = 'parent'")})
        raise TrackingError(f"run {run!r} not found in experiment {experiment!r}; runs: {', '.join(names)}")
    parent = max(parents, key=lambda r: r.info.start_time)
    children = client.search_runs(
        [found.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000)
    return {c.data.tags.get("ser.fold", c.info.run_name): float(c.data.metrics[metric])
            for c in children if metric in c.data.metrics}


def paired_test(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """Paired t-test and Wilcoxon signed-rank test over the folds both runs share."""
    from scipy import stats

    folds = sorted(set(a) & set(b))
    if len(folds) < 2:
        raise TrackingError(f"paired tests need at least 2 shared folds; shared: {folds}")
    xa, xb = [a[f] for f in folds], [b[f] for f in folds]
    diffs = [x - y for x, y in zip(xa, xb, strict=True)]
    t_p = float(stats.ttest_rel(xa, xb).pvalue) if any(diffs) else 1.0
    w_p = float(stats.wilcoxon(xa, xb).pvalue) if any(diffs) else 1.0
    return {"folds": folds, "mean_a": sum(xa) / len(xa), "mean_b": sum(xb) / len(xb),
            "mean_diff": sum(diffs) / len(diffs), "t_test_p": t_p, "wilcoxon_p": w_p}


def load_pyfunc(model_uri: str, *, uri: str | None = None) -> Any:
    """Load a logged or registered model (``models:/<name>@champion``, ``runs:/<id>/model``)."""
    uri = uri or tracking_uri()
    check_reachable(uri)
    _client(uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"cannot load model {model_uri} from {uri}: {exc}") from exc


def ui_command(uri: str | None = None) -> list[str]:
    """The command that opens the MLflow UI on the store (loopback only)."""
    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        return ["echo", f"open {uri} in a browser"]
    cmd = ["mlflow", "ui", "--backend-store-uri", uri, "--host", "127.0.0.1", "--port", "5000"]
    root = artifact_root(uri)
    return cmd + (["--default-artifact-root", root] if root else [])
