"""The trainer on tiny synthetic tables: learning, determinism, NaN handling, resume, early
stopping, segment aggregation, two-stage helpers and speaker pre-training."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ser_pipeline.dataset.spec_augment import SpecAugmentSpec
from ser_pipeline.dataset.tables import FeatureTable, _pack
from ser_pipeline.dataset.views import ViewSpec
from ser_pipeline.errors import ConfigError, TrainingError
from ser_pipeline.inference.forward import embed_table, predict_proba, sequence_table
from ser_pipeline.models.baselines import PlainCNN
from ser_pipeline.training.config import OPTIMIZERS, TrainConfig, resolve_device, seed_everything
from ser_pipeline.training.loop import fit, state_digest
from ser_pipeline.training.speaker import pretrain_speakers

VIEW = ViewSpec(kind="fixed", frames=24, channels=0, normalise="none")
K = 3


def separable(n: int, seed: int, speakers: int = 2) -> FeatureTable:
    """Class ``y`` lights up frequency band ``y``: ``(2, 12, T)`` items, T in 16..31."""
    rng = np.random.default_rng(seed)
    arrays, labels = [], []
    for i in range(n):
        y = i % K
        a = rng.standard_normal((2, 12, int(rng.integers(16, 32)))).astype(np.float32) * 0.3
        a[:, 4 * y : 4 * y + 4] += 3.0
        arrays.append(a)
        labels.append(y)
    spk = [i % speakers for i in range(n)]
    return _pack(arrays, labels, spk, [f"u{seed}-{i}" for i in range(n)], ["orig"] * n, [f"s{j}" for j in range(speakers)])


def tiny_cnn(seed: int = 0) -> PlainCNN:
    seed_everything(seed)
    return PlainCNN(K, 2, channels=(8, 8), dropout=0.2)


CONFIG = TrainConfig(epochs=4, batch_size=8, lr=1e-2, patience=None, seed=3)


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_fit_learns_a_separable_problem_and_reports_history() -> None:
    train, val = separable(36, 0), separable(15, 1)
    model = tiny_cnn()
    result = fit(model, train, val, view=VIEW, config=CONFIG, n_classes=K)
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    assert {"train_loss", "val_loss", "val_ua", "utt_per_s", "data_share"} <= set(result.history[0])
    assert result.best_val_ua >= 0.9
    assert result.best_val_ua == max(h["val_ua"] for h in result.history)
    probs = predict_proba(model, val, VIEW)
    assert probs.shape == (15, K) and np.allclose(probs.sum(axis=1), 1.0)
    assert 0 <= result.timing["data_share"] <= 1


def test_same_seed_same_weights_and_history() -> None:
    train, val = separable(24, 0), separable(9, 1)
    runs = []
    for _ in range(2):
        model = tiny_cnn()
        result = fit(model, train, val, view=VIEW, config=CONFIG.replace(epochs=2), n_classes=K,
                     spec_augment=SpecAugmentSpec(hmixup=(0.05, 1.25, 1.0), cutout=1))
        runs.append((state_digest(model), [(h["train_loss"], h["val_ua"]) for h in result.history]))
    assert runs[0] == runs[1]


class NaNAfter(nn.Module):
    """A linear model whose logits turn NaN from the ``bad_call``-th training forward on."""

    def __init__(self, bad_call: int) -> None:
        super().__init__()
        self.lin = nn.Linear(2 * 12 * 24, K)
        self.calls = 0
        self.bad_call = bad_call

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.lin(x.flatten(1))
        if self.training:
            self.calls += 1
            if self.calls >= self.bad_call:
                return out * float("nan")
        return out


def test_nan_loss_names_epoch_and_batch_and_keeps_last_checkpoint(tmp_path: Path) -> None:
    train, val = separable(24, 0), separable(6, 1)  # 3 batches of 8 per epoch
    model = NaNAfter(bad_call=5)  # epoch 2, batch 1 (0-based)
    with pytest.raises(TrainingError, match=r"epoch 2, batch 1.*last good checkpoint kept"):
        fit(model, train, val, view=VIEW, config=CONFIG, n_classes=K, fold="f0", checkpoint_dir=tmp_path)
    ck = torch.load(tmp_path / "last.pt", weights_only=False)
    assert ck["epoch"] == 1 and all(torch.isfinite(v).all() for v in ck["model"].values())


def test_resume_after_a_crash_reproduces_an_uninterrupted_run(tmp_path: Path) -> None:
    train, val = separable(24, 0), separable(9, 1)
    full_model = tiny_cnn()
    full = fit(full_model, train, val, view=VIEW, config=CONFIG, n_classes=K)

    class Crash(Exception):
        pass

    def crash_at_3(fold: str, epoch: int, metrics: dict[str, float]) -> None:
        if epoch == 3:
            raise Crash

    with pytest.raises(Crash):
        fit(tiny_cnn(), train, val, view=VIEW, config=CONFIG, n_classes=K, checkpoint_dir=tmp_path, callbacks=[crash_at_3])
    assert torch.load(tmp_path / "last.pt", weights_only=False)["epoch"] == 2
    seen: list[int] = []
    resumed_model = tiny_cnn(seed=99)  # different init: the checkpoint must overwrite it
    resumed = fit(resumed_model, train, val, view=VIEW, config=CONFIG, n_classes=K, checkpoint_dir=tmp_path,
                  callbacks=[lambda f, e, m: seen.append(e)])
    assert seen == [3, 4]
    assert [h["train_loss"] for h in resumed.history] == [h["train_loss"] for h in full.history]
    assert state_digest(resumed_model) == state_digest(full_model)
    assert (tmp_path / "best.pt").exists()


def test_early_stopping_on_validation_ua() -> None:
    train, val = separable(12, 0), separable(6, 1)
    result = fit(tiny_cnn(), train, val, view=VIEW, config=CONFIG.replace(epochs=10, lr=1e-12, patience=2), n_classes=K)
    assert result.stopped_early and len(result.history) == 3 and result.best_epoch == 1


def test_cuda_requested_without_cuda_is_a_clear_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    with pytest.raises(TrainingError, match="CUDA is not available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_unknown_optimizer_lists_valid_names() -> None:
    with pytest.raises(ConfigError, match="adam.*nadam.*sgd"):
        TrainConfig(optimizer="lbfgs")
    params = [nn.Parameter(torch.zeros(2))]
    assert isinstance(OPTIMIZERS.get("nadam")(params, CONFIG), torch.optim.NAdam)
    sgd = OPTIMIZERS.get("sgd")(params, CONFIG.replace(optimizer="sgd", momentum=0.8))
    assert sgd.param_groups[0]["momentum"] == 0.8


class SegmentScorer(nn.Module):
    """Logits from the mean value of a segment: ``(N, C, H, W) -> (N, 2)`` = ``[m, -m]``."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean(dim=(1, 2, 3)) * self.scale
        return torch.stack([m, -m], dim=1)


