"""DCNN + BLSTM + attention + DNN: attention maths, shapes, ablations, forward/backward."""

from __future__ import annotations

import json

import pytest
import torch

from ser_pipeline.errors import ConfigError
from ser_pipeline.experiments.config import ExperimentConfig
from ser_pipeline.experiments.runner import run_experiment
from ser_pipeline.models import build_model, get_model
from ser_pipeline.models.dcnn_blstm_att import BLSTMAttention, attention_pool
from ser_pipeline.workspace import Workspace


def test_attention_pool_weights_sum_to_one_and_match_the_formula() -> None:
    y = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]]])  # (1, 3, 2)
    u = torch.tensor([1.0, -1.0])
    z, alpha = attention_pool(y, u)
    scores = torch.tensor([1.0, -2.0, 0.0])  # u^T y_i by hand
    expected = torch.exp(scores) / torch.exp(scores).sum()
    torch.testing.assert_close(alpha[0], expected)
    torch.testing.assert_close(alpha.sum(dim=1), torch.ones(1))
    torch.testing.assert_close(z[0], (expected[:, None] * y[0]).sum(dim=0))
    assert z.shape == (1, 2)


def test_blstm_sizes_and_dnn_layout() -> None:
    model = BLSTMAttention(4, 32)
    assert model.blstm.hidden_size == 128 and model.blstm.bidirectional
    linears = [m for m in model.dnn if isinstance(m, torch.nn.Linear)]
    assert [m.out_features for m in linears] == [512, 256, 256, 4]
    assert isinstance(model.dnn[2], torch.nn.Dropout)
    assert model.u is not None and model.u.shape == (256,)


@pytest.mark.parametrize("attention", [True, False])
def test_forward_backward_and_attention_record(attention: bool) -> None:
    torch.manual_seed(0)
    model = BLSTMAttention(4, 12, hidden=6, dnn=(16, 8, 8), attention=attention)
    f = torch.randn(3, 8, 12)
    logits = model(f)
    assert logits.shape == (3, 4)
    assert model.embed(f).shape == (3, 12)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    if attention:
        assert model.last_alpha.shape == (3, 8)
        torch.testing.assert_close(model.last_alpha.sum(dim=1), torch.ones(3))
    else:
        assert model.u is None and model.last_alpha is None


def test_without_attention_is_the_mean_of_blstm_outputs() -> None:
    torch.manual_seed(0)
    model = BLSTMAttention(3, 5, hidden=4, attention=False)
    f = torch.randn(2, 6, 5)
    y, _ = model.blstm(f)
    torch.testing.assert_close(model.embed(f), y.mean(dim=1))


def test_registration_recipe_and_ablations() -> None:
    entry = get_model("dcnn_blstm_att")
    assert entry.trainer == "two_stage" and entry.protocol == "loso_val"
    assert entry.feature_preset == "logmel64_norm"
    assert entry.view["window"] == 64 and entry.view["shift"] == 32 and entry.view["frames"] == 300
    assert entry.recipe == {"optimizer": "nadam", "lr": 1e-4, "batch_size": 128, "epochs": 20,
                            "class_weighted": True}
    assert entry.stage2_recipe["lr"] == 5e-6 and entry.stage2_recipe["batch_size"] == 16
    assert entry.augment == "speed=0.8,0.9,1.0,1.1,1.2"
    assert {"channels", "augment", "attention", "pretrain", "window"} <= set(entry.ablations)
    assert get_model("dcnn_blstm_att_no_pretrain").defaults["finetune"] is False


