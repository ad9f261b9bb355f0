"""Resampling kernels of the views: gathers of time-major frames, linear resizes in time and
frequency, and span masks folded into them.

Input is a preloaded table's time-major frames ``(sum_T, C, F)`` with item offsets, or a padded
batch ``(B, C, F, T)`` flattened to that layout (:func:`flatten_batch`). Every function is a pure
tensor function: no view settings, no randomness (span masks arrive already drawn as a :data:`Keep`).
A bilinear resize is done in two halves that equal ``F.interpolate`` up to float32 rounding:
frequency once per table (:func:`resize_bands`), time while rows are gathered (:func:`span_rows`).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F

from ser_pipeline.dataset.spec_augment import SpanDraw

Keep = tuple[torch.Tensor, torch.Tensor]
"""What span masks keep of ``N`` images of ``H x W``: ``bands (N, H)`` and ``frames (N, W)``, 0/1 in
the images' dtype; image ``i`` keeps ``bands[i, :, None] * frames[i, None, :]``."""


def draw_keep(draw: SpanDraw | None, n: int, size: tuple[int, int], lengths: torch.Tensor | None,
              like: torch.Tensor) -> Keep | None:
    """Span masks for ``n`` items of ``size (H, W)`` drawn by ``draw`` (time masks inside ``lengths
    (n,)`` valid frames, or the whole width when None), as a :data:`Keep` on ``like``'s device and
    dtype; None without ``draw``."""
    if draw is None:
        return None
    bands, frames = draw(n, int(size[0]), int(size[1]), lengths)
    return bands.to(like.device, like.dtype), frames.to(like.device, like.dtype)


def apply_keep(x: torch.Tensor, keep: Keep | None) -> torch.Tensor:
    """``x (N, ..., H, W)`` times the masks ``keep`` of its ``N`` items (every leading-axis item's
    channels and segments share them): in place when ``x`` is contiguous, else a copy."""
    if keep is None:
        return x
    bands, frames = keep
    k = (bands[:, :, None] * frames[:, None, :]).reshape(x.shape[0], *(1,) * (x.ndim - 3), *x.shape[-2:])
    return x.mul_(k) if x.is_contiguous() else x * k


def repeat_keep(keep: Keep | None, times: int) -> Keep | None:
    """Each item's masks for its ``times`` images in a row (segments, windows)."""
    if keep is None:
        return None
    return keep[0].repeat_interleave(times, 0), keep[1].repeat_interleave(times, 0)


