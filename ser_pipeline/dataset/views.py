"""Views: how a batch of variable-length feature tensors becomes model input (issue 3, "Reading").

Views are built in batch on the training device and never stored. Input is a padded batch
``x: (B, C, F, T_max)`` with ``lengths: (B,)`` (valid frames per utterance). Output is a
:class:`ViewBatch`:

==========  ====================================  ==============================
kind        ``x``                                 ``mask``
==========  ====================================  ==============================
full        ``(B, C', H, W)`` padded to T_max       ``(B, T_max)`` valid frames
            (or to ``frames`` when given)
fixed       ``(B, C', H, W)``, pad/crop to frames   ``(B, frames)`` valid frames
segments    ``(B, S, C', H, W)``, S = n_segments    ``(B, S)`` non-empty segments
windows     ``(B, S, C', H, W)``, window/shift      ``(B, S)`` real windows
            (after a pad/crop to ``frames`` when
            ``frames > 0``: then S is fixed)
sequence    ``(B, T_max, C*F)`` (stage-2 inputs)    ``(B, T_max)``
==========  ====================================  ==============================

``C'`` is ``channels`` (the first ``channels`` feature channels; a single channel is repeated),
``H, W`` are ``F, T`` or ``resize`` (bilinear). With ``time_pool = k > 1`` every ``k`` frames are
averaged first (a 10 ms hop becomes ``k * 10`` ms; lengths ``ceil(T / k)``), and ``frames`` counts
pooled frames. Normalisation (``normalise``) is applied to the
stored tables when they are preloaded (see :func:`ser_pipeline.dataset.tables.normalise_tables`), with
statistics from the training split only; views never see unnormalised padding.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ser_pipeline.config import Spec, require

VIEW_KINDS = ("full", "fixed", "segments", "windows", "sequence")
NORMALISATIONS = ("none", "utterance", "speaker", "global")
CROPS = ("centre", "start", "random")


@dataclass(frozen=True)
class ViewSpec(Spec):
    """How to turn stored ``(C, F, T)`` features into model input.

    - ``kind``: one of ``VIEW_KINDS``.
    - ``frames``: fixed length for ``fixed`` (300 = 3 s at a 10 ms hop), per-segment length for
      ``segments`` (each segment is linearly resampled in time to ``frames``), the pad/crop length
      before cutting ``windows`` (0 = the whole utterance), optional pad length for ``full``
      (0 = pad to the batch maximum).
    - ``n_segments``: N equal segments along time (1..16).
    - ``window``/``shift``: sliding windows in frames (64 / 32).
    - ``resize``: ``(H, W)`` bilinear resize of each image (e.g. (227, 227)), or None.
    - ``channels``: 1, 2 or 3 (0 keeps every stored channel).
    - ``normalise``: ``none`` | ``utterance`` (per utterance, per channel and bin over time) |
      ``speaker`` (per speaker) | ``global`` (training-split statistics).
    - ``crop``: where ``fixed`` crops a long utterance at evaluation (``centre``/``start``);
      ``random`` crops randomly during training and at the centre otherwise.
    - ``time_pool``: average every ``k`` input frames before the view (1 = off; the CPU recipes use 2).
    - ``frames_quantile``: when > 0, ``frames`` is replaced per fold by this quantile of the
      training utterances' lengths (after ``time_pool``): e.g. 0.9 = the corpus's 90th-percentile
      duration instead of a fixed 300 frames (:func:`frames_for`).
    - ``floor_db``: when > 0, the static log-Mel channel of each utterance is floored at its
      maximum minus ``floor_db`` dB, so digital silence (the 1e-10 log floor) does not dominate
      the statistics (:func:`ser_pipeline.dataset.tables.floor_silence`).
    """

    CODE_VERSION = "1"

    kind: str = "fixed"
    frames: int = 300
    n_segments: int = 4
    window: int = 64
    shift: int = 32
    resize: tuple[int, int] | None = None
    channels: int = 3
    normalise: str = "speaker"
    crop: str = "centre"
    time_pool: int = 1
    frames_quantile: float = 0.0
    floor_db: float = 0.0

    def validate(self) -> None:
        require(self.kind in VIEW_KINDS, "view.kind", self.kind, f"valid kinds: {list(VIEW_KINDS)}")
        require(self.frames >= 0, "view.frames", self.frames, "must be >= 0")
        require(self.kind not in ("fixed", "segments") or self.frames > 0, "view.frames", self.frames,
                f"must be positive for kind={self.kind!r}")
        require(1 <= self.n_segments <= 16, "view.n_segments", self.n_segments, "must be in 1..16")
        require(self.window > 0, "view.window", self.window, "must be positive")
        require(0 < self.shift <= self.window, "view.shift", self.shift, "must be in 1..window")
        if self.resize is not None:
            require(len(self.resize) == 2 and all(int(v) > 0 for v in self.resize), "view.resize",
                    self.resize, "must be (H, W) with positive sizes")
        require(self.channels in (0, 1, 2, 3), "view.channels", self.channels, "must be 0 (all), 1, 2 or 3")
        require(self.normalise in NORMALISATIONS, "view.normalise", self.normalise,
                f"valid values: {list(NORMALISATIONS)}")
        require(self.crop in CROPS, "view.crop", self.crop, f"valid values: {list(CROPS)}")
        require(1 <= self.time_pool <= 8, "view.time_pool", self.time_pool, "must be in 1..8")
        require(0.0 <= self.frames_quantile <= 1.0, "view.frames_quantile", self.frames_quantile, "must be in [0, 1]")
        require(self.floor_db >= 0, "view.floor_db", self.floor_db, "must be >= 0 (0 = off)")

    @property
    def segmented(self) -> bool:
        """True when the output carries a segment axis ``(B, S, ...)``."""
        return self.kind in ("segments", "windows")


@dataclass
class ViewBatch:
    """A view's output: ``x`` (see the module table) and ``mask`` (bool) or None."""

    x: torch.Tensor
    mask: torch.Tensor | None


