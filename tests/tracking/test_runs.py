"""MLflow tracking of experiment directories, on a real local SQLite store under tmp."""

from __future__ import annotations

import json
import socket
import types
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from ser_pipeline.errors import TrackingError
from ser_pipeline.experiments.record import Digests, ExperimentRecord
from ser_pipeline.tracking import compare as _compare
from ser_pipeline.tracking import pyfunc as _pyfunc
from ser_pipeline.tracking import runs as _runs
from ser_pipeline.tracking import uri as _uri

tracking = types.SimpleNamespace(**{**vars(_uri), **vars(_pyfunc), **vars(_runs), **vars(_compare)})

CLASSES = ["anger", "sadness"]
FOLD_UA = {"spk1": 0.50, "spk2": 0.75, "spk3": 0.60}


def make_experiment_dir(folder: Path, *, fold_ua: dict[str, float], digest: str, model_dir: bool = False,
                        example_wav: Path | None = None) -> Path:
    """An experiment directory in the engine's format (config, metrics, history, predictions, confusions)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    folds = []
    for i, (fold, ua) in enumerate(fold_ua.items()):
        folds.append({"fold": fold, "wa": ua + 0.01, "ua": ua, "macro_f1": ua - 0.02,
                      "per_class_recall": {"anger": ua + 0.1, "sadness": ua - 0.1}, "best_epoch": i})
        pd.DataFrame([[3, 1], [1, 3]], index=CLASSES, columns=CLASSES).to_csv(folder / f"confusion_{fold}.csv")
        fig = plt.figure(figsize=(1, 1))
        fig.savefig(folder / f"confusion_{fold}.png")
        plt.close(fig)
    values = list(fold_ua.values())
    metrics = {
        "folds": folds, "pooled": {"wa": 0.6, "ua": float(np.mean(values)), "macro_f1": 0.55,
                                   "per_class_recall": [0.7, 0.5]},
        "mean": {"wa": float(np.mean(values)) + 0.01, "ua": float(np.mean(values)), "macro_f1": 0.5},
        "std": {"ua": float(np.std(values, ddof=1))}, "speaker_dependent": False, "protocol": "loso",
        "classes": CLASSES, "seconds": 12.0,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    config = {"model": "cnn", "corpus": "demo", "protocol": "loso", "seed": 0,
              "hparams": {"channels": [4, 4, 8, 8]}, "protocol_options": {}}
    digests = {"manifest": "m" * 16, "features": "f" * 16, "augment": "a" * 16, "config": digest}
    (folder / "config.json").write_text(json.dumps({"experiment_id": folder.name, "config": config, "digests": digests}))
    history = {fold: [{"epoch": e, "train_loss": 1.0 - 0.1 * e, "val_loss": 1.1 - 0.1 * e, "val_ua": 0.4 + 0.05 * e}
                      for e in range(3)] for fold in fold_ua}
    (folder / "history.json").write_text(json.dumps(history))
    pd.DataFrame({"utterance_id": ["u1"], "fold": ["spk1"], "true": ["anger"], "pred": ["anger"],
                  "p_anger": [0.9], "p_sadness": [0.1]}).to_csv(folder / "predictions.csv", index=False)
    if model_dir:
        make_model_dir(folder / "model")
    fig = plt.figure(figsize=(1, 1))
    fig.savefig(folder / "curves.png")
    plt.close(fig)
    pd.DataFrame([[6, 2], [2, 6]], index=CLASSES, columns=CLASSES).to_csv(folder / "confusion_pooled.csv")
    fig = plt.figure(figsize=(1, 1))
    fig.savefig(folder / "confusion_pooled.png")
    plt.close(fig)
    artifacts = {f"confusion_{f}_{e}": f"confusion_{f}.{e}" for f in fold_ua for e in ("csv", "png")}
    artifacts.update({"confusion_pooled_csv": "confusion_pooled.csv", "confusion_pooled_png": "confusion_pooled.png",
                      "predictions": "predictions.csv", "curves": "curves.png", "history": "history.json",
                      "config": "config.json", "metrics": "metrics.json"})
    ExperimentRecord(experiment_id=folder.name, folder=folder, model="cnn", corpus="demo", seed=0, protocol="loso",
                     speaker_dependent=False, classes=tuple(CLASSES), digests=Digests(**digests), config=config,
                     feature_label="logmel64 n_mels=32", metrics=metrics, artifacts=artifacts).write()
    return folder


def make_model_dir(folder: Path) -> None:
    """A real (untrained, seeded) cnn model folder in the engine's format: model.json + weights.pt."""
    import torch

    from ser_pipeline.dataset.views import ViewSpec
    from ser_pipeline.features import feature_spec
    from ser_pipeline.models import build_model

    torch.manual_seed(0)
    hparams = {"channels": [4, 4, 8, 8], "dropout": 0.0}
    model = build_model("cnn", n_classes=len(CLASSES), in_channels=3, **hparams)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "weights.pt")
    meta = {"model": "cnn", "trainer": "standard", "classes": CLASSES, "n_classes": len(CLASSES),
            "hparams": hparams, "view": ViewSpec(kind="fixed", frames=40, channels=3).to_dict(),
            "feature_spec": feature_spec("logmel64", n_mels=32).to_dict(), "stage2_hparams": {}, "in_channels": 3}
    (folder / "model.json").write_text(json.dumps(meta))


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> str:
    base = tmp_path_factory.mktemp("mlstore")
    return f"sqlite:///{base}/mlruns/mlflow.db"


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("manifest") / "demo.parquet"
    pd.DataFrame({"utterance_id": ["u1", "u2"], "speaker": ["s1", "s2"], "emotion": CLASSES,
                  "duration_s": [1.0, 1.2], "path": ["/a.wav", "/b.wav"]}).to_parquet(path)
    return path


