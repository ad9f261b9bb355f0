"""The pipeline stage functions under the flows (no Prefect): stage records, input keys, digests."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from flows import env
from ser_pipeline.errors import ConfigError, TrainingError
from ser_pipeline.pipeline import stages
from ser_pipeline.pipeline.config import PipelineConfig, experiment_dicts, plan_experiment, plan_experiments
from ser_pipeline.pipeline.records import is_done, read_record, record_path, write_record


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
    write_record(tmp_path, "featurize", "k1", {"outputs": [str(out)], "value": 1})
    assert read_record(tmp_path, "featurize", "k1")["value"] == 1
    assert is_done(tmp_path, "featurize", "k1")
    out.unlink()
    assert not is_done(tmp_path, "featurize", "k1")  # outputs gone: not done
    record_path(tmp_path, "featurize", "k2").write_text('{"outputs": [')  # torn write
    assert read_record(tmp_path, "featurize", "k2") is None
    assert not is_done(tmp_path, "featurize", "k2")
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


def _keys(cfg: PipelineConfig) -> tuple[dict, object]:
    planned = plan_experiments(cfg)[0]
    return stages.feature_settings([planned], "c")[0], planned


def test_digests_follow_what_changed() -> None:
    base_f, base = _keys(config())
    feat_f, feat = _keys(config(features={"preset": "logmel64", "overrides": {"n_mels": 40}}))
    model_f, model = _keys(config(models=[{"name": "cnn", "hparams": {"channels": [4, 4, 8, 16]}}]))
    label_f, label = _keys(config(features={"preset": "logmel60", "overrides": {"n_mels": 32}}))
    m = "manifest-digest"
    assert stages.featurize_key(m, model_f) == stages.featurize_key(m, base_f)  # model change: featurize cached
    assert stages.train_key(m, model) != stages.train_key(m, base)  # ... train re-runs
    assert stages.featurize_key(m, feat_f) != stages.featurize_key(m, base_f)  # feature change: both re-run
    assert stages.train_key(m, feat) != stages.train_key(m, base)
    assert stages.train_key("other-manifest", base) != stages.train_key(m, base)
    # another preset name with the same parameters: the same arrays, the same keys
    assert stages.featurize_key(m, label_f) == stages.featurize_key(m, base_f)
    assert stages.train_key(m, label) == stages.train_key(m, base)
    assert label_f["label"] == "logmel60 n_mels=32" and base_f["label"] == "logmel64 n_mels=32"


def test_device_does_not_enter_the_train_key() -> None:
    _, cpu = _keys(config(device="cpu"))
    _, gpu = _keys(config(device="cuda:1"))
    assert stages.train_key("m", cpu) == stages.train_key("m", gpu)


def test_auto_preset_resolves_to_the_models_own() -> None:
    planned = plan_experiments(config(features={"preset": "auto"}, models=["cnn", {"name": "att_res"}]))
    settings = stages.feature_settings(planned, "c")
    from ser_pipeline.models import get_model

    assert [s["label"] for s in settings] == [get_model("cnn").feature_preset, get_model("att_res").feature_preset]


def test_unknown_model_option_is_named() -> None:
    exp = experiment_dicts(config(models=[{"name": "cnn", "options": {"view": {"bogus": 1}}}]), "c")[0]
    with pytest.raises(ConfigError, match=r"models\[cnn\]\.view: unknown field 'bogus'; valid: .*frames"):
        plan_experiment(exp)
    with pytest.raises(ConfigError, match=r"models\[cnn\]\.options: unknown field 'bogus'"):
        config(models=[{"name": "cnn", "options": {"bogus": 1}}])


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