def select_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """``(B, C, F, T) -> (B, channels, F, T)``: the first ``channels``; one channel is repeated."""
    if channels == 0 or x.shape[1] == channels:
        return x
    if x.shape[1] >= channels:
        return x[:, :channels]
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    require(False, "view.channels", channels, f"features have only {x.shape[1]} channels")
    return x


def time_mask(lengths: torch.Tensor, frames: int) -> torch.Tensor:
    """``(B,) -> (B, frames)`` bool, True where ``t < length``."""
    return torch.arange(frames, device=lengths.device)[None, :] < lengths[:, None]


def crop_starts(lengths: torch.Tensor, frames: int, *, mode: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Start frame of a ``frames``-long crop per utterance, ``(B,)`` long.

    ``centre``/``start``: deterministic; ``random``: uniform in ``[0, length - frames]`` from
    ``generator`` (a random cut in time). Utterances shorter than ``frames`` start at 0.
    """
    room = (lengths - frames).clamp(min=0)
    if mode == "start":
        return torch.zeros_like(lengths)
    if mode == "centre":
        return room // 2
    u = torch.rand(lengths.shape, generator=generator, device="cpu").to(lengths.device)
    return torch.floor(u * (room + 1).to(u.dtype)).long().clamp(max=room)


def gather_frames(x: torch.Tensor, lengths: torch.Tensor, starts: torch.Tensor, frames: int) -> torch.Tensor:
    """Crop/pad each utterance to ``frames`` from ``starts``: ``(B, C, F, T) -> (B, C, F, frames)``.

    Frames past an utterance's end are zero.
    """
    B, C, Fb, T = x.shape
    t = starts[:, None] + torch.arange(frames, device=x.device)[None, :]  # (B, frames)
    valid = t < lengths[:, None]
    idx = t.clamp(max=max(T - 1, 0))
    out = torch.gather(x, 3, idx[:, None, None, :].expand(B, C, Fb, frames))
    return out * valid[:, None, None, :].to(x.dtype)


def resample_time(x: torch.Tensor, begin: torch.Tensor, end: torch.Tensor, frames: int) -> torch.Tensor:
    """Linearly resample the span ``[begin, end)`` of each item to ``frames`` frames.

    ``x``: ``(B, C, F, T)``; ``begin``, ``end``: ``(B,)`` -> ``(B, C, F, frames)``. Sample ``k``
    sits at ``begin + (k + 0.5) * (end - begin) / frames - 0.5`` (align_corners=False), clamped
    to the span, as in a bilinear resize.
    """
    B, C, Fb, T = x.shape
    span = (end - begin).clamp(min=1).to(x.dtype)
    k = torch.arange(frames, device=x.device, dtype=x.dtype)
    pos = begin[:, None].to(x.dtype) + (k[None, :] + 0.5) * span[:, None] / frames - 0.5
    lo_bound = begin[:, None].to(x.dtype)
    hi_bound = (begin + (end - begin).clamp(min=1) - 1)[:, None].to(x.dtype)
    pos = torch.maximum(torch.minimum(pos, hi_bound), lo_bound)
    lo = pos.floor().long().clamp(0, T - 1)
    hi = (lo + 1).clamp(max=T - 1)
    hi = torch.minimum(hi, hi_bound.long())
    frac = (pos - lo.to(x.dtype))[:, None, None, :]
    g = lambda i: torch.gather(x, 3, i[:, None, None, :].expand(B, C, Fb, frames))  # noqa: E731
    return g(lo) * (1 - frac) + g(hi) * frac


def _resize(x: torch.Tensor, size: tuple[int, int] | None) -> torch.Tensor:
    """Bilinear resize of the last two axes of ``(N, C, H, W)`` to ``size``."""
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(int(s) for s in size), mode="bilinear", align_corners=False)


def _finish(x: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    return _resize(select_channels(x, spec.channels), spec.resize)


def _full(spec: ViewSpec, x, lengths, train, generator) -> ViewBatch:
    frames = max(spec.frames, x.shape[3]) if spec.frames else x.shape[3]
    if frames > x.shape[3]:
        x = F.pad(x, (0, frames - x.shape[3]))
    mask = time_mask(lengths, frames)
    x = x * mask[:, None, None, :].to(x.dtype)
    return ViewBatch(_finish(x, spec), mask)


def _fixed(spec: ViewSpec, x, lengths, train, generator) -> ViewBatch:
    mode = spec.crop if (spec.crop != "random" or train) else "centre"
    starts = crop_starts(lengths, spec.frames, mode=mode, generator=generator)
    mask = time_mask((lengths - starts).clamp(max=spec.frames), spec.frames)
    return ViewBatch(_finish(gather_frames(x, lengths, starts, spec.frames), spec), mask)


def _segments(spec: ViewSpec, x, lengths, train, generator) -> ViewBatch:
    B, S = x.shape[0], spec.n_segments
    j = torch.arange(S, device=x.device)
    begin = (lengths[:, None] * j[None, :]) // S  # (B, S)
    end = (lengths[:, None] * (j[None, :] + 1)) // S
    mask = end > begin
    rep = x.repeat_interleave(S, dim=0)  # (B*S, C, F, T)
    seg = resample_time(rep, begin.reshape(-1), end.reshape(-1), spec.frames)
    seg = _finish(seg, spec)
    return ViewBatch(seg.reshape(B, S, *seg.shape[1:]), mask)


def window_count(lengths: torch.Tensor, window: int, shift: int) -> torch.Tensor:
    """Windows per utterance, ``(B,)``: ``1 + ceil(max(0, length - window) / shift)``; the last
    window is zero-padded past the utterance's end."""
    return 1 + torch.div((lengths - window).clamp(min=0) + shift - 1, shift, rounding_mode="floor")


def _windows(spec: ViewSpec, x, lengths, train, generator) -> ViewBatch:
    B = x.shape[0]
    if spec.frames:
        mode = spec.crop if (spec.crop != "random" or train) else "centre"
        starts0 = crop_starts(lengths, spec.frames, mode=mode, generator=generator)
        x = gather_frames(x, lengths, starts0, spec.frames)
        lengths = torch.full_like(lengths, spec.frames)
    counts = window_count(lengths, spec.window, spec.shift)
    S = int(counts.max().item())
    starts = torch.arange(S, device=x.device)[None, :] * spec.shift  # (1, S)
    starts = starts.expand(B, S)
    mask = torch.arange(S, device=x.device)[None, :] < counts[:, None]
    rep = x.repeat_interleave(S, dim=0)
    win = gather_frames(rep, lengths.repeat_interleave(S), starts.reshape(-1), spec.window)
    win = _finish(win, spec)
    return ViewBatch(win.reshape(B, S, *win.shape[1:]), mask)


def _sequence(spec: ViewSpec, x, lengths, train, generator) -> ViewBatch:
    B, C, Fb, T = x.shape
    mask = time_mask(lengths, T)
    seq = (x * mask[:, None, None, :].to(x.dtype)).permute(0, 3, 1, 2).reshape(B, T, C * Fb)
    return ViewBatch(seq, mask)


VIEW_BUILDERS: dict[str, Callable[..., ViewBatch]] = {
    "full": _full,
    "fixed": _fixed,
    "segments": _segments,
    "windows": _windows,
    "sequence": _sequence,
}


def apply_view(
    spec: ViewSpec,
    x: torch.Tensor,
    lengths: torch.Tensor,
    *,
    train: bool = False,
    generator: torch.Generator | None = None,
) -> ViewBatch:
    """Build the view of a padded batch ``x: (B, C, F, T_max)`` with ``lengths: (B,)``.

    ``train`` enables the random crop (``crop="random"``) drawn from ``generator``.
    """
    require(x.ndim == 4, "features", tuple(x.shape), "expected a (B, C, F, T) batch")
    lengths = lengths.to(x.device).long()
    if spec.time_pool > 1:
        x, lengths = pool_time(x, lengths, spec.time_pool)
    return VIEW_BUILDERS[spec.kind](spec, x, lengths, train, generator)


def pool_time(x: torch.Tensor, lengths: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean of every ``k`` consecutive frames: ``(B, C, F, T) -> (B, C, F, ceil(T / k))`` and
    lengths ``ceil(L / k)``. The last pooled frame of an utterance averages only its valid frames."""
    if k == 1:
        return x, lengths
    T = x.shape[3]
    valid = time_mask(lengths, T).to(x.dtype)[:, None, None, :]
    s = F.avg_pool2d(x * valid, (1, k), ceil_mode=True)
    n = F.avg_pool2d(valid, (1, k), ceil_mode=True).clamp(min=1e-6)
    return s / n * (n > 1e-5).to(x.dtype), (lengths + k - 1) // k


def frames_for(spec: ViewSpec, lengths: torch.Tensor) -> ViewSpec:
    """``spec`` with ``frames`` set from the ``frames_quantile`` of training ``lengths (N,)`` (stored
    frames; the result counts frames after ``time_pool``); unchanged when the quantile is 0."""
    if spec.frames_quantile <= 0 or len(lengths) == 0:
        return spec
    q = float(torch.quantile(lengths.double().cpu(), spec.frames_quantile))
    frames = max(1, int(-(-round(q) // spec.time_pool)))
    return spec.replace(frames=frames, frames_quantile=0.0)


def flatten_segments(batch: ViewBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, S, C, H, W) -> (B*S, C, H, W)`` and the flat mask ``(B*S,)`` (all True when absent)."""
    x = batch.x
    B, S = x.shape[:2]
    mask = batch.mask if batch.mask is not None else torch.ones(B, S, dtype=torch.bool, device=x.device)
    return x.reshape(B * S, *x.shape[2:]), mask.reshape(-1)


def mean_segment_posteriors(probs: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Utterance posteriors: mean of the valid segments' posteriors.

    ``probs``: ``(B, S, K)`` segment posteriors; ``mask``: ``(B, S)`` -> ``(B, K)``. An utterance
    with no valid segment (cannot happen for non-empty features) gets the plain mean.
    """
    w = mask.to(probs.dtype)
    count = w.sum(dim=1, keepdim=True)
    w = torch.where(count > 0, w, torch.ones_like(w))
    return (probs * w[:, :, None]).sum(dim=1) / w.sum(dim=1, keepdim=True)
