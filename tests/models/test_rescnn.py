"""ResCNN: registration, shapes, forward/backward, bad options."""

from __future__ import annotations

import json

import pytest
import torch

from ser_pipeline.errors import ConfigError
from ser_pipeline.experiments.config import ExperimentConfig
from ser_pipeline.experiments.runner import run_experiment
from ser_pipeline.models import build_model, get_model
from ser_pipeline.models.blocks import BasicBlock
from ser_pipeline.models.rescnn import ResCNN
from ser_pipeline.workspace import Workspace


def test_registration_carries_the_paper_recipe() -> None:
    entry = get_model("rescnn")
    assert entry.view["resize"] == (156, 144)
    assert entry.recipe["optimizer"] == "adam"
    assert entry.protocol == "random"
    assert "speed" in entry.augment and "pitch" in entry.augment
    assert "86.3" in entry.reference


def test_structure_two_convs_then_two_residual_blocks() -> None:
    model = ResCNN(6, 1)
    assert len(model.shallow) == 2
    residual = [m for m in model.blocks if isinstance(m, BasicBlock)]
    assert len(residual) == 2
    assert all(isinstance(b.shortcut, torch.nn.Identity) for b in residual)  # identity blocks


@pytest.mark.parametrize("pooling", ["gap", "flatten"])
def test_forward_backward(pooling: str) -> None:
    torch.manual_seed(0)
    model = build_model("rescnn", 6, 1, width=0.125, pooling=pooling, input_size=(40, 36))
    x = torch.randn(3, 1, 40, 36)
    assert model.embed(x).shape == (3, model.embed_dim)
    logits = model(x)
    assert logits.shape == (3, 6)
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2])).backward()
    assert all(p.grad is not None for p in model.parameters())


def test_paper_input_size_feature_map() -> None:
    model = ResCNN(6, 1, width=0.125)
    maps = model.feature_maps(torch.zeros(1, 1, 156, 144))
    assert maps.shape == (1, 32, 10, 9)


def test_bad_options_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="pooling"):
        ResCNN(6, 1, pooling="max")
    with pytest.raises(ConfigError, match="channels"):
        ResCNN(6, 1, channels=(8, 16))


def test_entry_is_valid_for_the_engine() -> None:
    from ser_pipeline.augment import parse_augment
    from ser_pipeline.dataset.views import ViewSpec
    from ser_pipeline.features import PRESETS

    entry = get_model("rescnn")
    view = ViewSpec.from_dict(entry.view)
    assert view.resize == (156, 144) and view.n_segments == 1
    assert entry.feature_preset in PRESETS
    assert parse_augment(entry.augment).variants == ("orig", "speed=0.9", "speed=1.1", "pitch=-2", "pitch=2")


# -- through the engine: one epoch on a tiny demo corpus ---------------------------------------


def test_one_epoch_through_the_engine(tiny_ws: Workspace) -> None:
    config = ExperimentConfig(model="rescnn", corpus="tiny", epochs=1, max_folds=1,
                              hparams={"width": 0.125}, view={"resize": (40, 36), "frames": 36})
    result = run_experiment(config, tiny_ws, device="cpu")
    fold = result.metrics["folds"][0]
    assert result.metrics["protocol"] == "loso" and not result.metrics["speaker_dependent"]
    assert fold["best_epoch"] == 1 and 0.0 <= fold["ua"] <= 1.0
    preds = (result.folder / "predictions.csv").read_text().strip().splitlines()
    assert len(preds) == 1 + 6  # header + one test speaker's 6 utterances
    resolved = json.loads((result.folder / "config.json").read_text())["resolved"]
    assert resolved["view"]["resize"] == [40, 36] and resolved["train"]["optimizer"] == "adamw"  # issue 13 default recipe


def test_paper_preset_uses_the_random_split_and_augmentation(tiny_ws: Workspace) -> None:
    from ser_pipeline.experiments.config import resolve

    resolved = resolve(ExperimentConfig(model="rescnn", corpus="tiny", preset="paper"))
    assert resolved.protocol == "random"
    assert resolved.augment == "speed=0.9,1.1;pitch=-2,2"
