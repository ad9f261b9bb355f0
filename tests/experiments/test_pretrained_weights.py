"""The ImageNet weights file of the AlexNet-based models: found (``hparams.weights`` or
``$SER_ALEXNET_WEIGHTS``), checked and recorded when the experiment is resolved, never re-read
when a trained model is served."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch

from ser_pipeline.errors import ConfigError
from ser_pipeline.experiments.config import ExperimentConfig, Resolved, experiment_digest, resolve
from ser_pipeline.inference.model_folder import load_trained_model, save_model_folder
from ser_pipeline.models import build_model
from ser_pipeline.models.alexnet import WEIGHTS_ENV


def _resolve(model: str = "alexnet", **kw) -> Resolved:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return resolve(ExperimentConfig(model=model, corpus="c", **kw))


@pytest.fixture()
def weights_file(tmp_path: Path) -> Path:
    path = tmp_path / "alexnet-imagenet.pth"
    path.write_bytes(b"resolve never reads it; the builder does")
    return path


def test_the_environment_file_is_recorded_and_keeps_the_fine_tuning_recipe(
        weights_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    without = _resolve()
    assert without.plan.hparams["weights"] is None and without.plan.train.optimizer == "adamw"
    assert any("from-scratch variant" in n for n in without.plan.notes)
    # from scratch, a BatchNorm after each conv (without it the network stays at ln K loss); said in the notes
    assert without.plan.hparams["batch_norm"] is True
    assert any("hparams.batch_norm=True" in n for n in without.plan.notes)
    for model in ("alexnet_sru", "alexnet_sru_cnn_only", "dcnn_blstm_att", "dcnn_blstm_att_no_pretrain"):
        assert _resolve(model).plan.hparams["batch_norm"] is True, model
    assert _resolve(hparams={"batch_norm": False}).plan.hparams["batch_norm"] is False  # the user's setting wins
    monkeypatch.setenv(WEIGHTS_ENV, str(weights_file))
    given = _resolve()
    assert given.plan.hparams["weights"] == str(weights_file.resolve())  # the record names the file
    assert (given.plan.train.optimizer, given.plan.train.lr) == ("sgd", 1e-3)  # the paper's fine-tuning rate
    assert not any("from-scratch" in n for n in given.plan.notes)
    assert given.plan.hparams["batch_norm"] is False  # torchvision's ImageNet AlexNet has no BatchNorm
    config = ExperimentConfig(model="alexnet", corpus="c")
    assert experiment_digest(config, given) != experiment_digest(config, without)
    joint = _resolve("dcnn_blstm_att_no_pretrain")  # frozen AlexNet, the paper's stage-2 recipe
    assert joint.plan.hparams["finetune"] is False and joint.plan.train.optimizer == "nadam"


def test_a_missing_file_is_refused_before_any_fold_naming_where_it_came_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.pth"
    with pytest.raises(ConfigError, match=r"hparams\.weights=.*nope\.pth.*not found"):
        _resolve(hparams={"weights": str(missing)})
    monkeypatch.setenv(WEIGHTS_ENV, str(missing))
    with pytest.raises(ConfigError, match=r"\$SER_ALEXNET_WEIGHTS=.*nope\.pth.*not found"):
        _resolve("dcnn_blstm_att")
    assert _resolve("cnn").plan.hparams.get("weights") is None  # models without ImageNet weights ignore it


def test_the_cpu_presets_from_scratch_alexnet_cannot_take_imagenet_weights(
        weights_file: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ConfigError, match=r"width_mult=0\.25, batch_norm=True") as refused:
        _resolve(preset="cpu", hparams={"weights": str(weights_file)})
    assert "unset" not in str(refused.value)
    monkeypatch.setenv(WEIGHTS_ENV, str(weights_file))
    with pytest.raises(ConfigError, match=r"unset \$SER_ALEXNET_WEIGHTS to train it from scratch"):
        _resolve(preset="cpu")
    monkeypatch.delenv(WEIGHTS_ENV)
    fitted = _resolve(preset="cpu", hparams={"weights": str(weights_file), "width_mult": 1.0, "batch_norm": False})
    assert fitted.plan.hparams["weights"] == str(weights_file.resolve())


def test_a_served_model_never_reopens_its_imagenet_file(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = build_model("alexnet", 4, 3, width_mult=0.25)
    meta = {"model": "alexnet", "n_classes": 4, "in_channels": 3,
            "hparams": {"width_mult": 0.25, "weights": str(tmp_path / "moved-away.pth")}}
    folder = save_model_folder(tmp_path / "model", meta, model=model)
    served, _, _ = load_trained_model(folder)
    assert json.loads((folder / "model.json").read_text())["hparams"]["weights"].endswith("moved-away.pth")
    for key, value in model.state_dict().items():
        assert torch.equal(served.state_dict()[key], value), key
