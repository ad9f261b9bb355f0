"""The cropping views read straight from a preloaded table (issue 12) give the same tensors, masks
and generator draws as the previous algorithm on the padded batch (kept below as the reference)."""

from __future__ import annotations

import gc
import itertools

import pytest
import torch
import torch.nn.functional as F

from ser_pipeline.dataset import tables as tables_module
from ser_pipeline.dataset.resample import linear_taps
from ser_pipeline.dataset.spec_augment import (
    SpecAugmentSpec,
    augment_batch,
    changes_batch,
    span_draw,
    span_masks,
)
from ser_pipeline.dataset.tables import _pack
from ser_pipeline.dataset.views import (
    ViewBatch,
    ViewSpec,
    apply_view,
    crop_starts,
    time_mask,
    view_items,
)

# ----------------------------------------------------------------------------------------------
# The previous algorithm (views.py before issue 12), verbatim in substance: padded batch,
# repeat_interleave per segment/window, gathers on every stored channel, channels chosen last.


def _old_select(x: torch.Tensor, channels: int) -> torch.Tensor:
    if channels == 0 or x.shape[1] == channels:
        return x
    if x.shape[1] >= channels:
        return x[:, :channels]
    return x.expand(-1, channels, -1, -1)


def _old_finish(x: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    x = _old_select(x, spec.channels)
    if spec.resize is None or tuple(x.shape[-2:]) == tuple(spec.resize):
        return x
    return F.interpolate(x, size=tuple(spec.resize), mode="bilinear", align_corners=False)


def _old_gather(x, lengths, starts, frames):
    B, C, Fb, T = x.shape
    t = starts[:, None] + torch.arange(frames)[None, :]
    valid = t < lengths[:, None]
    idx = t.clamp(max=max(T - 1, 0))
    out = torch.gather(x, 3, idx[:, None, None, :].expand(B, C, Fb, frames))
    return out * valid[:, None, None, :].to(x.dtype)


def _old_resample(x, begin, end, frames):
    B, C, Fb, T = x.shape
    span = (end - begin).clamp(min=1).to(x.dtype)
    k = torch.arange(frames, dtype=x.dtype)
    pos = begin[:, None].to(x.dtype) + (k[None, :] + 0.5) * span[:, None] / frames - 0.5
    lo_bound = begin[:, None].to(x.dtype)
    hi_bound = (begin + (end - begin).clamp(min=1) - 1)[:, None].to(x.dtype)
    pos = torch.maximum(torch.minimum(pos, hi_bound), lo_bound)
    lo = pos.floor().long().clamp(0, T - 1)
    hi = torch.minimum((lo + 1).clamp(max=T - 1), hi_bound.long())
    frac = (pos - lo.to(x.dtype))[:, None, None, :]
    g = lambda i: torch.gather(x, 3, i[:, None, None, :].expand(B, C, Fb, frames))  # noqa: E731
    return g(lo) * (1 - frac) + g(hi) * frac


def _old_view(spec: ViewSpec, x, lengths, train, generator) -> ViewBatch:
    mode = spec.crop if (spec.crop != "random" or train) else "centre"
    if spec.kind == "fixed":
        starts = crop_starts(lengths, spec.frames, mode=mode, generator=generator)
        mask = time_mask((lengths - starts).clamp(max=spec.frames), spec.frames)
        return ViewBatch(_old_finish(_old_gather(x, lengths, starts, spec.frames), spec), mask)
    B = x.shape[0]
    if spec.kind == "segments":
        S = spec.n_segments
        j = torch.arange(S)
        begin, end = (lengths[:, None] * j[None, :]) // S, (lengths[:, None] * (j[None, :] + 1)) // S
        seg = _old_finish(_old_resample(x.repeat_interleave(S, dim=0), begin.reshape(-1), end.reshape(-1), spec.frames),
                          spec)
        return ViewBatch(seg.reshape(B, S, *seg.shape[1:]), end > begin)
    real = lengths  # valid frames of each (cropped) utterance: windows past them are not real (stop 12)
    if spec.frames:
        starts = crop_starts(lengths, spec.frames, mode=mode, generator=generator)
        x = _old_gather(x, lengths, starts, spec.frames)
        real = (lengths - starts).clamp(max=spec.frames)
        lengths = torch.full_like(lengths, spec.frames)

    def count(n: torch.Tensor) -> torch.Tensor:
        return 1 + torch.div((n - spec.window).clamp(min=0) + spec.shift - 1, spec.shift, rounding_mode="floor")

    counts = count(real)
    S = int(count(lengths).max())
    starts = (torch.arange(S)[None, :] * spec.shift).expand(B, S)
    win = _old_gather(x.repeat_interleave(S, dim=0), lengths.repeat_interleave(S), starts.reshape(-1), spec.window)
    win = _old_finish(win, spec)
    return ViewBatch(win.reshape(B, S, *win.shape[1:]), torch.arange(S)[None, :] < counts[:, None])


# ----------------------------------------------------------------------------------------------


def random_table(lengths: list[int], channels: int = 3, bands: int = 12, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    arrays = [torch.randn(channels, bands, n, generator=g) * 3 - 1 for n in lengths]  # negative values too
    n = len(lengths)
    return _pack(arrays, [i % 3 for i in range(n)], [i % 2 for i in range(n)], [f"u{i}" for i in range(n)],
                 ["orig"] * n, ["a", "b"])


LENGTHS = [1, 3, 7, 16, 40, 41, 90, 5, 64, 33]
SPECS = [
    *(ViewSpec(kind="fixed", frames=f, crop=c, channels=ch, resize=r)
      for f, c, ch, r in itertools.product((6, 32, 100), ("centre", "start", "random"), (0, 1, 2, 3),
                                           (None, (20, 9), (12, 64)))),
    *(ViewSpec(kind="segments", n_segments=s, frames=f, channels=ch, resize=r)
      for s, f, ch, r in itertools.product((1, 3, 5), (4, 17), (1, 3), (None, (16, 17), (7, 5)))),
    *(ViewSpec(kind="windows", frames=f, window=w, shift=sh, channels=ch, resize=r, crop=c)
      for f, (w, sh), ch, r, c in itertools.product((0, 30, 75), ((8, 4), (16, 16), (10, 3)), (1, 3),
                                                    (None, (12, 16)), ("centre", "random"))),
]


def _same(a: ViewBatch, b: ViewBatch, where: str, *, exact: bool = True) -> None:
    """Equal views: masks always exact; images exact (+0 and -0 compare equal) or, with
    ``exact=False``, within :data:`ROUNDING` (see there)."""
    assert a.x.shape == b.x.shape and a.x.dtype == b.x.dtype, where
    if exact:
        assert torch.equal(a.x, b.x), where
    else:
        torch.testing.assert_close(a.x, b.x, rtol=0, atol=ROUNDING, msg=where)
    assert torch.equal(a.mask, b.mask), where


ROUNDING = 1e-5
"""Largest difference allowed where a view resizes in another order than the reference: time in the
gather (two taps or a matrix product) and frequency once per table, instead of one bilinear
interpolate of the image. The same linear maps with the same weights (:func:`test_linear_taps_are_interpolates_weights`),
so only float32 rounding of the sums of products differs: a few ulps of values up to 15 here
(an ulp is 1e-6 at 8-16; the largest difference seen is 1.4e-6). A source position rounded twice
instead of once (weights off by one float32 step) already differs by 4e-5; a wrong tap or padding
by about 1 or more."""


def resizes_time_in_gather(spec: ViewSpec, bands: int) -> bool:
    """Whether the view resizes time while gathering (its height is already the frames' band count)."""
    if spec.resize is None or spec.resize[0] != bands or spec.kind == "segments":
        return False
    return spec.resize[1] != (spec.window if spec.kind == "windows" else spec.frames)


@pytest.mark.parametrize("kind", ["fixed", "segments", "windows"])
@pytest.mark.parametrize("train", [True, False])
def test_new_views_equal_the_previous_algorithm(kind: str, train: bool) -> None:
    table = random_table(LENGTHS)
    idx = torch.tensor([4, 0, 9, 2, 6, 1, 8])
    x, lengths = table.batch(idx)
    specs = [s for s in SPECS if s.kind == kind]
    assert len(specs) >= 30
    for spec in specs:
        gens = [torch.Generator().manual_seed(7) for _ in range(3)]
        old = _old_view(spec, x, lengths, train, gens[0])
        padded = apply_view(spec, x, lengths, train=train, generator=gens[1])
        direct = view_items(spec, table.frames, table.offsets[idx], table.lengths[idx], train=train, generator=gens[2])
        exact = not resizes_time_in_gather(spec, table.shape[1])
        _same(old, padded, f"apply_view {spec}", exact=exact)
        _same(old, direct, f"view_items {spec}", exact=exact)
        draws = [torch.rand(4, generator=g) for g in gens]  # the same number of draws from the generator
        assert torch.equal(draws[0], draws[1]) and torch.equal(draws[0], draws[2]), spec


@pytest.mark.parametrize("kind", ["fixed", "segments", "windows"])
def test_a_single_stored_channel_is_repeated_as_before(kind: str) -> None:
    table = random_table(LENGTHS, channels=1)
    idx = torch.arange(len(LENGTHS))
    spec = ViewSpec(kind=kind, frames=20, channels=3, resize=(10, 24), window=8, shift=4, n_segments=3)
    x, lengths = table.batch(idx)
    direct = view_items(spec, table.frames, table.offsets[idx], table.lengths[idx])
    _same(_old_view(spec, x, lengths, False, None), direct, kind)
    assert direct.x.shape[-3] == 3


@pytest.mark.parametrize("frames", [0, 5, 200])  # no minimum width; shorter than the longest item; wider
@pytest.mark.parametrize("channels", [0, 1, 3])
def test_the_full_view_from_items_equals_the_padded_batch_view(frames: int, channels: int) -> None:
    table = random_table(LENGTHS)
    idx = torch.tensor([4, 0, 9, 2])
    x, lengths = table.batch(idx)
    spec = ViewSpec(kind="full", frames=frames, channels=channels)
    direct = view_items(spec, table.frames, table.offsets[idx], table.lengths[idx], train=True)
    padded = apply_view(spec, x, lengths, train=True)
    _same(padded, direct, f"full {spec}")
    assert direct.x.shape[-1] == max(frames, int(lengths.max())) and not direct.masked
    # without a resize or channel repeat the batch is the table's rows, padded only when x is read
    assert direct.items is not None and direct.items.frames.shape[1] == (channels or 3)
    repeated = view_items(ViewSpec(kind="full", frames=frames, channels=3), table.frames[:, :1],
                          table.offsets[idx], table.lengths[idx])
    assert repeated.items is None and repeated.x.shape[1] == 3
    # SpecAugment's span masks applied while the items are copied: the masks and draws of span_masks
    augment = SpecAugmentSpec(freq_masks=2, freq_width=3, time_masks=2, time_width=4)
    gens = [torch.Generator().manual_seed(3) for _ in range(2)]
    masked = view_items(spec, table.frames, table.offsets[idx], table.lengths[idx], train=True,
                        span_draw=span_draw(augment, gens[0]))
    reference = span_masks(padded.x.clone(), augment, mask=padded.mask, generator=gens[1])
    assert masked.masked and torch.equal(masked.x, reference) and not torch.equal(masked.x, direct.x)
    assert torch.equal(torch.rand(3, generator=gens[0]), torch.rand(3, generator=gens[1]))


def test_views_that_need_the_padded_batch_are_not_built_from_items() -> None:
    table = random_table(LENGTHS)
    idx = torch.arange(3)
    for spec in (ViewSpec(kind="sequence", frames=0), ViewSpec(kind="fixed", frames=8, time_pool=2)):
        assert view_items(spec, table.frames, table.offsets[idx], table.lengths[idx]) is None


# ----------------------------------------------------------------------------------------------
# Resizing in parts: the taps, the per-table frequency resize, the time resize in the gather


@pytest.mark.parametrize("n_in", [1, 2, 5, 12, 32, 60, 64, 97, 150, 194, 257])
def test_linear_taps_are_interpolates_weights(n_in: int) -> None:
    for n_out in (1, 3, 7, 12, 16, 17, 32, 64, 96, 128, 227):
        eye = torch.eye(n_in)[:, None, :]  # impulses: interpolate's weights, column by column
        weights = F.interpolate(eye, size=n_out, mode="linear", align_corners=False)[:, 0, :]
        assert torch.equal(tap_matrix(n_in, n_out), weights), (n_in, n_out)
        assert torch.allclose(tap_matrix(n_in, n_out).sum(0), torch.ones(n_out))


def tap_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """The taps of :func:`linear_taps` as a resize matrix ``(n_in, n_out)`` (column j: output j)."""
    lo, hi, w = linear_taps(n_in, n_out)
    m = torch.zeros(n_in, n_out)
    j = torch.arange(n_out)
    m.index_put_((lo, j), 1 - w, accumulate=True)
    m.index_put_((hi, j), w, accumulate=True)
    return m


BAND_SPECS = [
    ViewSpec(kind="fixed", frames=32, crop="random", channels=3, resize=(20, 9)),
    ViewSpec(kind="fixed", frames=6, crop="centre", channels=1, resize=(7, 64)),
    ViewSpec(kind="fixed", frames=100, crop="start", channels=2, resize=(31, 100)),
    ViewSpec(kind="segments", n_segments=3, frames=17, channels=3, resize=(16, 17)),
    ViewSpec(kind="segments", n_segments=5, frames=4, channels=1, resize=(7, 5)),
    ViewSpec(kind="windows", frames=30, window=8, shift=4, channels=3, resize=(20, 16), crop="random"),
    ViewSpec(kind="windows", frames=0, window=16, shift=16, channels=1, resize=(5, 3)),
]


@pytest.mark.parametrize("train", [True, False])
def test_table_views_with_resized_bands_match_the_previous_algorithm(train: bool) -> None:
    table = random_table(LENGTHS)
    idx = torch.tensor([4, 0, 9, 2, 6, 1, 8])
    x, lengths = table.batch(idx)
    for spec in BAND_SPECS:
        gens = [torch.Generator().manual_seed(3) for _ in range(2)]
        old = _old_view(spec, x, lengths, train, gens[0])
        new = table.view(idx, spec, train=train, generator=gens[1])
        _same(old, new, f"table.view {spec}", exact=False)
        assert not torch.equal(old.x, torch.zeros_like(old.x)), spec
        assert torch.equal(torch.rand(4, generator=gens[0]), torch.rand(4, generator=gens[1])), spec


def test_a_table_resizes_its_bands_once_per_height_and_channels() -> None:
    table = random_table(LENGTHS)
    idx = torch.arange(len(LENGTHS))
    spec = ViewSpec(kind="fixed", frames=20, channels=2, resize=(30, 20))
    first = table.view_frames(spec)
    assert first.shape == (table.frames.shape[0], 2, 30)
    torch.testing.assert_close(first, F.interpolate(table.frames[:, :2], size=30, mode="linear", align_corners=False),
                               rtol=0, atol=0)
    table.view(idx, spec)
    assert table.view_frames(spec) is first  # kept, not recomputed
    assert table.view_frames(spec.replace(channels=3)).shape[1:] == (3, 30)
    same_height = table.view_frames(spec.replace(resize=(12, 40)))  # the stored 12 bands: no copy, nothing kept
    assert same_height.shape[1:] == (2, 12) and same_height.data_ptr() == table.frames.data_ptr()
    assert sorted(tables_module._RESIZED_BANDS[id(table.frames)]) == [(30, 2), (30, 3)]
    assert table.with_labels(table.labels).view_frames(spec) is first  # the same frames: the same bands
    assert table.select(torch.ones(len(table), dtype=torch.bool)).view_frames(spec) is not first  # new frames
    key = id(table.frames)
    del table, first, same_height
    gc.collect()
    assert key not in tables_module._RESIZED_BANDS  # freed with the frames


def test_a_table_too_large_for_the_band_cache_resizes_each_batch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tables_module, "BAND_CACHE_BYTES", 0)
    table = random_table(LENGTHS)
    idx = torch.tensor([4, 0, 9, 2])
    spec = ViewSpec(kind="fixed", frames=32, crop="centre", channels=3, resize=(20, 9))
    assert table.view_frames(spec) is table.frames
    x, lengths = table.batch(idx)
    _same(_old_view(spec, x, lengths, False, None), table.view(idx, spec), "uncached: the previous algorithm")


# ----------------------------------------------------------------------------------------------
# SpecAugment's span masks applied while the view is built


SPANS = SpecAugmentSpec(freq_masks=2, freq_width=5, time_masks=2, time_width=6)


@pytest.mark.parametrize("kind", ["fixed", "segments", "windows"])
def test_span_masks_in_the_view_equal_masking_the_view_after(kind: str) -> None:
    table = random_table(LENGTHS)
    idx = torch.tensor([4, 0, 9, 2, 6, 1, 8])
    specs = [s for s in SPECS + BAND_SPECS if s.kind == kind]
    masked_any = 0
    for spec in specs:
        gens = [torch.Generator().manual_seed(11) for _ in range(2)]
        plain = table.view(idx, spec, train=True, generator=gens[0])
        after = span_masks(plain.x.clone(), SPANS, mask=plain.mask, generator=gens[0])
        fused = table.view(idx, spec, train=True, generator=gens[1], span_draw=span_draw(SPANS, gens[1]))
        assert fused.masked and not plain.masked, spec
        _same(ViewBatch(after, plain.mask), fused, f"span masks in the view {spec}")
        assert torch.equal(torch.rand(4, generator=gens[0]), torch.rand(4, generator=gens[1])), spec
        masked_any += int(not torch.equal(after, plain.x))
    assert masked_any == len(specs)  # the masks zero something in every view


def test_the_loop_does_not_mask_a_masked_view_again() -> None:
    x = torch.ones(3, 1, 8, 10)
    y = torch.eye(3)
    out, _, _ = augment_batch(x, y, SPANS, generator=torch.Generator().manual_seed(0), masked=True)
    assert torch.equal(out, x)
    out, _, _ = augment_batch(x, y, SPANS, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(out, x)
    assert span_draw(SpecAugmentSpec(), None) is None  # nothing to draw: the view masks nothing
    # so the loop need not build a masked view's tensor for augment_batch, unless more is asked
    assert not changes_batch(SPANS, masked=True) and changes_batch(SPANS, masked=False)
    for more in ({"cutout": 1}, {"salt_pepper": 0.1}, {"mixup": 0.2}):
        assert changes_batch(SpecAugmentSpec(**more), masked=True), more