def test_no_pretrain_frozen_trains_only_the_blstm_head_and_keeps_fc7() -> None:
    """``finetune=False`` (the paper's ablation, with ImageNet weights): the AlexNet is frozen, so
    a step changes the BLSTM, attention and DNN only and every window's FC7 stays as loaded."""
    torch.manual_seed(0)
    model = build_model("dcnn_blstm_att_no_pretrain", 4, 3, width_mult=0.02, hidden=4, dnn=(8, 8, 8))
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"head"}
    x = torch.randn(2, 3, 3, 67, 67)  # (B, S, C, H, W)
    before = model.eval().dcnn.embed(x.reshape(6, 3, 67, 67))
    head_before = model.head.dnn[0].weight.detach().clone()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    model.train()
    torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1])).backward()
    opt.step()
    torch.testing.assert_close(model.eval().dcnn.embed(x.reshape(6, 3, 67, 67)), before)
    assert not torch.equal(model.head.dnn[0].weight, head_before)
    scratch = build_model("dcnn_blstm_att_no_pretrain", 4, 3, width_mult=0.02, finetune=True)
    assert all(p.requires_grad for p in scratch.parameters())  # the from-scratch variant trains it all
    assert all(p.requires_grad for p in build_model("dcnn_blstm_att", 4, 3, width_mult=0.02).parameters())


def test_no_pretrain_ignores_padded_windows() -> None:
    """Masked windows never reach the AlexNet or the BLSTM: an utterance gives the same logits
    alone and padded with extra windows of any content."""
    torch.manual_seed(0)
    model = build_model("dcnn_blstm_att_no_pretrain", 3, 3, width_mult=0.02, hidden=4, dnn=(8, 8, 8),
                        batch_norm=True, finetune=True).eval()
    real = torch.randn(1, 2, 3, 67, 67)
    padded = torch.cat([real, 5 * torch.randn(1, 3, 3, 67, 67)], dim=1)  # 3 padding windows after it
    other = torch.randn(1, 5, 3, 67, 67)
    batch = torch.cat([padded, other])
    mask = torch.tensor([[True, True, False, False, False], [True] * 5])
    out = model.forward_segments(batch, mask)
    assert out.shape == (2, 3)
    torch.testing.assert_close(out[0], model.forward_segments(real, None)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], model.forward_segments(other, None)[0], rtol=1e-5, atol=1e-5)


def test_a_segment_sequence_model_gets_one_logit_row_per_utterance() -> None:
    """``forward_batch`` hands a ``ReadsSegmentSequences`` model the whole ``(B, S, ...)`` windows
    with their mask (no per-segment logits, no segment mask back); other segment models still
    score each segment."""
    from ser_pipeline.dataset.views import ViewBatch, ViewSpec
    from ser_pipeline.inference.forward import forward_batch
    from ser_pipeline.models import ReadsSegmentSequences

    torch.manual_seed(0)
    view = ViewSpec(kind="windows", frames=96, window=32, shift=16, resize=(67, 67))
    joint = build_model("dcnn_blstm_att_no_pretrain", 3, 3, width_mult=0.02, hidden=4, dnn=(8, 8, 8)).eval()
    assert isinstance(joint, ReadsSegmentSequences)
    x, mask = torch.randn(2, 5, 3, 67, 67), torch.tensor([[True] * 3 + [False] * 2, [True] * 5])
    logits, seg_mask = forward_batch(joint, ViewBatch(x, mask), view)
    assert logits.shape == (2, 3) and seg_mask is None
    torch.testing.assert_close(logits, joint.forward_segments(x, mask))
    cnn = build_model("dcnn_blstm_att", 3, 3, width_mult=0.02).eval()
    assert not isinstance(cnn, ReadsSegmentSequences)
    logits, seg_mask = forward_batch(cnn, ViewBatch(x, mask), view)
    assert logits.shape == (2, 5, 3) and torch.equal(seg_mask, mask)