@pytest.fixture(scope="module")
def logged(tmp_path_factory: pytest.TempPathFactory, store: str, manifest: Path) -> dict:
    exp = make_experiment_dir(tmp_path_factory.mktemp("exp") / "e1", fold_ua=FOLD_UA, digest="cfg1")
    dataset = tmp_path_factory.mktemp("explore")
    (dataset / "explore.json").write_text("{}")
    return {**tracking.log_experiment(exp, experiment="demo-loso", uri=store, manifest_path=manifest,
                                      dataset_dir=dataset), "folder": str(exp)}


def test_parent_run_params_tags_metrics(logged: dict, store: str) -> None:
    assert logged["status"] == "logged"
    run = MlflowClient(store).get_run(logged["run_id"])
    assert run.info.run_name == "cnn · channels=[4,4,8,8] · cfg1"
    assert run.data.params["hparams.channels"] == "[4, 4, 8, 8]"
    assert run.data.params["protocol"] == "loso"
    assert "None" not in run.data.params.values() and "experiment_id" not in run.data.params
    record = ExperimentRecord.read(Path(run.data.tags["ser.digest.config"] and logged["folder"]))
    start, end, _ = tracking.training_times(record)
    assert (run.info.start_time, run.info.end_time) == (start, end)  # the training's times, not logging's
    assert end - start == 12_000  # metrics.json "seconds"
    experiment = MlflowClient(store).get_experiment(run.info.experiment_id)
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"  # opens on the training runs
    tags = run.data.tags
    assert tags["ser.digest.manifest"] == "m" * 16 and tags["ser.digest.config"] == "cfg1"
    assert tags["ser.protocol"] == "loso" and tags["ser.speaker_dependent"] == "false"
    assert tags["ser.git_commit"] and tags["ser.version"]
    m = run.data.metrics
    assert m["mean_ua"] == pytest.approx(np.mean(list(FOLD_UA.values())))
    assert m["std_ua"] == pytest.approx(np.std(list(FOLD_UA.values()), ddof=1))
    assert m["pooled_recall_anger"] == pytest.approx(0.7)
    assert m["n_folds"] == 3


