"""Att-Res family: spatial attention maths, Res-A block, presets, forward/backward."""

from __future__ import annotations

import json

import pytest
import torch

from ser_pipeline.errors import ConfigError
from ser_pipeline.experiments.config import ExperimentConfig
from ser_pipeline.experiments.runner import run_experiment
from ser_pipeline.models import build_model, get_model
from ser_pipeline.models.att_res import PRESETS, AttRes, ResidualBlock, SpatialAttention
from ser_pipeline.workspace import Workspace


def test_spatial_attention_scores_shape_and_sum() -> None:
    torch.manual_seed(0)
    att = SpatialAttention()
    x = torch.randn(3, 5, 6, 7)
    scores = att.scores(x)
    assert scores.shape == (3, 1, 6, 7)
    assert torch.all(scores > 0)
    torch.testing.assert_close(scores.sum(dim=(1, 2, 3)), torch.ones(3))
    out = att(x)
    assert out.shape == x.shape
    torch.testing.assert_close(out, x * scores)
    torch.testing.assert_close(att.last_scores, scores)


def test_spatial_attention_formula_by_hand() -> None:
    """softmax over positions of w_max * max_c + w_avg * mean_c + bias, computed independently."""
    att = SpatialAttention()
    with torch.no_grad():
        att.conv.weight.copy_(torch.tensor([[[[2.0]], [[-1.0]]]]))
        att.conv.bias.fill_(0.5)
    x = torch.tensor([[[[1.0, 0.0]], [[3.0, -2.0]]]])  # (1, 2, 1, 2)
    # position 0: max 3, mean 2 -> 2*3 - 2 + 0.5 = 4.5; position 1: max 0, mean -1 -> 0 + 1 + 0.5 = 1.5
    e = torch.exp(torch.tensor([4.5, 1.5]))
    expected = (e / e.sum()).reshape(1, 1, 1, 2)
    torch.testing.assert_close(att.scores(x), expected)


def test_res_a_block_records_attention_map_and_keeps_shape() -> None:
    torch.manual_seed(0)
    block = ResidualBlock(4, attention=True)
    x = torch.randn(2, 4, 8, 8)
    y = block(x)
    assert y.shape == x.shape
    assert block.attention is not None
    scores = block.attention.last_scores
    assert scores.shape == (2, 1, 8, 8)
    torch.testing.assert_close(scores.sum(dim=(2, 3)), torch.ones(2, 1))
    assert ResidualBlock(4, attention=False).attention is None


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_forward_backward(name: str) -> None:
    torch.manual_seed(0)
    entry = get_model(name)
    assert entry.view["resize"] == (128, 128)
    assert entry.recipe["optimizer"] == "adam" and entry.recipe["epochs"] == 25
    assert entry.protocol == "random"
    model = build_model(name, 4, 1, width=0.125)
    x = torch.randn(2, 1, 32, 32)
    logits = model(x)
    assert logits.shape == (2, 4)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    blocks, final, _ = PRESETS[name]
    n_att = sum(blocks) + int(final)
    assert len(model.attention_modules()) == n_att
    for att in model.attention_modules():
        assert att.last_scores is not None
        assert att.last_scores.shape[1] == 1
        torch.testing.assert_close(att.last_scores.sum(dim=(2, 3)), torch.ones(2, 1))


def test_att_res_places_attention_in_the_deep_blocks() -> None:
    model = build_model("att_res", 6, 1, width=0.125)
    assert [b[1].attention is not None for b in model.blocks] == [False, True, True]
    model2 = build_model("att_res2", 6, 1, width=0.125)
    assert [b[1].attention is not None for b in model2.blocks] == [True, True, False]


def test_paper_size_maps_keep_attention_meaningful() -> None:
    """At 128x128 the third block still sees a map larger than 1x1 (spatial softmax not trivial)."""
    model = AttRes(6, 1, width=0.125)
    model(torch.randn(1, 1, 128, 128))
    last = model.attention_modules()[-1].last_scores
    assert last.shape == (1, 1, 8, 8)
    literal = AttRes(6, 1, width=0.125, block_pool_stride=2).eval()
    literal(torch.randn(1, 1, 128, 128))
    assert literal.attention_modules()[-1].last_scores.shape == (1, 1, 1, 1)


def test_bad_hparams_name_the_field() -> None:
    with pytest.raises(ConfigError, match="attention_blocks"):
        AttRes(6, 1, attention_blocks=(True,))
    with pytest.raises(ConfigError, match="block_pool_stride"):
        AttRes(6, 1, block_pool_stride=3)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_entries_are_valid_for_the_engine(name: str) -> None:
    from ser_pipeline.dataset.views import ViewSpec
    from ser_pipeline.features import PRESETS as FEATURE_PRESETS

    entry = get_model(name)
    assert ViewSpec.from_dict(entry.view).resize == (128, 128)
    assert entry.feature_preset in FEATURE_PRESETS
    assert f"{PRESETS[name][2]}%" in entry.reference


# -- through the engine: one epoch on a tiny demo corpus ---------------------------------------


def test_one_epoch_through_the_engine(tiny_ws: Workspace) -> None:
    config = ExperimentConfig(model="att_res", corpus="tiny", epochs=1, max_folds=1,
                              hparams={"width": 0.125}, view={"resize": (32, 32), "frames": 32})
    result = run_experiment(config, tiny_ws, device="cpu")
    fold = result.metrics["folds"][0]
    assert fold["best_epoch"] == 1 and 0.0 <= fold["ua"] <= 1.0
    assert len((result.folder / "predictions.csv").read_text().strip().splitlines()) == 1 + 6
    history = json.loads((result.folder / "history.json").read_text())
    assert [row["epoch"] for row in history[fold["fold"]]] == [1]