def test_no_pretrain_switches_to_its_from_scratch_variant_without_weights(tmp_path) -> None:
    """Without ImageNet weights the default and cpu presets train the AlexNet with the head
    (``finetune=True``) at AdamW 3e-4, and say so; the paper preset keeps the frozen network and
    NAdam 5e-6; the user's ``finetune`` wins; with weights given nothing switches."""
    import warnings

    from ser_pipeline.experiments.config import resolve

    def resolved(**kw):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return resolve(ExperimentConfig(model="dcnn_blstm_att_no_pretrain", corpus="c", **kw))

    for preset in ("cpu", "default"):
        r = resolved(preset=preset)
        assert r.plan.hparams["finetune"] is True and r.plan.train.lr == 3e-4 and r.plan.train.optimizer == "adamw"
        assert any("from-scratch" in n and "hparams.finetune=True" in n and "train.lr=0.0003" in n for n in r.plan.notes)
    cpu = resolved(preset="cpu").plan
    assert cpu.train.epochs == 20 and (cpu.hparams["dropout"], cpu.hparams["dnn_dropout"]) == (0.0, 0.0)
    assert cpu.hparams["hidden"] == 128 and cpu.hparams["dnn"] == (128, 64, 64)
    default = resolved(preset="default").plan  # the from-scratch variant drops dropout too (stop 31)
    assert (default.hparams["dropout"], default.hparams["dnn_dropout"], default.hparams["batch_norm"]) == (0.0, 0.0, True)
    assert resolved(preset="default", hparams={"dropout": 0.5}).plan.hparams["dropout"] == 0.5  # the user's wins
    paper = resolved(preset="paper")
    assert paper.plan.hparams["finetune"] is False and (paper.plan.train.optimizer, paper.plan.train.lr) == ("nadam", 5e-6)
    assert not any("finetune" in n for n in paper.plan.notes)
    assert (paper.plan.hparams["dropout"], paper.plan.hparams["batch_norm"]) == (0.5, False)
    with pytest.raises(ConfigError, match="hparams.finetune='maybe': must be true or false"):
        resolved(preset="cpu", hparams={"finetune": "maybe"})  # refused before any fold, or a cached record
    frozen = resolved(preset="cpu", hparams={"finetune": False})
    assert frozen.plan.hparams["finetune"] is False and frozen.plan.train.lr == 3e-4
    assert resolved(preset="cpu", train={"lr": 1e-3}).plan.train.lr == 1e-3  # the user's rate wins too
    weights = tmp_path / "alexnet.pt"
    weights.write_bytes(b"")  # resolve never reads it; building the model would
    given = resolved(preset="cpu", hparams={"weights": str(weights), "batch_norm": False, "width_mult": 1.0})
    assert given.plan.hparams["finetune"] is False and given.plan.train.optimizer == "nadam"
    assert not any("from-scratch" in n for n in given.plan.notes)


@pytest.mark.parametrize("channels", [1, 2, 3])
def test_stage1_windows_any_channel_count(channels: int) -> None:
    torch.manual_seed(0)
    cnn = build_model("dcnn_blstm_att", 4, channels, width_mult=0.02)
    windows = torch.randn(2 * 8, channels, 67, 67)
    feats = cnn.embed(windows)
    entry = get_model("dcnn_blstm_att")
    head = entry.stage2(4, cnn.embed_dim, **{**entry.stage2_defaults, "hidden": 8, "dnn": (16, 8, 8)})
    logits = head(feats.reshape(2, 8, -1))
    assert logits.shape == (2, 4)
    logits.sum().backward()


def test_bad_options_raise_config_error() -> None:
    with pytest.raises(ConfigError, match="dropout"):
        BLSTMAttention(4, 8, dropout=1.5)
    with pytest.raises(ConfigError, match="dnn"):
        BLSTMAttention(4, 8, dnn=())
    with pytest.raises(ConfigError, match="finetune='maybe': must be true or false"):
        build_model("dcnn_blstm_att_no_pretrain", 4, 3, width_mult=0.02, finetune="maybe")


@pytest.mark.parametrize("name", ["dcnn_blstm_att", "dcnn_blstm_att_no_pretrain"])
def test_entries_are_valid_for_the_engine(name: str) -> None:
    from ser_pipeline.augment import parse_augment
    from ser_pipeline.dataset.views import ViewSpec, window_count
    from ser_pipeline.features import PRESETS

    entry = get_model(name)
    view = ViewSpec.from_dict(entry.view)
    assert view.kind == "windows" and view.resize == (227, 227)
    assert int(window_count(torch.tensor([view.frames]), view.window, view.shift)[0]) == 9
    assert entry.feature_preset in PRESETS
    assert len(parse_augment(entry.augment).variants) == 5


