"""SE-ResNet-18 + Transformer: shapes, SE blocks, speaker pre-training hooks, freezing."""

from __future__ import annotations

import json

import pytest
import torch

from ser_pipeline.errors import ConfigError
from ser_pipeline.experiments.config import ExperimentConfig
from ser_pipeline.experiments.runner import run_experiment
from ser_pipeline.inference.model_folder import load_trained_model
from ser_pipeline.models import build_model, get_model
from ser_pipeline.models.blocks import SqueezeExcitation
from ser_pipeline.models.res_trans import ResTrans, sinusoidal_encoding
from ser_pipeline.workspace import Workspace


def _tiny(**kw: object) -> ResTrans:
    return build_model("res_trans", 4, 1, width=4, heads=2, ff_dim=16, **kw)


def test_registration() -> None:
    entry = get_model("res_trans")
    assert entry.trainer == "speaker_pretrain"
    assert entry.spec_augment == {"hmixup": (0.05, 1.25, 1.0), "ratio": 0.3}
    assert get_model("res_trans_single_stage").trainer == "standard"
    assert "single_stage" in entry.ablations


def test_se_blocks_and_sequence_along_time() -> None:
    torch.manual_seed(0)
    model = _tiny()
    assert sum(isinstance(m, SqueezeExcitation) for m in model.modules()) == 8  # 8 basic blocks
    x = torch.randn(2, 1, 64, 128)
    seq = model.sequence(x)
    assert seq.shape == (2, 128 // 32, 32)  # (B, T/32, 8*width)
    torch.testing.assert_close(seq, model.cnn.features(x).mean(dim=2).transpose(1, 2))


def test_forward_backward() -> None:
    torch.manual_seed(0)
    model = _tiny()
    logits = model(torch.randn(3, 1, 64, 96))
    assert logits.shape == (3, 4)
    logits.sum().backward()
    assert all(p.grad is not None for n, p in model.named_parameters())


def test_speaker_pretraining_then_frozen_backbone() -> None:
    torch.manual_seed(0)
    model = _tiny()
    x = torch.randn(4, 1, 64, 64)
    head = model.speaker_head(3)
    assert model.speaker_logits(x).shape == (4, 3)
    model.speaker_logits(x).sum().backward()
    assert head.weight.grad is not None and model.cnn.stem[0].weight.grad is not None
    assert model.encoder.layers[0].linear1.weight.grad is None  # stage 1 never touches the encoder
    model.zero_grad(set_to_none=True)
    model.freeze_backbone()
    model.train()
    assert not model.cnn.training and model.encoder.training
    before = model.cnn.stem[1].running_mean.clone()
    model(x).sum().backward()
    torch.testing.assert_close(model.cnn.stem[1].running_mean, before)
    assert all(p.grad is None for p in model.cnn.parameters())
    assert model.head.weight.grad is not None


def test_positional_encoding_values() -> None:
    enc = sinusoidal_encoding(3, 4)
    assert enc.shape == (3, 4)
    torch.testing.assert_close(enc[0], torch.tensor([0.0, 1.0, 0.0, 1.0]))
    torch.testing.assert_close(enc[1, 0], torch.sin(torch.tensor(1.0)))
    torch.testing.assert_close(enc[1, 3], torch.cos(torch.tensor(1.0 / 100.0)))


def test_bad_options() -> None:
    with pytest.raises(ConfigError, match="heads"):
        ResTrans(4, 1, width=4, heads=3)
    with pytest.raises(ConfigError, match="n_speakers"):
        _tiny().speaker_head(1)


def test_entry_is_valid_for_the_engine() -> None:
    from ser_pipeline.dataset.spec_augment import SpecAugmentSpec
    from ser_pipeline.dataset.views import ViewSpec
    from ser_pipeline.features import PRESETS

    entry = get_model("res_trans")
    assert ViewSpec.from_dict(entry.view).kind == "fixed"
    spec = SpecAugmentSpec.from_dict(entry.spec_augment)
    assert spec.hmixup == (0.05, 1.25, 1.0) and spec.ratio == 0.3
    assert entry.feature_preset in PRESETS


# -- through the engine: one epoch on a tiny demo corpus ---------------------------------------


@pytest.mark.parametrize("freeze", [True, False])
def test_speaker_pretraining_through_the_engine(tiny_ws: Workspace, freeze: bool) -> None:
    config = ExperimentConfig(model="res_trans", corpus="tiny", epochs=1, max_folds=1,
                              train={"speaker_epochs": 1, "speaker_freeze": freeze},
                              hparams={"width": 4, "heads": 2, "ff_dim": 16}, view={"frames": 64})
    result = run_experiment(config, tiny_ws, device="cpu")
    fold = result.metrics["folds"][0]
    assert "speaker_val_acc" in fold  # stage 1 ran: speaker identification on training speakers
    assert fold["best_epoch"] == 1 and 0.0 <= fold["ua"] <= 1.0 and fold["speaker_freeze"] is freeze
    stage1 = json.loads((result.folder / "history_stage1.json").read_text())
    assert [row["epoch"] for row in stage1[fold["fold"]]] == [1]
    # the served model is the registered architecture: the stage-1 speaker head is not in its weights
    model, _, _ = load_trained_model(result.folder / "model", device="cpu")
    assert isinstance(model, ResTrans) and model.speaker_fc is None
    assert not any(k.startswith("speaker_fc") for k in model.state_dict())


def test_weights_saved_with_the_speaker_head_still_load() -> None:
    """Model folders written before the speaker head was dropped after stage 1 hold speaker_fc.*."""
    old = ResTrans(4, 1, width=4, heads=2, ff_dim=8)
    old.speaker_head(3)
    state = old.state_dict()
    fresh = ResTrans(4, 1, width=4, heads=2, ff_dim=8)
    fresh.load_state_dict(state)  # strict: every other key must match
    assert torch.equal(fresh.head.weight, old.head.weight) and fresh.speaker_fc is None
    del state["head.weight"]
    with pytest.raises(RuntimeError, match="head.weight"):
        ResTrans(4, 1, width=4, heads=2, ff_dim=8).load_state_dict(state)


def test_refit_restarts_stage2_from_the_speaker_trained_backbone(tiny_ws: Workspace) -> None:
    """The refit (default) trains stage 2 again on train + validation speakers from the same stage-1
    state: with a frozen backbone the served backbone is identical with and without the refit, the
    emotion layers differ, and the refit fitted every non-test speaker."""
    base = dict(model="res_trans", corpus="tiny", epochs=2, max_folds=1,
                train={"speaker_epochs": 1, "speaker_freeze": True},
                hparams={"width": 4, "heads": 2, "ff_dim": 16}, view={"frames": 64})
    runs = {refit: run_experiment(ExperimentConfig(**base, refit=refit), tiny_ws, device="cpu") for refit in (True, False)}
    folds = {refit: json.loads((r.folder / "config.json").read_text())["folds"][0] for refit, r in runs.items()}
    with_refit = runs[True].metrics["folds"][0]
    assert with_refit["refit"] is True and with_refit["refit_epochs"] == 2 and with_refit["refit_stage"] == "stage2"
    assert with_refit["n_fit"] == folds[True]["n_train"] + folds[True]["n_val"] == 18
    assert runs[False].metrics["folds"][0]["refit"] is False and runs[False].metrics["folds"][0]["n_fit"] == 12
    states = {refit: load_trained_model(r.folder / "model", device="cpu")[0] for refit, r in runs.items()}
    a, b = states[True].state_dict(), states[False].state_dict()
    learned = [k for k in a if "running" not in k and "num_batches" not in k]  # precise-BN sees other data
    backbone = [k for k in learned if k.startswith("cnn.")]  # frozen after speaker pre-training
    head = [k for k in learned if not k.startswith("cnn.")]
    assert backbone and all(torch.equal(a[k], b[k]) for k in backbone)
    assert any(not torch.equal(a[k], b[k]) for k in head)
