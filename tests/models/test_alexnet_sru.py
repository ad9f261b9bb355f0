"""AlexNet + SRU: the SRU cell against hand-computed numbers, the stage-2 classifier, the stage-1
segment network and the ablation entries."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ser_pipeline.errors import ConfigError
from ser_pipeline.experiments.config import ExperimentConfig
from ser_pipeline.experiments.runner import run_experiment
from ser_pipeline.models import build_model, get_model
from ser_pipeline.models.alexnet_sru import SegmentPool, SRUCell, SRUClassifier
from ser_pipeline.workspace import Workspace


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


def _set(cell: SRUCell, W: np.ndarray, Wf: np.ndarray, bf: np.ndarray, Wr: np.ndarray, br: np.ndarray) -> None:
    with torch.no_grad():
        cell.W.weight.copy_(torch.tensor(W, dtype=torch.float32))
        cell.W_f.weight.copy_(torch.tensor(Wf, dtype=torch.float32))
        cell.W_f.bias.copy_(torch.tensor(bf, dtype=torch.float32))
        cell.W_r.weight.copy_(torch.tensor(Wr, dtype=torch.float32))
        cell.W_r.bias.copy_(torch.tensor(br, dtype=torch.float32))


def test_sru_one_step_matches_hand_computation() -> None:
    """x~ = W f; f' = sig(Wf f + bf); c = f' c_prev + (1 - f') x~; r = sig(Wr f + br);
    h = r tanh(c) + (1 - r) f, written out element by element in numpy."""
    W = np.array([[0.5, -1.0], [2.0, 0.25]])
    Wf = np.array([[1.0, 0.0], [0.0, -1.0]])
    bf = np.array([0.1, -0.2])
    Wr = np.array([[0.0, 1.0], [1.0, 1.0]])
    br = np.array([0.0, 0.3])
    f = np.array([0.4, -0.6])
    c_prev = np.array([0.2, -0.5])
    cell = SRUCell(2, 2)
    _set(cell, W, Wf, bf, Wr, br)

    # by hand, one unit at a time
    x0 = 0.5 * 0.4 + -1.0 * -0.6  # 0.8
    x1 = 2.0 * 0.4 + 0.25 * -0.6  # 0.65
    g0 = _sigmoid(np.array(1.0 * 0.4 + 0.1))  # sig(0.5)
    g1 = _sigmoid(np.array(-1.0 * -0.6 - 0.2))  # sig(0.4)
    c0 = g0 * 0.2 + (1 - g0) * x0
    c1 = g1 * -0.5 + (1 - g1) * x1
    r0 = _sigmoid(np.array(-0.6 + 0.0))
    r1 = _sigmoid(np.array(0.4 - 0.6 + 0.3))
    h0 = r0 * np.tanh(c0) + (1 - r0) * 0.4
    h1 = r1 * np.tanh(c1) + (1 - r1) * -0.6
    assert abs(float(g0) - 0.6224593) < 1e-6  # sanity on the hand numbers

    h, c = cell.step(torch.tensor(f, dtype=torch.float32)[None], torch.tensor(c_prev, dtype=torch.float32)[None])
    np.testing.assert_allclose(c[0].detach().numpy(), [c0, c1], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(h[0].detach().numpy(), [h0, h1], rtol=1e-6, atol=1e-6)


def test_sru_sequence_equals_repeated_steps() -> None:
    torch.manual_seed(0)
    cell = SRUCell(3, 3)
    f = torch.randn(2, 4, 3)
    h_seq, c_last = cell(f)
    c = torch.zeros(2, 3)
    for t in range(4):
        h_t, c = cell.step(f[:, t], c)
        torch.testing.assert_close(h_seq[:, t], h_t)
    torch.testing.assert_close(c_last, c)


def test_sru_projects_the_highway_when_sizes_differ() -> None:
    torch.manual_seed(0)
    cell = SRUCell(5, 3)
    assert cell.P is not None and cell.P.weight.shape == (3, 5)
    assert SRUCell(4, 4).P is None
    f = torch.randn(2, 1, 5)
    with torch.no_grad():  # reset gate ~0 -> h = P f exactly
        cell.W_r.weight.zero_()
        cell.W_r.bias.fill_(-50.0)
    h, _ = cell(f)
    torch.testing.assert_close(h[:, 0], cell.P(f[:, 0]))


def test_sru_rejects_a_wrong_input_shape() -> None:
    with pytest.raises(ConfigError, match="input shape"):
        SRUCell(4, 4)(torch.zeros(2, 4))


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_sru_classifier_forward_backward(readout: str) -> None:
    torch.manual_seed(0)
    model = SRUClassifier(4, 16, hidden_size=8, num_layers=2, readout=readout)
    logits = model(torch.randn(3, 5, 16))
    assert logits.shape == (3, 4)
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_registered_two_stage_entry() -> None:
    entry = get_model("alexnet_sru")
    assert entry.trainer == "two_stage"
    assert entry.feature_preset == "logmel60"
    assert entry.view["kind"] == "segments" and entry.view["n_segments"] == 5
    assert entry.view["resize"] == (227, 227) and entry.view["channels"] == 3
    assert entry.recipe["optimizer"] == "sgd" and entry.recipe["lr"] == 1e-3
    assert entry.recipe["batch_size"] == 30 and entry.recipe["epochs"] == 400
    assert entry.stage2_recipe["optimizer"] == "adam" and entry.stage2_defaults["hidden_size"] == 4096
    assert get_model("alexnet_sru_cnn_only").trainer == "standard"
    assert get_model("alexnet_sru_sru_only").trainer == "two_stage"


def test_stage1_segments_to_stage2_sequences() -> None:
    """Stage 1 embeds (B*S, 3, H, W) segments; stage 2 classifies the (B, S, D) sequences."""
    torch.manual_seed(0)
    entry = get_model("alexnet_sru")
    cnn = build_model("alexnet_sru", 3, 3, width_mult=0.02)
    segments = torch.randn(2 * 5, 3, 67, 67)
    assert cnn(segments).shape == (10, 3)
    feats = cnn.embed(segments)
    assert feats.shape == (10, cnn.embed_dim)
    sru = entry.stage2(3, cnn.embed_dim, **{**entry.stage2_defaults, "hidden_size": 16})
    logits = sru(feats.reshape(2, 5, -1))
    assert logits.shape == (2, 3)
    logits.sum().backward()


def test_sru_only_pools_segments_without_a_cnn() -> None:
    pool = SegmentPool(3, 3, pool=4)
    x = torch.randn(6, 3, 16, 16)
    emb = pool.embed(x)
    assert emb.shape == (6, 48)
    torch.testing.assert_close(emb[0, 0], x[0, 0, :4, :4].mean())


@pytest.mark.parametrize("name", ["alexnet_sru", "alexnet_sru_cnn_only", "alexnet_sru_sru_only"])
def test_entries_are_valid_for_the_engine(name: str) -> None:
    from ser_pipeline.dataset.views import ViewSpec
    from ser_pipeline.features import PRESETS

    entry = get_model(name)
    view = ViewSpec.from_dict(entry.view)
    assert view.segmented and view.resize == (227, 227)
    assert entry.feature_preset in PRESETS


@pytest.mark.parametrize("readout", ["last", "mean"])
def test_sru_classifier_mask_ignores_padded_steps(readout: str) -> None:
    torch.manual_seed(0)
    model = SRUClassifier(3, 4, hidden_size=4, readout=readout).eval()
    short = torch.randn(1, 2, 4)
    padded = torch.cat([short, torch.randn(1, 3, 4)], dim=1)  # 2 real steps + 3 junk steps
    mask = torch.tensor([[True, True, False, False, False]])
    torch.testing.assert_close(model(padded, mask=mask), model(short))


# -- through the engine: one epoch on a tiny demo corpus ---------------------------------------


@pytest.mark.parametrize("name", ["alexnet_sru", "alexnet_sru_sru_only"])
def test_one_epoch_through_the_engine(tiny_ws: Workspace, name: str) -> None:
    from feature_store import FeatureStore

    config = ExperimentConfig(model=name, corpus="tiny", epochs=1, max_folds=1,
                              hparams={"width_mult": 0.02} if name != "alexnet_sru_sru_only" else {"pool": 4},
                              view={"resize": (67, 67), "frames": 67, "n_segments": 3},
                              stage2={"hparams": {"hidden_size": 16}, "recipe": {"epochs": 1}})
    result = run_experiment(config, tiny_ws, device="cpu")
    fold = result.metrics["folds"][0]
    assert 0.0 <= fold["ua"] <= 1.0
    cfg = json.loads((result.folder / "config.json").read_text())
    derived = FeatureStore(tiny_ws.features).derived(cfg["digests"]["features"], fold["stage1_checkpoint_digest"])
    uid = (result.folder / "predictions.csv").read_text().splitlines()[1].split(",")[0]
    item = derived.read(uid, "orig")
    expected_dim = 3 * 4 * 4 if name == "alexnet_sru_sru_only" else fold["embed_dim"]
    assert item.shape == (3, expected_dim)  # N = 3 segments of stage-1 embeddings
    assert fold["embed_dim"] == expected_dim
