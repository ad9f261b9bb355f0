"""The ``mlflow.pyfunc`` model that predicts from audio paths, its registration and the
``champion`` alias."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import logging  # noqa: E402
from collections.abc import Iterator  # noqa: E402
from contextlib import contextmanager  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.models import infer_signature  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from ser_pipeline.errors import TrackingError  # noqa: E402
from ser_pipeline.inference.predictor import load_predictor, predict_paths, results_frame  # noqa: E402
from ser_pipeline.tracking.uri import check_reachable, default_tracking_uri  # noqa: E402

CHAMPION = "champion"
MODEL_CODE = Path(__file__).with_name("pyfunc_code.py")


class SerAudioModel(mlflow.pyfunc.PythonModel):
    """pyfunc wrapper: DataFrame with a ``path`` column (audio files) -> emotion and probabilities.

    Loads the experiment's ``model/`` folder through :func:`ser_pipeline.inference.predictor.load_predictor`, so
    the feature spec and view recorded at training time are the ones used here.
    """

    def load_context(self, context: Any) -> None:
        self.predictor = load_predictor(context.artifacts["model_dir"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        paths = [str(p) for p in model_input["path"]]
        return results_frame(predict_paths(self.predictor, paths), self.predictor.classes)


def log_model(run_id: str, exp_dir: Path, model_dir: Path, *, registered: str | None,
              example_audio: str | None) -> dict[str, Any]:
    """Log ``model_dir`` as the pyfunc of run ``run_id`` (registered as ``registered`` with the
    ``champion`` alias on the best version). Returns ``{"model_uri", "registered"}``."""
    classes = list(load_predictor(model_dir).classes)
    example = pd.DataFrame({"path": [example_audio or _example_path(exp_dir)]})
    output = pd.DataFrame({"emotion": [classes[0]], **{f"p_{c}": [0.0] for c in classes}, "error": [""]})
    signature = infer_signature(example, output)
    with mlflow.start_run(run_id=run_id), _event_messages_hidden():
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(MODEL_CODE),  # models-from-code: no cloudpickle in the logged model
            artifacts={"model_dir": str(model_dir)},
            signature=signature,
            registered_model_name=registered,
            pip_requirements=["ser-pipeline", "torch", "librosa", "soundfile", "soxr", "pandas"],
        )
        mlflow.set_tag("ser.model_uri", info.model_uri)
    out: dict[str, Any] = {"model_uri": info.model_uri, "registered": None}
    if registered:
        client = MlflowClient(tracking_uri=mlflow.get_tracking_uri(), registry_uri=mlflow.get_registry_uri())
        version = _version_of_run(client, registered, run_id)
        client.set_tag(run_id, "ser.registered_model", f"{registered}/{version}")
        update_champion(client, registered)
        out["registered"] = f"{registered}/{version}"
    return out


@contextmanager
def _event_messages_hidden() -> Iterator[None]:
    """MLflow's event messages ("Successfully registered model ...", "Created version ...": printed
    whatever the log level) hidden while its logger is above INFO, as the CLI sets it without
    ``--verbose``: the stage table and ``ser track`` report the registered version themselves.
    Errors still raise."""
    from mlflow.utils.logging_utils import MLFLOW_LOGGING_STREAM

    if logging.getLogger("mlflow").getEffectiveLevel() <= logging.INFO:
        yield
        return
    was = MLFLOW_LOGGING_STREAM.enabled
    MLFLOW_LOGGING_STREAM.enabled = False
    try:
        yield
    finally:
        MLFLOW_LOGGING_STREAM.enabled = was


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


def fetch_model(model_uri: str, dst: str | os.PathLike[str], *, uri: str | None = None) -> tuple[Path, dict[str, Any]]:
    """Download the model folder (``model.json`` + weights) of a registered or logged model into
    ``dst``, without loading (unpickling) anything. ``models:/<name>@<alias>`` and
    ``models:/<name>/<version>`` are resolved to the version first. Returns ``(model folder,
    {"model_uri", "resolved", "version", "run_id"})``."""
    uri = uri or default_tracking_uri()
    check_reachable(uri)
    from ser_pipeline.tracking.runs import client_for

    client = client_for(uri)
    info: dict[str, Any] = {"model_uri": model_uri, "resolved": model_uri, "version": None, "run_id": None}
    try:
        if model_uri.startswith("models:/"):
            rest = model_uri.removeprefix("models:/")
            if "@" in rest:
                name, alias = rest.split("@", 1)
                version = client.get_model_version_by_alias(name, alias)
            else:
                name, number = rest.split("/", 1)
                version = client.get_model_version(name, number)
            info.update(resolved=f"models:/{name}/{version.version}", version=f"{name}/{version.version}",
                        run_id=version.run_id)
        elif model_uri.startswith("runs:/"):
            info["run_id"] = model_uri.removeprefix("runs:/").split("/", 1)[0]
        local = Path(mlflow.artifacts.download_artifacts(artifact_uri=info["resolved"], dst_path=str(dst)))
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"cannot load model {model_uri} from {uri}: {str(exc).splitlines()[0]}") from None
    found = sorted(local.rglob("model.json"))
    if not found:
        raise TrackingError(f"model {model_uri}: no model.json in its artifacts (not a ser-pipeline model)")
    return found[0].parent, info


def load_pyfunc(model_uri: str, *, uri: str | None = None) -> Any:
    """Load a logged or registered model (``models:/<name>@champion``, ``runs:/<id>/model``)."""
    uri = uri or default_tracking_uri()
    check_reachable(uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    try:
        return mlflow.pyfunc.load_model(model_uri)
    except mlflow.exceptions.MlflowException as exc:
        raise TrackingError(f"cannot load model {model_uri} from {uri}: {exc}") from exc


