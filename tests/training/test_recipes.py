"""Issue 13 recipe parts on tiny synthetic tables: precise-BN, label smoothing, warm-up + cosine,
refit-mode fit, random crops, SpecAugment masks, masked pooling, speaker normalisation and the
weights-only checkpoint load."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from ser_pipeline.dataset.normalise import floor_silence, normalise_tables
from ser_pipeline.dataset.spec_augment import SpecAugmentSpec, span_masks
from ser_pipeline.dataset.tables import _pack
from ser_pipeline.dataset.views import ViewSpec, apply_view, frames_for
from ser_pipeline.errors import ConfigError, TrainingError
from ser_pipeline.inference.forward import (
    embed_speaker_bn,
    embed_table,
    precise_bn,
    predict_proba,
    predict_speaker_bn,
)
from ser_pipeline.models.baselines import PlainCNN
from ser_pipeline.training.config import TrainConfig, refit_epoch_count, seed_everything, warmup_cosine_factor
from ser_pipeline.training.loop import fit, smooth_targets

pytestmark = pytest.mark.usefixtures("torch_one_thread")

K = 3


def table(n: int, seed: int, *, speakers: int = 2, bands: int = 12, offset: float = 0.0):
    """``(2, bands, T)`` items (T in 16..31), class ``y`` lights up bands ``4y..4y+3``."""
    rng = np.random.default_rng(seed)
    arrays, labels = [], []
    for i in range(n):
        y = i % K
        a = rng.standard_normal((2, bands, int(rng.integers(16, 32)))).astype(np.float32) * 0.3 + offset
        a[:, 4 * y : 4 * y + 4] += 3.0
        arrays.append(a)
        labels.append(y)
    spk = [i % speakers for i in range(n)]
    return _pack(arrays, labels, spk, [f"u{seed}-{i}" for i in range(n)], ["orig"] * n,
                 [f"s{j}" for j in range(speakers)])


VIEW = ViewSpec(kind="fixed", frames=24, channels=0, normalise="none")


class BNProbe(nn.Module):
    """A BatchNorm on the input (so its statistics are those of the view) then a linear head."""

    def __init__(self, channels: int = 2) -> None:
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.conv = nn.Conv2d(channels, 4, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(4)
        self.head = nn.Linear(4, K)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.bn2(self.conv(self.bn(x)))).mean(dim=(2, 3)))


def view_pass(t, view: ViewSpec) -> torch.Tensor:
    x, lengths = t.batch(torch.arange(len(t)))
    return apply_view(view, x, lengths, train=False).x


# -- precise-BN -------------------------------------------------------------------------------


def test_precise_bn_statistics_equal_a_pass_over_the_training_set() -> None:
    train = table(40, 0)
    seed_everything(0)
    model = BNProbe()
    with torch.no_grad():  # stale statistics, as after training with momentum
        model.bn.running_mean.fill_(5.0)
        model.bn.running_var.fill_(9.0)
    weights = {k: v.clone() for k, v in model.state_dict().items() if "running" not in k and "num_batches" not in k}
    assert precise_bn(model, train, VIEW, batch_size=7) == 2  # 40 items in uneven batches
    x = view_pass(train, VIEW)  # (N, C, F, frames): exactly what the BN sees
    mean = x.mean(dim=(0, 2, 3))
    assert torch.allclose(model.bn.running_mean, mean, atol=1e-5)
    # one batch holding the whole table: the running variance is the set's (unbiased) variance
    precise_bn(model, train, VIEW, batch_size=64)
    var = x.permute(1, 0, 2, 3).reshape(2, -1).var(dim=1, unbiased=True)
    assert torch.allclose(model.bn.running_mean, mean, atol=1e-5)
    assert torch.allclose(model.bn.running_var, var, rtol=1e-4)
    # weights unchanged; the model's mode and the BN momentum are restored
    for k, v in weights.items():
        assert torch.equal(model.state_dict()[k], v)
    assert model.training and model.bn.momentum == 0.1


def test_precise_bn_runs_before_validation_in_fit() -> None:
    train, val = table(24, 0), table(9, 1)
    seed_everything(0)
    model = BNProbe()
    config = TrainConfig(epochs=1, batch_size=8, lr=1e-2, patience=None, precise_bn=True)
    fit(model, train, val, view=VIEW, config=config, n_classes=K)
    mean = view_pass(train, VIEW).mean(dim=(0, 2, 3))
    assert torch.allclose(model.bn.running_mean, mean, atol=1e-5)
    seed_everything(0)
    stale = BNProbe()
    fit(stale, train, val, view=VIEW, config=config.replace(precise_bn=False), n_classes=K)
    assert not torch.allclose(stale.bn.running_mean, mean, atol=1e-3)  # momentum stats lag


def test_speaker_bn_scores_each_speaker_with_its_own_statistics_and_restores_the_model() -> None:
    """AdaBN (``bn_statistics="speaker"``): every speaker's items are scored after a precise-BN pass
    over that speaker's items alone; labels are never read; the model's statistics come back."""
    test = table(30, 2, speakers=3)
    shifted = [test.select(test.speakers == s) for s in range(3)]
    seed_everything(0)
    model = BNProbe()
    precise_bn(model, table(40, 0), VIEW)  # the "training" statistics
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probs = predict_speaker_bn(model, test, VIEW, batch_size=4, bf16=False)
    for k, v in before.items():
        assert torch.equal(model.state_dict()[k], v), k
    assert probs.shape == (30, K) and np.allclose(probs.sum(axis=1), 1.0)
    for s, part in enumerate(shifted):  # the reference: precise-BN on the speaker, then score it
        ref = BNProbe()
        ref.load_state_dict(before)
        precise_bn(ref, part, VIEW, batch_size=4)  # same batches: precise-BN averages batch variances
        expected = predict_proba(ref, part, VIEW, bf16=False)
        assert np.allclose(probs[(test.speakers == s).numpy()], expected, atol=1e-6)
    shuffled = test.select(torch.ones(30, dtype=torch.bool))
    shuffled.labels = shuffled.labels[torch.randperm(30)]
    assert np.array_equal(predict_speaker_bn(model, shuffled, VIEW, batch_size=4, bf16=False), probs)
    assert not np.allclose(predict_proba(model, test, VIEW, bf16=False), probs, atol=1e-3)


class EmbedProbe(BNProbe):
    """BNProbe with a stage-1 ``embed``: the pooled features before the head ``(B, 4)``."""

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn2(self.conv(self.bn(x)))).mean(dim=(2, 3))


def test_speaker_bn_embeddings_use_each_speakers_own_statistics() -> None:
    test = table(18, 3, speakers=3)
    seed_everything(0)
    model = EmbedProbe()
    precise_bn(model, table(40, 0), VIEW)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    got = embed_speaker_bn(model, test, VIEW, batch_size=4, bf16=False)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in before.items())
    assert len(got) == 18 and all(e.shape == (1, 4) for e in got)
    for s in range(3):
        ref = EmbedProbe()
        ref.load_state_dict(before)
        part = test.select(test.speakers == s)
        precise_bn(ref, part, VIEW, batch_size=4)
        rows = torch.nonzero(test.speakers == s).flatten().tolist()
        for i, e in zip(rows, embed_table(ref, part, VIEW, bf16=False), strict=True):
            np.testing.assert_allclose(got[i], e, atol=1e-6)
    trained = embed_table(model, test, VIEW, bf16=False)
    assert not np.allclose(np.concatenate(trained), np.concatenate(got), atol=1e-3)


def test_speaker_bn_is_validated_and_leaves_old_identities_alone() -> None:
    with pytest.raises(ConfigError, match="bn_statistics"):
        TrainConfig(bn_statistics="test")
    # digests of these configs before the field existed (commit 9e1e03f): stored experiments keep their ids
    assert TrainConfig().digest() == "8cb24dd40e50962c"
    assert TrainConfig(epochs=7, lr=3e-3).digest() == "015132e5a0719958"
    assert TrainConfig(bn_statistics="speaker").digest() != TrainConfig().digest()


# -- schedule, smoothing, refit mode -----------------------------------------------------------


def test_warmup_cosine_factor_and_label_smoothing() -> None:
    f = [warmup_cosine_factor(s, total=10, warmup=2) for s in range(10)]
    assert f[0] == pytest.approx(0.5) and f[1] == pytest.approx(1.0) and f[2] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[2:], f[3:], strict=False)) and f[-1] < 0.05
    y = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    assert torch.allclose(smooth_targets(y, 0.2), torch.tensor([[0.85, 0.05, 0.05, 0.05]]))


def test_refit_epoch_count_is_the_validation_choice_or_the_whole_budget() -> None:
    best = TrainConfig(epochs=15, refit_epochs="best")
    assert refit_epoch_count(best, 4, 15) == 4
    assert refit_epoch_count(best.replace(refit_epochs="budget"), 4, 15) == 15
    assert refit_epoch_count(best.replace(refit_epochs="budget"), 4, 9) == 9  # a fit that stopped early
    with pytest.raises(ConfigError, match="refit_epochs"):
        TrainConfig(refit_epochs="last")


def test_refit_mode_runs_the_chosen_epochs_on_the_full_schedule() -> None:
    train = table(24, 0)
    config = TrainConfig(epochs=6, batch_size=8, lr=1e-2, optimizer="adamw", schedule="warmup_cosine",
                         warmup_epochs=1, patience=None)
    seed_everything(0)
    model = PlainCNN(K, 2, channels=(4,), dropout=0.0)
    result = fit(model, train, None, view=VIEW, config=config, n_classes=K, stop_epoch=3)
    assert [h["epoch"] for h in result.history] == [1, 2, 3] and result.best_epoch == 3
    lrs = [h["lr"] for h in result.history]
    steps = math.ceil(24 / 8)
    # the LR after epoch e follows the 6-epoch curve, not a 3-epoch one
    expected = [1e-2 * warmup_cosine_factor(e * steps, total=6 * steps, warmup=steps) for e in (1, 2, 3)]
    assert lrs == pytest.approx(expected)
    assert all(math.isnan(h["val_ua"]) for h in result.history)


# -- crops, masks, pooling ---------------------------------------------------------------------


def test_random_crop_is_seeded_and_differs_between_epochs() -> None:
    t = table(16, 0)
    x, lengths = t.batch(torch.arange(16))
    view = ViewSpec(kind="fixed", frames=8, channels=0, normalise="none", crop="random")

    def epochs(seed: int) -> list[torch.Tensor]:
        gen = torch.Generator().manual_seed(seed)  # the training loop's generator, drawn once per batch
        return [apply_view(view, x, lengths, train=True, generator=gen).x for _ in range(2)]

    a, b = epochs(3), epochs(3)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # seeded
    assert not torch.equal(a[0], a[1])  # a new crop every epoch
    centre = apply_view(view, x, lengths, train=False).x
    assert torch.equal(centre, apply_view(view, x, lengths, train=False).x)  # evaluation: centre crop
    starts = (lengths - 8).clamp(min=0) // 2
    assert torch.equal(centre[0, :, :, 0], x[0, :, :, starts[0]])


def test_span_masks_stay_inside_the_valid_frames() -> None:
    x = torch.ones(6, 2, 12, 40)
    mask = torch.arange(40)[None, :] < torch.tensor([40, 30, 20, 10, 40, 25])[:, None]
    spec = SpecAugmentSpec(freq_masks=2, freq_width=3, time_masks=2, time_width=10)
    out = span_masks(x, spec, mask=mask, generator=torch.Generator().manual_seed(0))
    zero_t = (out == 0).all(dim=2).all(dim=1)  # (N, T) frames masked in every band
    lengths = mask.sum(1)
    for i in range(6):
        masked = torch.nonzero(zero_t[i]).flatten()
        assert masked.numel() <= 2 * min(10, int(lengths[i]) // 5)
        assert bool((masked < lengths[i]).all())
    zero_f = (out == 0).all(dim=3).all(dim=1)  # (N, F)
    assert int(zero_f.sum(dim=1).max()) <= 6 and int(zero_f.sum()) > 0
    same = span_masks(x, spec, mask=mask, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, same)


def test_masked_pooling_ignores_padding() -> None:
    seed_everything(0)
    model = PlainCNN(K, 2, channels=(4, 8, 8, 8), dropout=0.0).eval()
    utt = torch.randn(1, 2, 12, 96)
    lengths = torch.tensor([96])

    def logits(frames: int, pool: str) -> torch.Tensor:
        model.pool = pool
        vb = apply_view(ViewSpec(kind="fixed", frames=frames, channels=0, normalise="none"), utt, lengths)
        with torch.no_grad():
            return model(vb.x, mask=vb.mask)

    assert torch.allclose(logits(160, "masked"), logits(320, "masked"), atol=1e-5)
    assert not torch.allclose(logits(160, "avg"), logits(320, "avg"), atol=1e-3)  # padding dilutes plain pooling


def test_frames_from_the_corpus_quantile() -> None:
    lengths = torch.arange(1, 101)
    view = ViewSpec(kind="fixed", frames=300, frames_quantile=0.9, time_pool=2)
    out = frames_for(view, lengths)
    assert out.frames == 45 and out.frames_quantile == 0.0  # p90 of 1..100 = 90.1 -> 90 frames -> 45 at time_pool 2
    assert frames_for(view, torch.arange(1, 102)).frames == 46  # p90 = 91 -> ceil(91 / 2)
    assert frames_for(ViewSpec(kind="fixed", frames=300), lengths).frames == 300


# -- normalisation and silence -----------------------------------------------------------------


def test_speaker_normalisation_uses_no_test_label_and_no_training_data_for_an_unseen_speaker() -> None:
    train = table(12, 0, speakers=2)
    test = table(9, 1, speakers=2, offset=4.0)
    test = _pack([test.item(i) for i in range(len(test))], test.labels, torch.full((9,), 2),
                 test.utterance_ids, test.variants, ["s0", "s1", "s2"])
    train = _pack([train.item(i) for i in range(len(train))], train.labels, train.speakers, train.utterance_ids,
                  train.variants, ["s0", "s1", "s2"])
    a = normalise_tables({"train": train, "test": test}, "speaker")
    shuffled = test.with_labels(torch.roll(test.labels, 1))
    b = normalise_tables({"train": train, "test": shuffled}, "speaker")
    assert torch.equal(a["test"].frames, b["test"].frames)  # labels play no part
    other_train = train.with_labels(train.labels)
    other_train = type(train)(**{**train.__dict__, "frames": train.frames * 3 + 1})
    c = normalise_tables({"train": other_train, "test": test}, "speaker")
    assert torch.allclose(a["test"].frames, c["test"].frames)  # the unseen speaker: its own statistics only
    own = a["test"].frames.double()
    assert own.mean(dim=0).abs().max() < 1e-4 and (own.std(dim=0) - 1).abs().max() < 0.02


def test_silence_floor_lifts_digital_silence_only() -> None:
    a = np.full((2, 4, 10), -1.0, dtype=np.float32)
    a[0, :, 5:] = math.log(1e-10)  # digital silence in the static channel
    t = _pack([a], [0], [0], ["u"], ["orig"], ["s"])
    out = floor_silence(t, 80.0).item(0)
    floor = -1.0 - 80.0 / (10 / math.log(10))
    assert torch.allclose(out[0, :, 5:], torch.full((4, 5), floor))
    assert torch.equal(out[0, :, :5], torch.full((4, 5), -1.0)) and torch.equal(out[1], torch.as_tensor(a[1]))


# -- checkpoints -------------------------------------------------------------------------------


class Arbitrary:
    """Not a tensor or a plain container: unpickling it would run code."""


def test_a_checkpoint_holding_an_arbitrary_object_is_refused(tmp_path: Path) -> None:
    train, val = table(12, 0), table(6, 1)
    ckdir = tmp_path / "ck"
    ckdir.mkdir()
    torch.save({"digest": "x", "fold": "fold", "payload": Arbitrary()}, ckdir / "last.pt")
    seed_everything(0)
    model = PlainCNN(K, 2, channels=(4,), dropout=0.0)
    with pytest.raises(TrainingError, match="refused"):
        fit(model, train, val, view=VIEW, config=TrainConfig(epochs=1, batch_size=8), n_classes=K,
            checkpoint_dir=ckdir)


def test_pooling_the_table_once_equals_pooling_every_batch() -> None:
    from ser_pipeline.dataset.normalise import pool_table
    from ser_pipeline.dataset.views import pool_time

    t = table(10, 3)
    pooled = pool_table(t, 3)
    x, lengths = t.batch(torch.arange(10))
    per_batch, per_lengths = pool_time(x, lengths, 3)
    px, plengths = pooled.batch(torch.arange(10))
    assert torch.equal(plengths, per_lengths) and torch.equal(plengths, (t.lengths + 2) // 3)
    assert torch.allclose(px, per_batch[..., : px.shape[3]], atol=1e-6)
    view = ViewSpec(kind="fixed", frames=7, channels=0, normalise="none")
    a = apply_view(view.replace(time_pool=3), x, lengths).x
    b = apply_view(view, px, plengths).x
    assert torch.allclose(a, b, atol=1e-6)