def flatten_batch(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """A padded batch ``(B, C, F, T)`` as time-major frames ``(B*T, C, F)`` and item offsets ``(B,)``
    (the layout of a preloaded :class:`~ser_pipeline.dataset.tables.FeatureTable`)."""
    B, C, Fb, T = x.shape
    return x.permute(0, 3, 1, 2).reshape(B * T, C, Fb), torch.arange(B, device=x.device) * T


def _rows(frames: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    """``frames (sum_T, C, F)`` at ``pos (B, n)`` -> ``(B, n, C, F)``: one row copy per position
    (``index_select``; several times faster on CPU than advanced indexing)."""
    return torch.index_select(frames, 0, pos.reshape(-1)).view(*pos.shape, *frames.shape[1:])


def _time_last(shape: torch.Size, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """An empty ``(B, C, F, n)`` tensor for a ``(B, n, C, F)``-shaped result, and the
    ``(B, n, C, F)`` view of it to write that result through (layout change fused into the write)."""
    B, n, C, Fb = shape
    out = torch.empty(B, C, Fb, n, dtype=like.dtype, device=like.device)
    return out, out.permute(0, 3, 1, 2)


def gather_crops(frames: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor,
                 n: int, width: int | None = None, keep: Keep | None = None) -> torch.Tensor:
    """Frames ``[start, start + n)`` of every item, read from time-major ``frames (sum_T, C, F)``:
    items at ``offsets (B,)`` with ``lengths (B,)``; ``starts (B,)`` -> ``(B, C, F, width)``, zero
    past each item's end, linearly resized in time from ``n`` to ``width`` frames (default ``n``:
    the frames themselves; see :func:`span_rows`, also for ``keep``). Never reads an item's whole length."""
    return span_rows(frames, offsets + starts, offsets + lengths, n, n if width is None else width, keep)


def linear_taps(n_in: int, n_out: int, device: torch.device | str = "cpu"
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The taps of a linear resize of ``n_in`` samples to ``n_out`` (``align_corners=False``) as
    ``F.interpolate`` computes them: ``(lo, hi, w)``, each ``(n_out,)``; output ``j`` is
    ``(1 - w) * x[lo] + w * x[hi]``. Source position ``(j + 0.5) * scale - 0.5`` with the float32
    ``scale = n_in / n_out``, rounded once to float32 and clamped at 0 (the same weights, bit for bit).
    Computed once per sizes and device (the tensors are shared: never write them)."""
    return _linear_taps(n_in, n_out, torch.device(device))


@functools.lru_cache(maxsize=256)
def _linear_taps(n_in: int, n_out: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    scale = torch.tensor(n_in / n_out, dtype=torch.float32).double()
    src = (scale * (torch.arange(n_out, dtype=torch.float64) + 0.5) - 0.5).float().clamp(min=0)
    lo = src.floor().long().clamp(max=n_in - 1)
    w = (src - lo.float()).clamp(0, 1)
    hi = torch.where(lo < n_in - 1, lo + 1, lo)
    return lo.to(device), hi.to(device), w.to(device)


def span_rows(frames: torch.Tensor, begin: torch.Tensor, end: torch.Tensor, n: int, width: int,
              keep: Keep | None = None) -> torch.Tensor:
    """Rows ``[begin, begin + n)`` of time-major ``frames (sum_T, C, F)`` per image (``begin (N,)``),
    zero at rows ``>= end (N,)`` (past the item's valid frames), as ``(N, C, F, width)``: linearly
    resized in time from ``n`` to ``width`` frames, the time half of a bilinear resize of the
    zero-padded span (``width == n``: the rows themselves, one copy each).

    Downsizing gathers the two rows each output frame reads; upsizing gathers the ``n`` rows once
    and resizes them with ``F.interpolate``, which also writes the time-last layout (fewer bytes
    moved either way). Equal to ``F.interpolate`` of the span up to float rounding. ``keep``: span masks of the ``N`` images (bands ``(N, F)``, frames
    ``(N, width)``), applied in the same pass, exactly as :func:`apply_keep` after it would."""
    if width == n:
        pos = begin[:, None] + torch.arange(n, device=frames.device)[None, :]
        return _masked_rows(frames, pos, pos < end[:, None], keep)
    if width < n:
        return _two_tap_rows(frames, begin, end, n, width, keep)
    return _interpolated_rows(frames, begin, end, n, width, keep)


def _row_weights(w: torch.Tensor, keep: Keep | None) -> torch.Tensor:
    """Weights ``w (N, n)`` of gathered rows ``(N, n, C, F)`` as ``(N, n, 1, 1)``, or ``(N, n, 1, F)``
    with the masks ``keep`` folded in (frames into ``w``, bands along ``F``)."""
    if keep is None:
        return w[:, :, None, None]
    return (w * keep[1])[:, :, None, None] * keep[0][:, None, None, :]


def _clamped_rows(frames: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
    return _rows(frames, pos.clamp(0, max(frames.shape[0] - 1, 0)))


def _two_tap_rows(frames: torch.Tensor, begin: torch.Tensor, end: torch.Tensor, n: int, width: int,
                  keep: Keep | None = None) -> torch.Tensor:
    """:func:`span_rows` by gathering the two source rows of each output frame: ``(N, C, F, width)``."""
    lo, hi, w = linear_taps(n, width, frames.device)
    pos_lo, pos_hi = begin[:, None] + lo[None, :], begin[:, None] + hi[None, :]  # (N, width)
    w_lo = _row_weights((1 - w)[None, :] * (pos_lo < end[:, None]).to(frames.dtype), keep)  # zero past the end
    w_hi = _row_weights(w[None, :] * (pos_hi < end[:, None]).to(frames.dtype), keep)
    a, b = _clamped_rows(frames, pos_lo), _clamped_rows(frames, pos_hi)  # (N, width, C, F)
    out, view = _time_last(a.shape, a)
    torch.add(a.mul_(w_lo), b.mul_(w_hi), out=view)
    return out


def _interpolated_rows(frames: torch.Tensor, begin: torch.Tensor, end: torch.Tensor, n: int, width: int,
                       keep: Keep | None = None) -> torch.Tensor:
    """:func:`span_rows` for upsizing: one gather of the ``n`` rows (rows past the end and masked
    bands zeroed in place), then ``F.interpolate`` (linear) over time on their time-last view,
    which writes the ``(N, C, F, width)`` layout; time masks last. About 1.5x faster on one core
    than the product with the banded resize matrix this replaced (stop 22; 256 windows of 64 ->
    96 frames, 3 x 96 bands: 13 vs 22 ms), and equal to it up to float32 rounding."""
    pos = begin[:, None] + torch.arange(n, device=frames.device)[None, :]  # (N, n)
    rows = _clamped_rows(frames, pos)  # (N, n, C, F)
    N, _, C, Fb = rows.shape
    valid = (pos < end[:, None]).to(frames.dtype)[:, :, None, None]
    rows.mul_(valid if keep is None else valid * keep[0][:, None, None, :])
    out = F.interpolate(rows.view(N, n, C * Fb).transpose(1, 2), size=width, mode="linear", align_corners=False)
    if keep is not None:
        out.mul_(keep[1][:, None, :])
    return out.view(N, C, Fb, width)


def _masked_rows(frames: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, keep: Keep | None = None
                 ) -> torch.Tensor:
    """``frames`` rows at ``pos (N, n)``, zero where not ``valid (N, n)`` (and where ``keep`` masks),
    as ``(N, C, F, n)``."""
    rows = _clamped_rows(frames, pos)  # (N, n, C, F)
    out, view = _time_last(rows.shape, rows)
    torch.mul(rows, _row_weights(valid.to(frames.dtype), keep), out=view)
    return out


def _lerp_positions(begin: torch.Tensor, end: torch.Tensor, frames: int, dtype: torch.dtype
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(lo, hi, frac)``, each ``(N, frames)``: the two source frames and the weight of ``hi`` of
    :func:`resample_time`'s sample ``k``, inside ``[begin, end)`` (see there)."""
    span = (end - begin).clamp(min=1).to(dtype)
    k = torch.arange(frames, device=begin.device, dtype=dtype)
    pos = begin[:, None].to(dtype) + (k[None, :] + 0.5) * span[:, None] / frames - 0.5
    lo_bound = begin[:, None].to(dtype)
    hi_bound = (begin + (end - begin).clamp(min=1) - 1)[:, None].to(dtype)
    pos = torch.maximum(torch.minimum(pos, hi_bound), lo_bound)
    lo = pos.floor().long().clamp(min=0)
    hi = torch.minimum(lo + 1, hi_bound.long())
    return lo, hi, pos - lo.to(dtype)


def resample_spans(frames: torch.Tensor, offsets: torch.Tensor, begin: torch.Tensor, end: torch.Tensor,
                   n: int) -> torch.Tensor:
    """Linearly resample the span ``[begin, end)`` of items at ``offsets (N,)`` of time-major
    ``frames (sum_T, C, F)`` to ``n`` frames: ``(N, C, F, n)`` (two gathers of ``n`` rows per item)."""
    lo, hi, frac = _lerp_positions(begin, end, n, frames.dtype)
    a, b = _rows(frames, offsets[:, None] + lo), _rows(frames, offsets[:, None] + hi)  # (N, n, C, F)
    w = frac[:, :, None, None]
    out, view = _time_last(a.shape, a)
    torch.add(a.mul_(1 - w), b.mul_(w), out=view)
    return out


def resample_time(x: torch.Tensor, begin: torch.Tensor, end: torch.Tensor, frames: int) -> torch.Tensor:
    """Linearly resample the span ``[begin, end)`` of each item to ``frames`` frames.

    ``x``: ``(B, C, F, T)``; ``begin``, ``end``: ``(B,)`` -> ``(B, C, F, frames)``. Sample ``k``
    sits at ``begin + (k + 0.5) * (end - begin) / frames - 0.5`` (align_corners=False), clamped
    to the span, as in a bilinear resize.
    """
    flat, offsets = flatten_batch(x)
    return resample_spans(flat, offsets, begin, end, frames)


def resize_images(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinear resize of the last two axes of ``(N, C, H, W)`` to ``size``.

    On CPU a multi-channel image is resized through a channels-last copy: the same values (each
    output is the same two-by-two interpolation), 1.1-2x faster there; the result is contiguous.
    """
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    size = (int(size[0]), int(size[1]))
    if x.device.type == "cpu" and x.shape[1] > 1:
        x = x.contiguous(memory_format=torch.channels_last)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False).contiguous()
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


def resize_bands(frames: torch.Tensor, height: int) -> torch.Tensor:
    """The frequency half of a bilinear resize, on time-major frames: ``(sum_T, C, F) -> (sum_T, C,
    height)``, the linear resize of every frame's ``F`` bands (``align_corners=False``: the same taps
    as :func:`resize_images`). It depends on no crop, segment or window, so a table can do it once."""
    if frames.shape[2] == height:
        return frames
    return F.interpolate(frames, size=int(height), mode="linear", align_corners=False)