def test_nested_fold_runs_with_epoch_history(logged: dict, store: str) -> None:
    client = MlflowClient(store)
    parent = client.get_run(logged["run_id"])
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{logged['run_id']}'")
    assert sorted(c.info.run_name for c in children) == [f"{logged['run_name']} / spk{i}" for i in (1, 2, 3)]
    assert all(c.info.start_time >= parent.info.start_time and c.info.end_time <= parent.info.end_time
               for c in children)
    assert all(set(c.data.params) == {"fold"} for c in children)  # params once, on the parent
    spk2 = next(c for c in children if c.info.run_name.endswith("spk2"))
    assert spk2.data.metrics["ua"] == pytest.approx(0.75)
    assert spk2.data.metrics["recall_sadness"] == pytest.approx(0.65)
    history = client.get_metric_history(spk2.info.run_id, "val_ua")
    assert [(h.step, round(h.value, 3)) for h in history] == [(0, 0.4), (1, 0.45), (2, 0.5)]
    assert {a.path for a in client.list_artifacts(spk2.info.run_id, "confusion")} == {
        "confusion/confusion_spk2.csv", "confusion/confusion_spk2.png"}


def test_parent_artifacts_and_dataset_lineage(logged: dict, store: str) -> None:
    client = MlflowClient(store)
    paths = {a.path for a in client.list_artifacts(logged["run_id"])}
    assert {"predictions.csv", "config.json", "metrics.json", "curves.png", "dataset"} <= paths
    assert [a.path for a in MlflowClient(store).list_artifacts(logged["run_id"], "dataset")] == ["dataset/explore.json"]
    inputs = client.get_run(logged["run_id"]).inputs.dataset_inputs
    assert len(inputs) == 1
    assert inputs[0].dataset.name == "demo"
    assert inputs[0].dataset.digest == "m" * 16
    assert "demo.parquet" in inputs[0].dataset.source


def test_idempotent_unless_forced(logged: dict, store: str, manifest: Path, tmp_path: Path) -> None:
    exp = make_experiment_dir(tmp_path / "again", fold_ua=FOLD_UA, digest="cfg1")
    again = tracking.log_experiment(exp, experiment="demo-loso", uri=store)
    assert again["status"] == "existing" and again["run_id"] == logged["run_id"]
    forced = tracking.log_experiment(exp, experiment="demo-loso", uri=store, force=True)
    assert forced["status"] == "logged" and forced["run_id"] != logged["run_id"]


def test_compare_and_paired_tests(logged: dict, store: str, tmp_path: Path) -> None:
    other = {"spk1": 0.55, "spk2": 0.70, "spk3": 0.72}
    exp = make_experiment_dir(tmp_path / "e2", fold_ua=other, digest="cfg2")
    record = json.loads((exp / "record.json").read_text())
    record["config"]["seed"] = record["seed"] = 7
    (exp / "record.json").write_text(json.dumps(record))
    tracking.log_experiment(exp, experiment="demo-loso", uri=store)
    rows = tracking.compare_runs("demo-loso", uri=store)
    by_name = {r["run"]: r for r in rows}
    s7 = "cnn · seed=7 · channels=[4,4,8,8] · cfg2"
    assert by_name[s7]["differs"] == "seed=7" and by_name[logged["run_name"]]["differs"] == "seed=0"
    assert by_name[s7]["ua"] == pytest.approx(np.mean(list(other.values())))
    assert by_name[s7]["folds"] == 3 and by_name[s7]["protocol"] == "loso"
    assert by_name[s7]["speaker_dependent"] is False
    assert rows[0]["ua"] >= rows[-1]["ua"]
    a = tracking.fold_scores("demo-loso", logged["run_id"], uri=store)  # its name is shared by the forced re-log
    b = tracking.fold_scores("demo-loso", by_name[s7]["run_id"], uri=store)
    assert a == pytest.approx(FOLD_UA) and b == pytest.approx(other)
    result = tracking.paired_test(a, b)
    folds = sorted(FOLD_UA)
    xa, xb = [FOLD_UA[f] for f in folds], [other[f] for f in folds]
    assert result["t_test_p"] == pytest.approx(stats.ttest_rel(xa, xb).pvalue)
    assert result["wilcoxon_p"] == pytest.approx(stats.wilcoxon(xa, xb).pvalue)
    with pytest.raises(TrackingError, match="not found"):
        tracking.fold_scores("demo-loso", "nope", uri=store)


