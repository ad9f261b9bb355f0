"""The YAML experiment config: parsing, validation errors, expansion into experiments, stage plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from ser_pipeline.errors import ConfigError
from ser_pipeline.pipeline.config import (
    PipelineConfig,
    experiment_dicts,
    experiment_name,
    load_config,
    model_key,
    stage_plan,
)
from ser_pipeline.tracking.uri import default_tracking_uri

CONFIGS = Path(__file__).resolve().parents[2] / "configs"

MINIMAL = """
name: t
corpora:
  - {name: small, adapter: demo, options: {n_speakers: 2}}
  - {name: casia, adapter: casia, path: /data/casia}
features: {preset: logmel64, overrides: {n_mels: 40}}
augment: "speed=0.9,1.1"
protocol: loso
seeds: [0, 1]
epochs: 3
models:
  - cnn
  - {name: att_res, hparams: {channels: [8, 16, 32]}, epochs: 2, options: {view: {frames: 64}}}
  - {name: att_res, hparams: {channels: [4, 8, 16]}}
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "exp.yaml"
    path.write_text(text)
    return path


def test_load_minimal_config(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert [c.name for c in cfg.corpora] == ["small", "casia"]
    assert cfg.corpora[0].options == {"n_speakers": 2}
    assert cfg.seeds == (0, 1)
    assert [m.name for m in cfg.models] == ["cnn", "att_res", "att_res"]
    assert cfg.features == {"preset": "logmel64", "overrides": {"n_mels": 40}}


def test_experiment_dicts_cross_models_and_seeds(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    exps = experiment_dicts(cfg, "small")
    assert len(exps) == 3 * 2
    cnn = [e for e in exps if e["model"] == "cnn"]
    assert [e["seed"] for e in cnn] == [0, 1]
    assert cnn[0]["epochs"] == 3 and cnn[0]["features"] == "logmel64"
    assert cnn[0]["feature_overrides"] == {"n_mels": 40}
    assert cnn[0]["_label"] == "cnn"  # unique model name: plain label
    att = [e for e in exps if e["model"] == "att_res"]
    assert {e["_label"] for e in att} == {model_key(m) for m in cfg.models[1:]}
    assert len({e["_label"] for e in att}) == 2  # two configurations of one model stay distinct
    first = next(e for e in att if e["hparams"] == {"channels": [8, 16, 32]})
    assert first["epochs"] == 2 and first["view"] == {"frames": 64}


def test_auto_preset_defers_to_the_model(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL.replace("preset: logmel64", "preset: auto")))
    assert all(e["features"] == "" for e in experiment_dicts(cfg, "small"))


def test_digest_changes_with_any_parameter(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, MINIMAL))
    b = load_config(write(tmp_path, MINIMAL.replace("n_mels: 40", "n_mels: 48")))
    assert a.digest() != b.digest()
    assert a.digest() == load_config(write(tmp_path, MINIMAL)).digest()


@pytest.mark.parametrize(
    ("old", "new", "field"),
    [
        ("epochs: 3", "epochs: 0", "epochs"),
        ("seeds: [0, 1]", "seeds: []", "seeds"),
        ("{name: casia, adapter: casia, path: /data/casia}", "{name: casia, adapter: casia}", "corpora[casia].path"),
        ("features: {preset: logmel64, overrides: {n_mels: 40}}", "features: {kind: logmel}", "features"),
        ("  - cnn\n", "  - cnn\n  - cnn\n", "models"),
        ("name: t\n", "name: t\nbogus: 1\n", "bogus"),
    ],
)
def test_invalid_config_names_the_field(tmp_path: Path, old: str, new: str, field: str) -> None:
    assert old in MINIMAL
    path = write(tmp_path, MINIMAL.replace(old, new))
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert field in str(info.value)
    assert str(path) in str(info.value)


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "nope.yaml")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(write(tmp_path, "name: [unclosed"))
    with pytest.raises(ConfigError, match="at least one corpus"):
        load_config(write(tmp_path, "name: x\nmodels: [cnn]\n"))


def test_stage_plan() -> None:
    assert stage_plan() == ("ingest", "featurize", "train")
    assert stage_plan(stage="featurize") == ("featurize",)
    assert stage_plan(start="featurize") == ("featurize", "train")
    with pytest.raises(ConfigError, match="--stage='serve'"):
        stage_plan(stage="serve")
    with pytest.raises(ConfigError, match="not both"):
        stage_plan(stage="train", start="ingest")


def test_experiment_name_per_corpus_and_protocol(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, MINIMAL))
    assert experiment_name(cfg, "casia") == "casia-loso"
    assert experiment_name(cfg.replace(experiment="mine"), "casia") == "mine"


def test_default_tracking_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert default_tracking_uri(tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlruns/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert default_tracking_uri(tmp_path) == "http://127.0.0.1:5999"


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_parse(path: Path) -> None:
    cfg = load_config(path)
    assert isinstance(cfg, PipelineConfig)
    assert experiment_dicts(cfg, cfg.corpora[0].name)


def test_demo_config_trains_cnn_and_two_seed_architectures_under_loso() -> None:
    cfg = load_config(CONFIGS / "demo.yaml")
    names = {m.name for m in cfg.models}
    assert "cnn" in names
    assert len(names & {"att_res", "alexnet_sru", "dcnn_blstm_att", "rescnn", "res_trans"}) >= 2
    assert cfg.protocol == "loso"
    assert cfg.corpora[0].adapter == "demo"
