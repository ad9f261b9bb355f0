"""Spectrogram augmentation: Mixup / Horizontal Mixup formulas, Cutout, salt-and-pepper, the
ratio option and the mixed-label loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ser_pipeline.dataset.spec_augment import (
    SpecAugmentSpec,
    augment_batch,
    cutout,
    hmixup_weights,
    horizontal_mixup,
    mixup,
    salt_and_pepper,
    soft_cross_entropy,
)
from ser_pipeline.errors import ConfigError


def images(n: int = 4, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, 8, 20, generator=torch.Generator().manual_seed(seed))


def test_horizontal_mixup_with_a1_b0_c05_is_mixup_with_half() -> None:
    x1, x2 = images(seed=1), images(seed=2)
    h, w1, w2 = horizontal_mixup(x1, x2, a=1.0, b=0.0, c=0.5)
    m, l1, l2 = mixup(x1, x2, 0.5)
    assert torch.equal(h, m)
    assert torch.equal(h, 0.5 * x1 + 0.5 * x2)
    assert torch.allclose(w1, l1) and torch.allclose(w2, l2) and torch.allclose(w1, torch.full((4,), 0.5))


def test_horizontal_mixup_time_weights_follow_the_formula() -> None:
    a, b, c, T = 0.05, 1.25, 1.0, 20
    f1, f2 = hmixup_weights(T, a=a, b=b, c=c)
    for t in (0, 5, 15, 19):
        w = c * (a + b * t / T)
        assert f1[t].item() == pytest.approx(min(1.0, w))
        assert f2[t].item() == pytest.approx(max(0.0, 1.0 - w))
    assert f1[-1] == 1.0 and f2[-1] == 0.0  # w > 1 near the end: only I1
    x1, x2 = torch.ones(1, 1, 2, T), torch.zeros(1, 1, 2, T)
    mixed, w1, w2 = horizontal_mixup(x1, x2, a=a, b=b, c=c)
    assert torch.allclose(mixed[0, 0, 0], f1)
    assert w1.item() == pytest.approx(f1.mean().item()) and w2.item() == pytest.approx(f2.mean().item())
    assert (w1 + w2).item() == pytest.approx(1.0)


def test_mixup_per_item_lambda() -> None:
    x1, x2 = torch.ones(2, 1, 1, 3), torch.zeros(2, 1, 1, 3)
    out, w1, w2 = mixup(x1, x2, torch.tensor([0.25, 0.75]))
    assert out[:, 0, 0, 0].tolist() == [0.25, 0.75] and w2.tolist() == [0.75, 0.25]


def test_cutout_zeroes_rectangles_shared_by_channels() -> None:
    x = torch.ones(3, 2, 10, 30)
    out = cutout(x, holes=1, max_frac=(0.3, 0.3), generator=torch.Generator().manual_seed(0))
    zero = out == 0
    assert zero.any() and torch.equal(zero[:, 0], zero[:, 1])
    for i in range(3):
        rows = zero[i, 0].any(dim=1).nonzero().flatten()
        cols = zero[i, 0].any(dim=0).nonzero().flatten()
        assert len(rows) <= 3 and len(cols) <= 9
        assert int(zero[i, 0].sum()) == len(rows) * len(cols)  # a rectangle
    assert torch.all(x == 1)  # input untouched


def test_salt_and_pepper_fraction_and_values() -> None:
    x = torch.randn(2, 1, 50, 50, generator=torch.Generator().manual_seed(3))
    out = salt_and_pepper(x, amount=0.1, generator=torch.Generator().manual_seed(0))
    changed = out != x
    assert 0.07 < changed.float().mean().item() < 0.13
    hi = x.reshape(2, -1).amax(dim=1)[:, None, None, None].expand_as(x)
    lo = x.reshape(2, -1).amin(dim=1)[:, None, None, None].expand_as(x)
    assert torch.all((out[changed] == hi[changed]) | (out[changed] == lo[changed]))


def test_augment_batch_adds_ratio_of_mixed_samples_with_soft_labels() -> None:
    x = images(10)
    y = F.one_hot(torch.arange(10) % 3, 3).float()
    spec = SpecAugmentSpec(hmixup=(0.05, 1.25, 1.0), ratio=0.3)
    out, targets, mask = augment_batch(x, y, spec, generator=torch.Generator().manual_seed(0))
    assert out.shape[0] == 13 and targets.shape == (13, 3) and mask is None
    assert torch.equal(out[:10], x)
    assert torch.allclose(targets.sum(dim=1), torch.ones(13))
    again, targets2, _ = augment_batch(x, y, spec, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out, again) and torch.equal(targets, targets2)
    seg_mask = torch.ones(10, 4, dtype=torch.bool)
    _, _, m = augment_batch(images(10)[:, None].expand(10, 4, 3, 8, 20), y, SpecAugmentSpec(mixup=0.4), mask=seg_mask,
                            generator=torch.Generator().manual_seed(0))
    assert m.shape == (13, 4)


def test_soft_cross_entropy_matches_weighted_cross_entropy_on_hard_labels() -> None:
    logits = torch.randn(6, 4, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 1, 2, 3, 1, 1])
    w = torch.tensor([1.0, 0.5, 2.0, 1.5])
    soft = soft_cross_entropy(logits, F.one_hot(y, 4).float(), w)
    assert soft.item() == pytest.approx(F.cross_entropy(logits, y, weight=w).item(), rel=1e-6)
    assert soft_cross_entropy(logits, F.one_hot(y, 4).float()).item() == pytest.approx(F.cross_entropy(logits, y).item(), rel=1e-6)


def test_soft_cross_entropy_of_a_mixed_label_is_the_weighted_sum() -> None:
    logits = torch.randn(1, 3, generator=torch.Generator().manual_seed(1))
    mixed = torch.tensor([[0.3, 0.7, 0.0]])
    expected = 0.3 * F.cross_entropy(logits, torch.tensor([0])) + 0.7 * F.cross_entropy(logits, torch.tensor([1]))
    assert soft_cross_entropy(logits, mixed).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize(("field", "value"), [("ratio", 0.0), ("salt_pepper", 1.5), ("hmixup", (0.1, 1.0)), ("cutout", -1)])
def test_invalid_settings_name_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        SpecAugmentSpec(**{field: value})


@pytest.mark.parametrize("shape, mask_shape", [((6, 3, 20, 50), (6, 50)), ((4, 5, 2, 16, 12), (4, 5))])
def test_span_masks_equal_a_masked_fill_of_the_same_spans(shape, mask_shape) -> None:
    """The product with the keep mask (issue 12) gives the tensor a masked_fill with 0 gave."""
    from ser_pipeline.dataset.spec_augment import _spans, span_masks

    g = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=g) * 2 - 0.5
    valid = torch.arange(mask_shape[1])[None, :] < torch.randint(5, mask_shape[1] + 1, (mask_shape[0], 1), generator=g)
    spec = SpecAugmentSpec(freq_masks=2, freq_width=5, time_masks=2, time_width=6)
    out = span_masks(x, spec, mask=valid, generator=torch.Generator().manual_seed(9))
    # the reference: the same draws, then masked_fill
    g2 = torch.Generator().manual_seed(9)
    N, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    lengths = valid.long().sum(dim=1) if x.ndim == 4 else torch.full((N,), W)
    f_hit = _spans(N, H, 2, torch.full((N,), 5), torch.full((N,), H), g2)
    t_hit = _spans(N, W, 2, torch.minimum(torch.full((N,), 6), lengths // 5), lengths, g2)
    drop = (f_hit[:, :, None] | t_hit[:, None, :]).reshape((N,) + (1,) * (x.ndim - 3) + (H, W))
    assert torch.equal(out, x.masked_fill(drop, 0.0))
    assert drop.any() and (out == 0).sum() >= drop.expand_as(x).sum()
