"""The pipeline end to end on SSL features: a tiny random WavLM checkpoint folder, ssl_probe on top,
through Prefect, tracked in MLflow. (No accuracy is asserted: the weights are random.)"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("transformers", reason="the ssl extra is not installed")

from flows.pipeline import pipeline_flow  # noqa: E402
from ser_pipeline.features import feature_spec  # noqa: E402
from tests.test_ssl_features import save_tiny  # noqa: E402

pytestmark = pytest.mark.slow


def test_ssl_features_train_evaluate_and_track(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    checkpoint = save_tiny(tmp_path / "tiny-wavlm")
    uri = f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    config = {
        "name": "ssltest",
        "corpora": [{"name": "tiny", "adapter": "demo",
                     "options": {"n_speakers": 3, "per_class": 2, "classes": ["anger", "sadness"]}}],
        "features": {"preset": "ssl", "overrides": {"checkpoint": str(checkpoint), "layers": [0, 1, 2]}},
        "protocol": "loso",
        "epochs": 2,
        "models": [{"name": "ssl_probe", "hparams": {"head": [16]}, "options": {"max_folds": 2}}],
    }
    path = tmp_path / "ssl.yaml"
    path.write_text(yaml.safe_dump(config))
    summary = pipeline_flow(config=str(path), root=str(tmp_path / "root"))
    assert summary["featurize"][0]["status"] == "computed"
    (row,) = summary["comparison"]
    assert row["folds"] == 2 and 0.0 <= row["ua"] <= 1.0
    record = json.loads(Path(row["experiment_dir"], "record.json").read_text())
    spec = feature_spec("ssl", checkpoint=str(checkpoint), layers=(0, 1, 2))
    assert record["digests"]["features"] == spec.digest() and record["feature_label"].startswith("ssl checkpoint=")
    model_json = json.loads(Path(row["experiment_dir"], "model", "model.json").read_text())
    assert "ssl" in json.dumps(model_json["feature_spec"]) and model_json["feature_spec"]["layers"] == [0, 1, 2]

    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    (exp,) = [e for e in client.search_experiments() if e.name.startswith("ssltest") or "tiny" in e.name]
    runs = client.search_runs([exp.experiment_id])
    assert any(r.data.metrics.get("mean_ua") is not None or r.data.metrics.get("ua") is not None for r in runs)