def test_segment_models_average_segment_posteriors_per_utterance() -> None:
    a = np.zeros((1, 2, 8), dtype=np.float32)
    a[..., 4:] = 2.0  # first half 0, second half 2
    table = _pack([a], [0], [0], ["u"], ["orig"], ["s"])
    view = ViewSpec(kind="segments", n_segments=2, frames=4, channels=0, normalise="none")
    probs = predict_proba(SegmentScorer(), table, view)
    seg = torch.softmax(torch.tensor([[0.0, 0.0], [2.0, -2.0]]), dim=1).mean(dim=0)
    assert np.allclose(probs[0], seg.numpy(), atol=1e-6)


def test_two_stage_embeddings_feed_a_sequence_model() -> None:
    table = separable(6, 0)
    view = ViewSpec(kind="segments", n_segments=3, frames=8, channels=0, normalise="none")
    model = tiny_cnn()
    emb = embed_table(model, table, view)
    assert len(emb) == 6 and all(e.shape == (3, 8) for e in emb)
    seq = sequence_table(table, emb)
    assert seq.shape == (1, 8) and seq.lengths.tolist() == [3] * 6

    class MeanHead(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(8, K)

        def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, S, D)
            return self.lin(x.mean(dim=1))

    view2 = ViewSpec(kind="sequence", frames=0, channels=0, normalise="none")
    result = fit(MeanHead(), seq, seq, view=view2, config=CONFIG.replace(epochs=1), n_classes=K)
    assert len(result.history) == 1 and np.isfinite(result.history[0]["train_loss"])


def test_speaker_pretraining_trains_the_backbone_then_freezes_it() -> None:
    train = separable(24, 0, speakers=3)
    model = tiny_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    stage1 = pretrain_speakers(model, train, view=VIEW, config=CONFIG.replace(epochs=1), fold="f")
    assert len(stage1.history) == 1
    body = "body.0.body.0.weight"
    assert not torch.equal(model.state_dict()[body], before[body])  # stage 1 trained the backbone
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["head.weight", "head.bias"]
    frozen = model.state_dict()[body].clone()
    fit(model, train, separable(6, 1), view=VIEW, config=CONFIG.replace(epochs=1), n_classes=K)
    assert torch.equal(model.state_dict()[body], frozen)


def test_speaker_pretraining_without_freezing_fine_tunes_the_backbone() -> None:
    train = separable(24, 0, speakers=3)
    model = tiny_cnn()
    pretrain_speakers(model, train, view=VIEW, config=CONFIG.replace(epochs=1), fold="f", freeze=False)
    assert all(p.requires_grad for p in model.parameters())
    body = "body.0.body.0.weight"
    pretrained = model.state_dict()[body].clone()
    fit(model, train, separable(6, 1), view=VIEW, config=CONFIG.replace(epochs=1), n_classes=K)
    assert not torch.equal(model.state_dict()[body], pretrained)  # stage 2 moved the speaker-trained weights
