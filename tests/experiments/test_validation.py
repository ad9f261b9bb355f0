"""Strict, early validation: every case exits 2 with one ``error:`` line naming the field and the
valid names, before any work (no Prefect start, no training). And the identity rules: the
feature preset name and the device never enter a digest."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from ser_pipeline.cli import main
from ser_pipeline.experiments.config import ExperimentConfig, experiment_digest, resolve, resolve_feature_spec
from ser_pipeline.experiments.runner import experiment_id
from ser_pipeline.features import feature_label, feature_spec

BASE = {"name": "t", "corpora": [{"name": "demo", "adapter": "demo"}], "epochs": 1,
        "models": [{"name": "cnn", "hparams": {"channels": [8, 16]}}]}


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


@pytest.fixture
def ser(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):
    """Run the ``ser`` entry point in process (exit code, stdout, stderr)."""

    def call(*args: str, root: Path) -> Result:
        monkeypatch.setenv("SER_ROOT", str(root))
        monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root}/mlflow.db")
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_:
            main(list(args))
        out = capsys.readouterr()
        return Result(int(exit_.value.code or 0), out.out, out.err)

    return call


def one_error(result: Result) -> str:
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    # `ser train` says what it starts within a second (one progress line), then the one error line
    progress = [ln for ln in lines[:-1] if ln.startswith("train ") and "resolving the recipe" in ln]
    assert lines[-1].startswith("error: ") and len(lines) == 1 + len(progress) <= 2, result.stderr
    assert "Traceback" not in result.stderr
    return lines[-1]


def write(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(yaml.safe_dump(BASE))
    for key, value in changes.items():
        if key == "model":
            data["models"][0].update(value)
        else:
            data[key] = value
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


CONFIG_CASES = [
    ({"model": {"hparams": {"chanels": [8]}}}, ["models[cnn].hparams", "'chanels'", "channels, dropout"]),
    ({"model": {"name": "cnnn"}}, ["unknown model 'cnnn'", "cnn_lstm"]),
    ({"model": {"options": {"max_fold": 1}}}, ["models[cnn].options", "'max_fold'", "max_folds"]),
    ({"model": {"options": {"view": {"frams": 10}}}}, ["models[cnn].view", "'frams'", "frames"]),
    ({"model": {"options": {"train": {"patiense": 3}}}}, ["models[cnn].train", "'patiense'", "patience"]),
    ({"model": {"options": {"train": {"lr": "abc"}}}}, ["models[cnn].train.lr='abc'", "float"]),
    ({"model": {"options": {"stage2": {"recipe": {}}}}}, ["models[cnn].stage2", "no stage 2"]),
    ({"model": {"options": {"spec_augment": {"cutuot": {}}}}}, ["models[cnn].spec_augment", "'cutuot'", "cutout"]),
    ({"features": {"preset": "logmel64", "overrides": {"n_mel": 40}}}, ["features.overrides", "'n_mel'", "n_mels"]),
    ({"features": {"preset": "logmel99"}}, ["features.preset='logmel99'", "logmel60"]),
    ({"augment": "sped=1.1"}, ["sped"]),
    ({"device": "gpu"}, ["device='gpu'", "cuda:N"]),
    ({"protocol_options": {"kk": 3}, "protocol": "speaker_kfold"}, ["protocol_options", "'kk'", "valid: k"]),
    ({"corpora": [{"name": "demo", "adapter": "demo", "sed": 1}]}, ["corpora[demo]", "'sed'", "seed"]),
]


@pytest.mark.parametrize(("changes", "expected"), CONFIG_CASES, ids=[str(c[1][0]) for c in CONFIG_CASES])
def test_bad_config_exits_2_naming_the_field_before_prefect(ser, tmp_path: Path, changes, expected) -> None:
    for args in (["run", str(write(tmp_path, **changes))], ["run", str(write(tmp_path, **changes)), "--check"]):
        line = one_error(ser(*args, root=tmp_path))
        for text in expected:
            assert text in line, line
    assert not (tmp_path / "prefect").exists() and not (tmp_path / "runs").exists()  # nothing started


def test_check_prints_the_plan_and_starts_nothing(ser, tmp_path: Path) -> None:
    result = ser("run", str(write(tmp_path)), "--check", "--json", root=tmp_path)
    assert result.returncode == 0, result.stderr
    plan = yaml.safe_load(result.stdout)["plan"]
    assert [(r["stage"], r["status"]) for r in plan] == [("ingest", "run"), ("featurize", "run"), ("train", "run")]
    assert plan[1]["item"] == "demo logmel64"
    assert not (tmp_path / "prefect").exists() and not (tmp_path / "experiments").exists()


SET_CASES = [
    (["--set", "train.lr=abc"], ["train.lr='abc'", "expected float"]),
    (["--set", "lr=abc"], ["unknown field 'lr'", "train"]),
    (["--set", "hparams.chanels=[8]"], ["hparams", "'chanels'", "channels, dropout"]),
    (["--set", "train.patiense=3"], ["train", "'patiense'", "patience"]),
    (["--set", "view.frams=10"], ["view", "'frams'", "frames"]),
    (["--epochs", "0"], ["--epochs"]),
    (["--device", "gpu"], ["device='gpu'"]),
]


@pytest.mark.parametrize(("args", "expected"), SET_CASES, ids=[" ".join(c[0]) for c in SET_CASES])
def test_bad_train_flags_exit_2_naming_the_field(ser, tmp_path: Path, args, expected) -> None:
    result = ser("train", "cnn", "demo", *args, root=tmp_path)
    if args[0] == "--epochs":  # typer's own range check (usage error, exit 2)
        assert result.returncode == 2 and "--epochs" in result.stderr and "Traceback" not in result.stderr
        return
    line = one_error(result)
    for text in expected:
        assert text in line, line


def test_preset_name_is_a_label_not_identity() -> None:
    a, b = feature_spec("logmel64", n_mels=60), feature_spec("logmel60")
    assert a.digest() == b.digest() and a.preset != b.preset
    assert feature_spec("logmel64", n_mels=48).digest() != feature_spec("logmel64").digest()
    assert feature_label(feature_spec("logmel64", n_mels=48)) == "logmel64 n_mels=48"
    assert feature_label(feature_spec("logmel60")) == "logmel60"
    assert resolve_feature_spec("alexnet_sru", "auto").digest() == feature_spec("logmel60").digest()


def test_device_is_not_part_of_the_experiment_identity() -> None:
    assert "device" not in ExperimentConfig.__dataclass_fields__
    config = ExperimentConfig(model="cnn", corpus="demo", epochs=2)
    same = ExperimentConfig(model="cnn", corpus="demo", features="logmel60", feature_overrides={"n_mels": 64}, epochs=2)
    r1, r2 = resolve(config), resolve(same)
    assert experiment_digest(config, r1) == experiment_digest(same, r2)  # equal arrays, equal identity
    assert experiment_id(config, r1, "m" * 16) == experiment_id(same, r2, "m" * 16)
    other = ExperimentConfig(model="cnn", corpus="demo", epochs=3)
    assert experiment_digest(other, resolve(other)) != experiment_digest(config, r1)


def test_top_level_epochs_and_train_lr_stay_in_stage1() -> None:
    config = ExperimentConfig(model="alexnet_sru", corpus="demo", epochs=4, train={"lr": 0.5},
                              stage2={"recipe": {"epochs": 8, "lr": 0.01}})
    plan = resolve(config).plan
    assert plan.train.epochs == 4 and plan.train.lr == 0.5
    assert plan.stage2_train.epochs == 8 and plan.stage2_train.lr == 0.01


def test_a_changed_default_recipe_is_a_new_experiment(monkeypatch) -> None:
    """The id covers the resolved recipe, not only the config as typed: changing a registered
    default (here the cnn's cpu epochs) gives a new id, so a stale cached result is never reused."""
    from ser_pipeline.models import MODELS, load_all

    load_all()
    config = ExperimentConfig(model="cnn", corpus="demo", preset="cpu")
    before = experiment_digest(config, resolve(config))
    assert experiment_digest(config, resolve(config)) == before  # stable
    entry = MODELS.get("cnn")
    monkeypatch.setitem(entry.cpu, "train", {**entry.cpu.get("train", {}), "epochs": 3})
    assert resolve(config).plan.train.epochs == 3
    assert experiment_digest(config, resolve(config)) != before


def test_a_revised_view_kind_is_a_new_experiment(monkeypatch) -> None:
    """A view kind whose behaviour changed (``VIEW_REVISIONS``) gives its experiments new ids; the
    other kinds keep theirs."""
    from ser_pipeline.dataset import views

    windows = ExperimentConfig(model="dcnn_blstm_att", corpus="demo")
    fixed = ExperimentConfig(model="cnn", corpus="demo")
    before = {c.model: experiment_digest(c, resolve(c)) for c in (windows, fixed)}
    monkeypatch.setitem(views.VIEW_REVISIONS, "windows", views.VIEW_REVISIONS["windows"] + 1)
    after = {c.model: experiment_digest(c, resolve(c)) for c in (windows, fixed)}
    assert after["dcnn_blstm_att"] != before["dcnn_blstm_att"] and after["cnn"] == before["cnn"]
