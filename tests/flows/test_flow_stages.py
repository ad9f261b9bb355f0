"""The stage functions under the flows (no Prefect): stage records, input keys, digests, memo."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from flows import env, stages
from ser_pipeline.errors import ConfigError, TrainingError
from ser_pipeline.pipeline.config import PipelineConfig, experiment_dicts


def csv_corpus(folder: Path, write_wav: Callable[..., Path], *, n: int = 2) -> Path:
    lines = ["path,emotion,speaker"]
    for s, speaker in enumerate(("s1", "s2")):
        for e, emotion in enumerate(("anger", "sadness")):
            for i in range(n):
                rel = f"{speaker}_{emotion}_{i}.wav"
                write_wav(folder / rel, seconds=0.3, freq=150 + 40 * e + 10 * s, seed=i)
                lines.append(f"{rel},{emotion},{speaker}")
    (folder / "corpus.csv").write_text("\n".join(lines) + "\n")
    return folder / "corpus.csv"


def config(**changes) -> PipelineConfig:
    data = {"name": "t", "corpora": [{"name": "c", "adapter": "csv", "path": "/x/corpus.csv"}],
            "features": {"preset": "logmel64", "overrides": {"n_mels": 32}}, "epochs": 1,
            "models": [{"name": "cnn", "hparams": {"channels": [4, 4, 8, 8]}}]}
    data.update(changes)
    return PipelineConfig.from_dict(data)


def test_records_are_atomic_and_checked_against_outputs(tmp_path: Path) -> None:
    out = tmp_path / "out.bin"
    out.write_bytes(b"x")
    stages.write_record(tmp_path, "featurize", "k1", {"outputs": [str(out)], "value": 1})
    assert stages.read_record(tmp_path, "featurize", "k1")["value"] == 1
    assert stages.is_done(tmp_path, "featurize", "k1")
    out.unlink()
    assert not stages.is_done(tmp_path, "featurize", "k1")  # outputs gone: not done
    stages.record_path(tmp_path, "featurize", "k2").write_text('{"outputs": [')  # torn write
    assert stages.read_record(tmp_path, "featurize", "k2") is None
    assert not stages.is_done(tmp_path, "featurize", "k2")
    assert not list((tmp_path / "runs" / "featurize").glob("*.tmp*"))


def test_folder_fingerprint_sees_new_and_changed_files(tmp_path: Path, write_wav: Callable[..., Path]) -> None:
    write_wav(tmp_path / "a.wav")
    first = stages.folder_fingerprint(tmp_path)
    assert stages.folder_fingerprint(tmp_path) == first
    write_wav(tmp_path / "b.wav")
    second = stages.folder_fingerprint(tmp_path)
    assert second != first
    os.utime(tmp_path / "a.wav", ns=(1, 1))
    assert stages.folder_fingerprint(tmp_path) != second
    with pytest.raises(ConfigError, match="nope"):
        stages.folder_fingerprint(tmp_path / "nope")


def test_ingest_stage_computes_then_reports_cached(tmp_path: Path, write_wav: Callable[..., Path]) -> None:
    csv = csv_corpus(tmp_path / "corpus", write_wav)
    entry = {"name": "c", "adapter": "csv", "path": str(csv)}
    root = str(tmp_path / "root")
    key = stages.ingest_key(entry)
    first = stages.ingest_stage(entry, root, key=key)
    assert first["status"] == "computed" and first["utterances"] == 8
    assert Path(first["manifest_path"]).is_file()
    again = stages.ingest_stage(entry, root, key=key)
    assert again["status"] == "cached" and again["manifest_digest"] == first["manifest_digest"]
    assert stages.ingest_stage(entry, root, key=key, force=True)["status"] == "computed"
    write_wav(tmp_path / "corpus" / "extra.wav")  # a new file in the folder: new key
    assert stages.ingest_key(entry) != key


def test_digests_follow_what_changed(tmp_path: Path) -> None:
    root = str(tmp_path)
    base = stages.experiment_digests(experiment_dicts(config(), "c")[0], root)
    feat = stages.experiment_digests(
        experiment_dicts(config(features={"preset": "logmel64", "overrides": {"n_mels": 40}}), "c")[0], root)
    model = stages.experiment_digests(
        experiment_dicts(config(models=[{"name": "cnn", "hparams": {"channels": [4, 4, 8, 16]}}]), "c")[0], root)
    assert feat["features"] != base["features"] and feat["config"] != base["config"]
    assert model["features"] == base["features"] and model["augment"] == base["augment"]
    assert model["config"] != base["config"]
    m = "manifest-digest"
    assert stages.featurize_key(m, model) == stages.featurize_key(m, base)  # model change: featurize cached
    assert stages.train_key(m, model) != stages.train_key(m, base)  # ... train re-runs
    assert stages.featurize_key(m, feat) != stages.featurize_key(m, base)  # feature change: both re-run
    assert stages.train_key(m, feat) != stages.train_key(m, base)
    assert stages.train_key("other-manifest", base) != stages.train_key(m, base)


def test_auto_preset_resolves_to_the_models_own(tmp_path: Path) -> None:
    exps = experiment_dicts(config(features={"preset": "auto"},
                                   models=["cnn", {"name": "att_res"}]), "c")
    settings = stages.feature_settings(exps, str(tmp_path))
    from ser_pipeline.models import get_model

    assert [s["preset"] for s in settings] == [get_model("cnn").feature_preset, get_model("att_res").feature_preset]


def test_memo_computes_once_per_code_version(tmp_path: Path) -> None:
    calls = []

    def compute() -> dict:
        calls.append(1)
        return {"x": len(calls)}

    stages._MEMO.clear()
    assert stages.memoised(tmp_path, {"a": 1}, compute) == {"x": 1}
    assert stages.memoised(tmp_path, {"a": 1}, compute) == {"x": 1}
    stages._MEMO.clear()  # a new process reads the memo from disk
    assert stages.memoised(tmp_path, {"a": 1}, compute) == {"x": 1}
    assert stages.memoised(tmp_path, {"a": 2}, compute) == {"x": 2}
    assert len(calls) == 2
    assert len(stages.code_fingerprint()) == 16


def test_unknown_model_option_is_named() -> None:
    exp = experiment_dicts(config(models=[{"name": "cnn", "options": {"bogus": 1}}]), "c")[0]
    with pytest.raises(ConfigError, match="bogus"):
        stages.to_experiment_config(exp)


def test_metrics_summary_requires_a_finished_experiment(tmp_path: Path) -> None:
    with pytest.raises(TrainingError, match="metrics.json is missing"):
        stages.metrics_summary(tmp_path)


def test_failure_row_names_the_model() -> None:
    row = stages.failure("att_res", TrainingError("NaN loss at epoch 2"))
    assert row == {"stage": "train", "label": "att_res", "status": "failed", "error": "error: NaN loss at epoch 2"}


def test_prefect_env_defaults(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = env.prefect_env(tmp_path)
    assert values["PREFECT_HOME"] == str(tmp_path.resolve() / "prefect")
    assert values["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false" and values["DO_NOT_TRACK"] == "1"
    monkeypatch.setenv("PREFECT_HOME", str(tmp_path / "elsewhere"))
    for key in values:
        if key != "PREFECT_HOME":
            monkeypatch.delenv(key, raising=False)
    applied = env.configure(tmp_path)
    assert applied["PREFECT_HOME"] == str(tmp_path / "elsewhere")  # an explicit setting wins
    assert applied["PREFECT_RESULTS_LOCAL_STORAGE_PATH"].startswith(str(tmp_path.resolve()))
