"""The pipeline flow through Prefect's local mode: caching across runs, stage re-runs after a
feature or model change, a failing model that does not sink the others, stage selection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from flows.pipeline import pipeline_flow
from ser_pipeline.pipeline.summary import comparison_rows, last_run_path

pytestmark = pytest.mark.slow

BASE = {
    "name": "flowtest",
    "corpora": [{"name": "tiny", "adapter": "demo",
                 "options": {"n_speakers": 3, "per_class": 2, "classes": ["anger", "sadness"]}}],
    "features": {"preset": "logmel64", "overrides": {"n_mels": 24}},
    "protocol": "loso",
    "epochs": 1,
    "models": [{"name": "cnn", "hparams": {"channels": [4, 4, 8, 8]}, "options": {"view": {"frames": 40}, "max_folds": 1}}],
}


def write_config(folder: Path, name: str, data: dict) -> str:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


def statuses(summary: dict) -> dict[str, list[str]]:
    return {stage: [r["status"] for r in summary[stage]] for stage in ("ingest", "featurize", "train", "track")}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("flow")
    old = os.environ.get("MLFLOW_TRACKING_URI")
    uri = f"sqlite:///{base}/mlruns/mlflow.db"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    yield {"base": base, "root": str(base / "root"), "uri": uri}
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


def test_first_run_computes_and_second_run_is_cached(ws: dict) -> None:
    cfg = write_config(ws["base"], "base", BASE)
    first = pipeline_flow(config=cfg, root=ws["root"])
    assert statuses(first) == {"ingest": ["computed"], "featurize": ["computed"], "train": ["computed"],
                               "track": ["computed"]}
    row = first["comparison"][0]
    assert row["label"] == "cnn" and row["folds"] == 1 and row["protocol"] == "loso"
    assert 0.0 <= row["ua"] <= 1.0
    assert Path(row["experiment_dir"], "metrics.json").is_file()
    assert first["track"][0]["registered"] == "ser-cnn-tiny/1"
    second = pipeline_flow(config=cfg, root=ws["root"])
    assert all(s == ["cached"] for s in statuses(second).values())
    assert second["all_cached"] is True
    assert second["comparison"][0]["ua"] == row["ua"]
    assert json.loads(last_run_path(ws["root"]).read_text())["all_cached"] is True
    # the same summary straight from the stage records, without Prefect (what a cached `ser run` prints)
    from ser_pipeline.pipeline.config import check_config
    from ser_pipeline.pipeline.summary import cached_run_summary

    parsed, planned = check_config(cfg)
    direct = cached_run_summary(cfg, parsed, planned, ws["root"], plan=["ingest", "featurize", "train"], uri=ws["uri"])
    assert direct is not None and statuses(direct) == statuses(second) and direct["all_cached"] is True
    assert direct["comparison"] == second["comparison"] and direct["experiments"] == second["experiments"]
    assert [r["run_id"] for r in direct["track"]] == [r["run_id"] for r in second["track"]]
    # another tracking store has no track record yet: there is work, so no summary (the flow runs)
    assert cached_run_summary(cfg, parsed, planned, ws["root"], plan=["ingest", "featurize", "train"],
                              uri=f"sqlite:///{ws['base']}/other.db") is None


def test_killed_after_commit_resumes_from_what_was_committed(ws: dict) -> None:
    """A run killed after the experiment was committed but before its stage record was written:
    the next run re-enters the train stage, which finds the committed experiment and reuses it."""
    cfg = write_config(ws["base"], "base", BASE)
    before = json.loads(last_run_path(ws["root"]).read_text())["comparison"][0]
    records = list((Path(ws["root"]) / "runs" / "train").glob("*.json"))
    assert len(records) == 1
    records[0].unlink()
    metrics = Path(before["experiment_dir"], "metrics.json")
    stamp = metrics.stat().st_mtime_ns
    out = pipeline_flow(config=cfg, root=ws["root"])
    assert statuses(out)["train"] == ["computed"] and statuses(out)["track"] == ["cached"]
    assert out["comparison"][0]["ua"] == before["ua"]
    assert metrics.stat().st_mtime_ns == stamp  # nothing retrained: the committed experiment was reused
    assert records[0].is_file()


def test_feature_change_reruns_featurize_and_train_not_ingest(ws: dict) -> None:
    data = json.loads(json.dumps(BASE))
    data["features"]["overrides"]["n_mels"] = 20
    out = pipeline_flow(config=write_config(ws["base"], "feat", data), root=ws["root"])
    assert statuses(out) == {"ingest": ["cached"], "featurize": ["computed"], "train": ["computed"],
                             "track": ["computed"]}


def test_model_change_reruns_only_train(ws: dict) -> None:
    data = json.loads(json.dumps(BASE))
    data["models"][0]["hparams"]["channels"] = [4, 4, 8, 16]
    out = pipeline_flow(config=write_config(ws["base"], "model", data), root=ws["root"])
    assert statuses(out) == {"ingest": ["cached"], "featurize": ["cached"], "train": ["computed"],
                             "track": ["computed"]}


def test_failing_model_is_named_and_the_others_are_kept(ws: dict) -> None:
    data = json.loads(json.dumps(BASE))
    data["models"].append({"name": "att_res", "hparams": {"channels": [8, 16]},  # 2 channels for 3 blocks: fails
                           "options": {"max_folds": 1}})
    state = pipeline_flow(config=write_config(ws["base"], "fail", data), root=ws["root"], return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match="att_res"):
        state.result()
    summary = json.loads(last_run_path(ws["root"]).read_text())
    by_label = {r["label"]: r for r in summary["train"]}
    assert by_label["cnn"]["status"] == "cached" and by_label["att_res"]["status"] == "failed"
    assert "att_res" in by_label["att_res"]["label"]
    assert [r["label"] for r in summary["track"]] == ["cnn"]
    assert [r["label"] for r in comparison_rows(summary["train"])] == ["cnn", "att_res"]


def test_single_stage_and_forced_stage(ws: dict) -> None:
    cfg = write_config(ws["base"], "base", BASE)
    only = pipeline_flow(config=cfg, root=ws["root"], stages=["featurize"])
    assert statuses(only) == {"ingest": [], "featurize": ["cached"], "train": [], "track": []}
    forced = pipeline_flow(config=cfg, root=ws["root"], stages=["ingest"], force=["ingest"])
    assert statuses(forced)["ingest"] == ["computed"]
    after = pipeline_flow(config=cfg, root=ws["root"])  # same corpus, same manifest digest: the rest is cached
    assert statuses(after)["featurize"] == ["cached"] and statuses(after)["train"] == ["cached"]


@pytest.mark.server
def test_tracking_server_receives_the_run_through_the_flow(ws: dict, tmp_path: Path) -> None:
    """A real `mlflow server` on loopback (SQLite backend, local artifact root): the flow logs the
    already-trained experiment there (only the track stage runs) and MlflowClient reads it back."""
    import subprocess
    import sys

    from flow_helpers import free_port, repo_env, stop, wait_healthy
    from mlflow.tracking import MlflowClient

    port = free_port()
    uri = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{tmp_path}/mlflow.db",
         "--artifacts-destination", str(tmp_path / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
         "--workers", "1"],
        env=repo_env(MLFLOW_DISABLE_TELEMETRY="true"), stdout=subprocess.DEVNULL,
        stderr=(tmp_path / "mlflow.log").open("w"))
    try:
        wait_healthy(f"{uri}/health", server)
        out = pipeline_flow(config=write_config(ws["base"], "base", BASE), root=ws["root"], tracking_uri=uri)
        assert statuses(out) == {"ingest": ["cached"], "featurize": ["cached"], "train": ["cached"],
                                 "track": ["computed"]}
        run_id = out["track"][0]["run_id"]
        client = MlflowClient(uri)
        run = client.get_run(run_id)
        assert run.info.run_name.startswith("cnn · n_mels=24 · epochs=1 · ")  # what differs from the defaults
        assert run.data.params["model"] == "cnn" and run.data.params["train.epochs"] == "1"
        assert run.data.tags["ser.protocol"] == "loso" and run.data.tags["ser.speaker_dependent"] == "false"
        metrics = json.loads(Path(out["train"][0]["experiment_dir"], "metrics.json").read_text())
        assert run.data.metrics["mean_ua"] == pytest.approx(metrics["mean"]["ua"])
        assert run.data.metrics["pooled_ua"] == pytest.approx(metrics["pooled"]["ua"])
        paths = {a.path for a in client.list_artifacts(run_id)}
        assert {"predictions.csv", "config.json", "confusion", "curves.png"} <= paths
        experiment = client.get_experiment(run.info.experiment_id)
        assert experiment.name == "tiny-loso"
        again = pipeline_flow(config=write_config(ws["base"], "base", BASE), root=ws["root"], tracking_uri=uri)
        assert statuses(again)["track"] == ["cached"]
    finally:
        stop(server)


def test_unreachable_tracking_server_fails_before_training(ws: dict) -> None:
    from flow_helpers import free_port

    uri = f"http://127.0.0.1:{free_port()}"
    data = json.loads(json.dumps(BASE))
    data["models"][0]["hparams"]["dropout"] = 0.1  # a new configuration that would have to train
    state = pipeline_flow(config=write_config(ws["base"], "unreach", data), root=ws["root"], tracking_uri=uri,
                          return_state=True)
    assert state.is_failed()
    with pytest.raises(Exception, match=f"{uri}.*unreachable"):
        state.result()
    summary = json.loads(last_run_path(ws["root"]).read_text())
    assert summary["train"] == []  # nothing trained