def test_model_registered_with_champion_and_predicts_from_audio(store: str, tmp_path: Path, write_wav) -> None:
    wav = write_wav(tmp_path / "x.wav", seconds=0.6)
    worse = make_experiment_dir(tmp_path / "m1", fold_ua={"a": 0.3, "b": 0.4}, digest="mod1", model_dir=True)
    better = make_experiment_dir(tmp_path / "m2", fold_ua={"a": 0.8, "b": 0.9}, digest="mod2", model_dir=True)
    first = tracking.log_experiment(better, experiment="models-loso", uri=store, example_audio=str(wav))
    second = tracking.log_experiment(worse, experiment="models-loso", uri=store, example_audio=str(wav))
    assert first["registered"] == "ser-cnn-demo/1" and second["registered"] == "ser-cnn-demo/2"
    client = MlflowClient(store, registry_uri=store)
    champion = client.get_model_version_by_alias("ser-cnn-demo", "champion")
    assert str(champion.version) == "1" and champion.run_id == first["run_id"]
    model = tracking.load_pyfunc("models:/ser-cnn-demo@champion", uri=store)
    out = model.predict(pd.DataFrame({"path": [str(wav), str(tmp_path / "missing.wav")]}))
    assert out.loc[0, "emotion"] in CLASSES and out.loc[0, "error"] == ""
    assert out.loc[0, ["p_anger", "p_sadness"]].sum() == pytest.approx(1.0, abs=1e-5)
    assert "path does not exist" in out.loc[1, "error"]
    # logged from code: the model holds the code path, no pickled python_model
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri="models:/ser-cnn-demo/1", dst_path=str(tmp_path / "dl")))
    assert not list(local.rglob("*.pkl")) and "pyfunc_code.py" in (local / "MLmodel").read_text()
    # ser predict resolves @champion to its version, says so, and writes it in predictions.csv
    from typer.testing import CliRunner

    from ser_pipeline.cli import app

    csv = tmp_path / "p.csv"
    result = CliRunner().invoke(app, ["predict", "models:/ser-cnn-demo@champion", str(wav), "--tracking-uri", store,
                                      "--out", str(csv)])
    assert result.exit_code == 0, result.output
    assert "models:/ser-cnn-demo@champion -> ser-cnn-demo/1" in result.stderr
    assert pd.read_csv(csv)["model_version"].tolist() == ["ser-cnn-demo/1"]


def test_unreachable_server_fails_fast_naming_the_uri() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    with pytest.raises(TrackingError, match=f"127.0.0.1:{port}.*unreachable"):
        tracking.check_reachable(uri, timeout=1.0)


def test_incomplete_experiment_dir(tmp_path: Path, store: str) -> None:
    (tmp_path / "metrics.json").write_text("{}")  # no record: the experiment never finished
    with pytest.raises(TrackingError, match=f"{tmp_path}.*record.json is missing"):
        tracking.log_experiment(tmp_path, experiment="x", uri=store)


def test_flatten_and_labels() -> None:
    assert tracking.flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": "1", "a.c": "[1, 2]", "d": "{}"}
    assert tracking.registered_name({"model": "att_res", "corpus": "casia"}) == "ser-att_res-casia"


