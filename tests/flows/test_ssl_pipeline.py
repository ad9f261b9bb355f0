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

    assert Path(row["experiment_dir"], "layer_weights.png").stat().st_size > 1000
    client = MlflowClient(uri)
    runs = [r for e in client.search_experiments() for r in client.search_runs([e.experiment_id])]
    folds = [r for r in runs if "layer_weight_0" in r.data.metrics]
    assert len(folds) == 2  # one metric per layer on every fold run, the weights summing to 1
    for run in folds:
        assert sum(run.data.metrics[f"layer_weight_{i}"] for i in range(3)) == pytest.approx(1.0, abs=1e-5)
    parent = next(r for r in runs if "mean_ua" in r.data.metrics)
    assert "layer_weights.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}
