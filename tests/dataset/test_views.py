"""Views: shapes, masks, crops, segments, windows, resize, channels and segment aggregation."""

from __future__ import annotations

import pytest
import torch

from ser_pipeline.dataset.views import (
    ViewSpec,
    apply_view,
    crop_starts,
    flatten_segments,
    mean_segment_posteriors,
    window_count,
)
from ser_pipeline.errors import ConfigError


def ramp_batch(lengths: list[int], channels: int = 3, bands: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    """``x[b, c, f, t] = t + 1`` inside each utterance, 0 in the padding."""
    t_max = max(lengths)
    x = torch.zeros(len(lengths), channels, bands, t_max)
    for b, n in enumerate(lengths):
        x[b, :, :, :n] = torch.arange(1, n + 1, dtype=torch.float32)
    return x, torch.tensor(lengths)


def test_full_view_pads_and_masks() -> None:
    x, lengths = ramp_batch([5, 8])
    out = apply_view(ViewSpec(kind="full", frames=0), x, lengths)
    assert out.x.shape == (2, 3, 4, 8)
    assert out.mask.tolist() == [[True] * 5 + [False] * 3, [True] * 8]
    assert torch.all(out.x[0, :, :, 5:] == 0)


def test_fixed_view_centre_crops_long_and_pads_short() -> None:
    x, lengths = ramp_batch([10, 4])
    out = apply_view(ViewSpec(kind="fixed", frames=6, crop="centre"), x, lengths)
    assert out.x.shape == (2, 3, 4, 6)
    assert out.mask.tolist() == [[True] * 6, [True] * 4 + [False] * 2]  # issue 13: valid frames for masked pooling
    assert out.x[0, 0, 0].tolist() == [3, 4, 5, 6, 7, 8]  # start (10 - 6) // 2 = 2
    assert out.x[1, 0, 0].tolist() == [1, 2, 3, 4, 0, 0]


def test_random_crop_only_in_training_and_seeded() -> None:
    x, lengths = ramp_batch([40] * 8)
    spec = ViewSpec(kind="fixed", frames=10, crop="random")
    a = apply_view(spec, x, lengths, train=True, generator=torch.Generator().manual_seed(1)).x
    b = apply_view(spec, x, lengths, train=True, generator=torch.Generator().manual_seed(1)).x
    assert torch.equal(a, b)
    starts = a[:, 0, 0, 0] - 1
    assert starts.min() >= 0 and starts.max() <= 30 and len(set(starts.tolist())) > 1
    evaluation = apply_view(spec, x, lengths, train=False).x
    assert torch.all(evaluation[:, 0, 0, 0] == 16)  # centre: (40 - 10) // 2 + 1


def test_crop_starts_never_leave_the_utterance() -> None:
    lengths = torch.tensor([5, 50, 300])
    starts = crop_starts(lengths, 20, mode="random", generator=torch.Generator().manual_seed(0))
    assert starts[0] == 0 and 0 <= starts[1] <= 30 and 0 <= starts[2] <= 280


def test_segments_split_time_into_equal_parts() -> None:
    x, lengths = ramp_batch([12, 6])
    out = apply_view(ViewSpec(kind="segments", n_segments=3, frames=4), x, lengths)
    assert out.x.shape == (2, 3, 3, 4, 4)
    assert out.mask.all()
    # utterance 0, 12 frames: segments [1..4], [5..8], [9..12] resampled to 4 frames = themselves
    assert out.x[0, :, 0, 0].tolist() == [[1, 2, 3, 4], [5, 6, 7, 8], [9, 10, 11, 12]]
    # utterance 1, 6 frames: segments of 2 frames stretched linearly to 4 frames stay inside the segment
    seg = out.x[1, 1, 0, 0]
    assert seg.min() >= 3 and seg.max() <= 4 and seg[0] == 3 and seg[-1] == 4


def test_segments_mask_empty_segments_of_short_utterances() -> None:
    x, lengths = ramp_batch([2, 9])
    out = apply_view(ViewSpec(kind="segments", n_segments=3, frames=4), x, lengths)
    assert out.mask[0].tolist() == [False, True, True]  # 2 frames cannot fill 3 segments
    assert out.mask[1].all()


def test_windows_count_shift_and_mask() -> None:
    x, lengths = ramp_batch([64, 100, 200])
    out = apply_view(ViewSpec(kind="windows", frames=0, window=64, shift=32), x, lengths)
    assert window_count(lengths, 64, 32).tolist() == [1, 3, 6]
    assert out.x.shape == (3, 6, 3, 4, 64)
    assert out.mask.sum(dim=1).tolist() == [1, 3, 6]
    assert out.x[2, 1, 0, 0, 0] == 33  # second window starts at frame 32
    assert out.x[1, 2, 0, 0, -1] == 0  # last window of 100 frames is zero-padded past the end


def test_windows_after_fixed_crop_have_a_fixed_count() -> None:
    x, lengths = ramp_batch([50, 400])
    out = apply_view(ViewSpec(kind="windows", frames=300, window=64, shift=32), x, lengths)
    assert out.x.shape[1] == int(window_count(torch.tensor([300]), 64, 32)) == 9
    # real windows are those that cover the utterance (as without a crop): 50 frames give one, the
    # 300 frames cropped from 400 all nine; windows from frame 64 on are padding only
    assert out.mask.sum(dim=1).tolist() == [1, 9] == [int(window_count(torch.tensor([n]), 64, 32)) for n in (50, 300)]
    assert out.x[0, 0].any() and not out.x[0, 2:].any()


def test_resize_and_channel_choice() -> None:
    x, lengths = ramp_batch([30, 20])
    out = apply_view(ViewSpec(kind="fixed", frames=30, resize=(16, 12), channels=1), x, lengths)
    assert out.x.shape == (2, 1, 16, 12)
    two = apply_view(ViewSpec(kind="fixed", frames=30, channels=2), x, lengths)
    assert two.x.shape == (2, 2, 4, 30)
    mono = x[:, :1]
    three = apply_view(ViewSpec(kind="fixed", frames=30, channels=3), mono, lengths)
    assert three.x.shape == (2, 3, 4, 30) and torch.equal(three.x[:, 0], three.x[:, 2])


def test_segment_resize_keeps_segment_axis() -> None:
    x, lengths = ramp_batch([40])
    out = apply_view(ViewSpec(kind="segments", n_segments=5, frames=8, resize=(10, 10)), x, lengths)
    assert out.x.shape == (1, 5, 3, 10, 10)
    flat, mask = flatten_segments(out)
    assert flat.shape == (5, 3, 10, 10) and mask.shape == (5,)


def test_sequence_view_for_stage_two() -> None:
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).reshape(2, 1, 3, 4)  # (B, 1, D, S)
    out = apply_view(ViewSpec(kind="sequence", frames=0, channels=0, normalise="none"), x, torch.tensor([4, 2]))
    assert out.x.shape == (2, 4, 3)
    assert out.x[0, 1].tolist() == x[0, 0, :, 1].tolist()
    assert torch.all(out.x[1, 2:] == 0) and out.mask[1].tolist() == [True, True, False, False]


def test_mean_segment_posteriors_ignores_masked_segments() -> None:
    probs = torch.tensor([[[0.8, 0.2], [0.4, 0.6], [0.0, 1.0]]])
    mask = torch.tensor([[True, True, False]])
    assert torch.allclose(mean_segment_posteriors(probs, mask), torch.tensor([[0.6, 0.4]]))


@pytest.mark.parametrize(
    ("field", "value"),
    [("kind", "spiral"), ("channels", 4), ("n_segments", 0), ("shift", 0), ("resize", (0, 10)), ("normalise", "z")],
)
def test_invalid_view_names_the_field(field: str, value: object) -> None:
    with pytest.raises(ConfigError, match=field):
        ViewSpec(**{field: value})