def test_cli_compare_and_ui(logged: dict, store: str, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from ser_pipeline.cli import app

    other = make_experiment_dir(tmp_path / "cli", fold_ua={"spk1": 0.2, "spk2": 0.3, "spk3": 0.25}, digest="cli")
    tracking.log_experiment(other, experiment="demo-loso", uri=store, label="weak")
    runner = CliRunner()
    weak = MlflowClient(store).search_runs(
        [MlflowClient(store).get_experiment_by_name("demo-loso").experiment_id], "tags.`ser.label` = 'weak' and tags.`ser.kind` = 'parent'")[0]
    # a run name and the 12-character short id the CLI prints
    result = runner.invoke(app, ["compare", "demo-loso", "--tracking-uri", store, "--json",
                                 "--test", weak.info.run_name, logged["run_id"][:12]])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    rows = payload["experiments"]["demo-loso"]
    assert rows[-1]["run"] == weak.info.run_name == "cnn · channels=[4,4,8,8] · cli"
    assert payload["test"]["folds"] == sorted(FOLD_UA)
    xb, xa = [FOLD_UA[f] for f in sorted(FOLD_UA)], [0.2, 0.3, 0.25]
    assert payload["test"]["t_test_p"] == pytest.approx(stats.ttest_rel(xa, xb).pvalue)
    text = runner.invoke(app, ["compare", "demo-loso", "--tracking-uri", store])
    assert weak.info.run_name in text.stdout and "loso" in text.stdout and weak.info.run_id[:12] in text.stdout
    ui = runner.invoke(app, ["ui", "--tracking-uri", store])
    assert ui.exit_code == 0
    assert f"--backend-store-uri {store}" in ui.stdout and "--host 127.0.0.1" in ui.stdout
    assert "--port 5000" in ui.stdout and "--workers 1" in ui.stdout
    with socket.socket() as busy:  # a second launch on a taken port: one clear line, exit 2
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        from ser_pipeline.cli import main

        with pytest.raises(SystemExit) as exit_:
            main(["ui", "--launch", "--port", str(port), "--tracking-uri", store])
        assert exit_.value.code == 2


def test_run_names_say_what_differs() -> None:
    from ser_pipeline.tracking.names import run_name

    base = {"model": "cnn", "corpus": "demo", "seed": 0, "hparams": {}, "feature_overrides": {"n_mels": 48},
            "epochs": None, "preset": "default"}
    a = run_name(base, "aaaaaa11")
    b = run_name({**base, "hparams": {"dropout": 0.4}}, "bbbbbb22")
    assert a == "cnn · n_mels=48 · aaaaaa"
    assert b == "cnn · n_mels=48 · dropout=0.4 · bbbbbb" and a != b
    assert run_name({"model": "svm", "corpus": "demo", "seed": 2}, "c" * 8) == "svm · seed=2 · cccccc"
    # every ExperimentConfig field at its default stays out of the name; a changed one is named
    defaults = {"validation": "rotate", "refit": True, "final_model": "best_fold"}
    assert run_name({**base, **defaults}, "aaaaaa11") == a
    assert run_name({**base, **defaults, "final_model": "all_speakers"}, "dddddd44") == \
        "cnn · n_mels=48 · final_model=all_speakers · dddddd"


def test_params_are_resolved_values_only() -> None:
    from ser_pipeline.tracking.names import run_params

    config = {"model": "cnn", "corpus": "demo", "seed": 0, "epochs": 3, "train": {"lr": None}, "max_folds": None}
    resolved = {"model": {"name": "cnn", "trainer": "standard", "defaults": {"x": 1}}, "protocol": "loso",
                "feature_spec": {"n_mels": 64, "fmax": None}, "augment": "", "hparams": {"channels": [8, 16]},
                "view": {"frames": 100}, "train": {"lr": 0.001, "epochs": 3}, "spec_augment": None,
                "stage2_hparams": {}, "stage2_train": None, "speaker_train": None}
    params = run_params(config, resolved, protocol="loso", features_label="logmel64")
    assert params["train.lr"] == "0.001" and params["train.epochs"] == "3" and params["trainer"] == "standard"
    assert "lr" not in params and "epochs" not in params  # requested values are not logged beside resolved ones
    assert "None" not in params.values() and not any("defaults" in k for k in params)
    assert params["hparams.channels"] == "[8, 16]" and params["features.n_mels"] == "64"


def test_compare_refuses_an_ambiguous_name(store: str, tmp_path: Path) -> None:
    for i in range(2):  # two configurations that share a run name (as older runs named cnn-s0 did)
        exp = make_experiment_dir(tmp_path / f"amb{i}", fold_ua=FOLD_UA, digest=f"amb{i}")
        out = tracking.log_experiment(exp, experiment="amb", uri=store)
        MlflowClient(store).set_tag(out["run_id"], "mlflow.runName", "cnn-s0")
    with pytest.raises(TrackingError, match=r"'cnn-s0' is ambiguous.*2 runs match: [0-9a-f]{12} \("):
        tracking.fold_scores("amb", "cnn-s0", uri=store)
    rows = tracking.compare_runs("amb", uri=store)
    assert len(rows) == 2