@pytest.mark.parametrize("attention", [True, False])
def test_mask_gives_the_same_result_as_the_unpadded_sequence(attention: bool) -> None:
    torch.manual_seed(0)
    model = BLSTMAttention(3, 5, hidden=4, dnn=(8, 8, 8), attention=attention).eval()
    a, b = torch.randn(1, 3, 5), torch.randn(1, 5, 5)
    padded = torch.cat([torch.cat([a, torch.zeros(1, 2, 5)], dim=1), b], dim=0)
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    out = model(padded, mask=mask)
    if attention:
        assert torch.all(model.last_alpha[0, 3:] == 0)
        torch.testing.assert_close(model.last_alpha.sum(dim=1), torch.ones(2))
    torch.testing.assert_close(out[0], model(a)[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(out[1], model(b)[0], rtol=1e-5, atol=1e-5)


# -- through the engine: one epoch on a tiny demo corpus ---------------------------------------


def test_one_epoch_through_the_engine(tiny_ws: Workspace) -> None:
    from feature_store import FeatureStore

    config = ExperimentConfig(model="dcnn_blstm_att", corpus="tiny", epochs=1, max_folds=1,
                              hparams={"width_mult": 0.02}, view={"resize": (67, 67), "frames": 96},
                              stage2={"hparams": {"hidden": 8, "dnn": (16, 8, 8)}, "recipe": {"epochs": 1}})
    result = run_experiment(config, tiny_ws, device="cpu")
    fold = result.metrics["folds"][0]
    assert 0.0 <= fold["ua"] <= 1.0
    cfg = json.loads((result.folder / "config.json").read_text())
    assert cfg["feature_spec"]["normalize_waveform"] is True  # logmel64_norm
    derived = FeatureStore(tiny_ws.features).derived(cfg["digests"]["features"], fold["stage1_checkpoint_digest"])
    uid = (result.folder / "predictions.csv").read_text().splitlines()[1].split(",")[0]
    assert derived.read(uid, "orig").shape == (2, fold["embed_dim"])  # 96 frames: windows at 0 and 32


def test_speaker_bn_embeddings_are_a_derived_set_of_their_own(tiny_ws: Workspace) -> None:
    """``train.bn_statistics=speaker`` on a two-stage model: every speaker's stage-1 embeddings use
    that speaker's own BatchNorm statistics, stored under the checkpoint digest plus ``-bn-speaker``
    (the same weights embed differently), and the served model folder says so."""
    from feature_store import FeatureStore
    from ser_pipeline.training.trainers.neural import embedding_key

    config = ExperimentConfig(model="dcnn_blstm_att", corpus="tiny", epochs=1, max_folds=1, seed=1,  # a stage 1 of its own
                              hparams={"width_mult": 0.02, "batch_norm": True}, view={"resize": (67, 67), "frames": 96},
                              train={"bn_statistics": "speaker"},
                              stage2={"hparams": {"hidden": 8, "dnn": (16, 8, 8)}, "recipe": {"epochs": 1}})
    result = run_experiment(config, tiny_ws, device="cpu")
    fold = result.metrics["folds"][0]
    assert result.metrics["recipe"]["bn_statistics"] == "speaker" and fold["bn_statistics"] == "speaker"
    cfg = json.loads((result.folder / "config.json").read_text())
    store = FeatureStore(tiny_ws.features)
    key = embedding_key(fold["stage1_checkpoint_digest"], "speaker")
    assert key == fold["stage1_checkpoint_digest"] + "-bn-speaker"
    listed = {d["checkpoint_digest"]: d["items"] for d in store.list_derived()}
    assert listed.get(key, 0) > 0 and fold["stage1_checkpoint_digest"] not in listed
    uid = (result.folder / "predictions.csv").read_text().splitlines()[1].split(",")[0]
    assert store.derived(cfg["digests"]["features"], key).read(uid, "orig").shape == (2, fold["embed_dim"])
    assert json.loads((result.folder / "model" / "model.json").read_text())["bn_statistics"] == "speaker"
    from ser_pipeline.inference.predictor import load_predictor, predict_paths
    from ser_pipeline.manifest import read_manifest

    paths = [str(p) for p in read_manifest("tiny", tiny_ws)["path"][:2]]
    out = predict_paths(load_predictor(result.folder), paths)  # stage 1 embeds each file with its own statistics
    assert [r["error"] for r in out] == [None, None] and all(r["emotion"] in ("anger", "sadness") for r in out)



@pytest.mark.parametrize("refit", [True, False])
def test_stage2_refit_trains_on_every_non_test_speaker(tiny_ws: Workspace, refit: bool) -> None:
    """Two-stage refit (the default): stage 2 is refit on the training and validation speakers'
    embeddings for the epochs chosen on validation (the whole budget, ``refit_epochs=budget``); the
    test speaker stays out. ``refit=false`` keeps the validated head fitted on training speakers only."""
    config = ExperimentConfig(model="dcnn_blstm_att", corpus="tiny", epochs=1, max_folds=1, refit=refit,
                              hparams={"width_mult": 0.02}, view={"resize": (67, 67), "frames": 96},
                              stage2={"hparams": {"hidden": 8, "dnn": (16, 8, 8)}, "recipe": {"epochs": 2}})
    result = run_experiment(config, tiny_ws, device="cpu")
    fold = result.metrics["folds"][0]
    folds = json.loads((result.folder / "config.json").read_text())["folds"][0]
    assert not set(folds["test_speakers"]) & set(folds["val_speakers"])
    assert result.metrics["recipe"]["refit"] is refit and fold["refit"] is refit and folds["refit"] is refit
    if refit:
        assert fold["n_fit"] == folds["n_train"] + folds["n_val"] == 18  # 3 speakers x 6 utterances
        assert fold["refit_epochs"] == 2 and fold["refit_stage"] == "stage2"
        assert fold["refit_train_loss"] is not None
    else:
        assert fold["n_fit"] == folds["n_train"] == 12 and "refit_epochs" not in fold


def test_no_pretrain_trains_end_to_end_and_serves(tiny_ws: Workspace) -> None:
    """``dcnn_blstm_att_no_pretrain`` without weights: the standard trainer fits the AlexNet and the
    BLSTM head together on each utterance's windows (no stage 1, no stored embeddings), refits on
    every non-test speaker, records why, and its model folder predicts from features."""
    import warnings

    import numpy as np

    from ser_pipeline.inference.predictor import load_predictor, posteriors

    config = ExperimentConfig(model="dcnn_blstm_att_no_pretrain", corpus="tiny", epochs=2, max_folds=1,
                              hparams={"width_mult": 0.02, "hidden": 4, "dnn": (8, 8, 8)},
                              view={"resize": (67, 67), "frames": 96})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = run_experiment(config, tiny_ws, device="cpu")
    fold = result.metrics["folds"][0]
    assert 0.0 <= fold["ua"] <= 1.0 and fold["refit"] is True and fold["refit_epochs"] == 2
    assert "stage1_checkpoint_digest" not in fold and not (result.folder / "history_stage1.json").exists()
    cfg = json.loads((result.folder / "config.json").read_text())
    assert cfg["resolved"]["hparams"]["finetune"] is True
    assert any("from-scratch" in n and "hparams.finetune=True" in n for n in cfg["resolved"]["notes"])
    predictor = load_predictor(result.folder / "model")
    assert predictor.stage2 is None
    probs = posteriors(predictor, [np.random.default_rng(0).standard_normal((3, 64, 150)).astype(np.float32)])
    assert probs.shape == (1, 2) and abs(float(probs.sum()) - 1.0) < 1e-5
