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
            (after a pad/crop to ``frames`` when    (those that cover the valid
            ``frames > 0``: then S is fixed)        frames, never padding only)
sequence    ``(B, T_max, C*F)`` (stage-2 inputs)    ``(B, T_max)``
==========  ====================================  ==============================

``C'`` is ``channels`` (the first ``channels`` feature channels; a single channel is repeated),
``H, W`` are ``F, T`` or ``resize`` (bilinear). With ``time_pool = k > 1`` every ``k`` frames are
averaged first (a 10 ms hop becomes ``k * 10`` ms; lengths ``ceil(T / k)``), and ``frames`` counts
pooled frames. Normalisation (``normalise``) is applied to the
stored tables when they are preloaded (see :func:`ser_pipeline.dataset.normalise.normalise_tables`), with
statistics from the training split only; views never see unnormalised padding.

Read from a preloaded table (:meth:`~ser_pipeline.dataset.tables.FeatureTable.view`), a bilinear
``resize`` is done in its two halves: frequency once per table (the same for every crop:
:func:`~ser_pipeline.dataset.resample.resize_bands`, kept by ``FeatureTable.view_frames``), time while each crop, segment or
window is gathered (:func:`~ser_pipeline.dataset.resample.span_rows`). That equals one ``F.interpolate`` of each image up to
float32 rounding (the same taps, summed in another order). SpecAugment's span masks can be applied
in the same pass (``span_draw``), with the tensors and draws of masking the view after.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ser_pipeline.config import Spec, require
from ser_pipeline.dataset.items import ItemFrames
from ser_pipeline.dataset.resample import (
    Keep,
    apply_keep,
    draw_keep,
    flatten_batch,
    gather_crops,
    repeat_keep,
    resample_spans,
    resize_images,
    span_rows,
)
from ser_pipeline.dataset.spec_augment import SpanDraw

VIEW_KINDS = ("full", "fixed", "segments", "windows", "sequence")
VIEW_REVISIONS: dict[str, int] = {"windows": 2}
"""Behaviour revisions of a view kind, part of the identity of the experiments that use it, so that
none is served from a cache made under the old behaviour. ``windows`` 2: after a fixed crop,
windows made only of padding are masked out (stop 12)."""
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
      the statistics (:func:`ser_pipeline.dataset.normalise.floor_silence`).
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


class ViewBatch:
    """A view's output: ``x`` (see the module table) and ``mask`` (bool) or None; ``masked``: the
    SpecAugment span masks are already applied to ``x`` (see :func:`view_items`).

    ``items``: the batch as rows of a preloaded table (:class:`~ser_pipeline.dataset.items.ItemFrames`,
    the ``full`` view read straight from a table), for models that read items in place
    (``forward_items``); ``x`` is then built from them on first use, the same tensor as before."""

    __slots__ = ("_x", "mask", "masked", "items")

    def __init__(self, x: torch.Tensor | None, mask: torch.Tensor | None, masked: bool = False,
                 items: ItemFrames | None = None) -> None:
        require(x is not None or items is not None, "view batch", None, "needs x or items")
        self._x, self.mask, self.masked, self.items = x, mask, masked, items

    @property
    def built(self) -> bool:
        """Whether ``x`` exists (False: only ``items`` so far, nothing was padded)."""
        return self._x is not None

    @property
    def x(self) -> torch.Tensor:
        if self._x is None:
            assert self.items is not None
            self._x = self.items.padded()
        return self._x


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
    flat, offsets = flatten_batch(x)
    return gather_crops(flat, offsets, lengths, starts, frames)


def _finish(x: torch.Tensor, spec: ViewSpec) -> torch.Tensor:
    return resize_images(select_channels(x, spec.channels), spec.resize)


def used_channels(frames: torch.Tensor, channels: int) -> torch.Tensor:
    """The stored channels a view reads, ``(sum_T, C, F) -> (sum_T, C', F)`` (a view, no copy):
    the first ``channels`` when fewer than stored; every channel otherwise (a single stored channel
    is repeated later, by :func:`select_channels`)."""
    return frames[:, :channels] if 0 < channels < frames.shape[1] else frames


def _full(spec: ViewSpec, x, lengths, train, generator) -> ViewBatch:
    frames = max(spec.frames, x.shape[3]) if spec.frames else x.shape[3]
    if frames > x.shape[3]:
        x = F.pad(x, (0, frames - x.shape[3]))
    mask = time_mask(lengths, frames)
    x = x * mask[:, None, None, :].to(x.dtype)
    return ViewBatch(_finish(x, spec), mask)


# Builders of the cropping views, reading items straight from time-major frames ``(sum_T, C', F)``
# (a preloaded table, or a padded batch through :func:`flatten_batch`) at ``offsets``/``lengths (B,)``.


def _crop_mode(spec: ViewSpec, train: bool) -> str:
    return spec.crop if (spec.crop != "random" or train) else "centre"


def gather_width(spec: ViewSpec, frames: torch.Tensor, n: int) -> int:
    """How many frames the gather of an ``n``-frame span writes: the view's resize width when the
    frames ``(sum_T, C, F)`` already have its height (the bands need no resize, so time is resized
    in the gather: :func:`span_rows`), else ``n`` (the image is resized after, by :func:`resize_images`)."""
    if spec.resize is not None and int(spec.resize[0]) == frames.shape[2]:
        return int(spec.resize[1])
    return n


def image_size(spec: ViewSpec, bands: int, n: int) -> tuple[int, int]:
    """``(H, W)`` of the view's images cut from ``n``-frame spans of ``bands``-band frames."""
    return (int(spec.resize[0]), int(spec.resize[1])) if spec.resize is not None else (bands, n)


def _gathered(spec: ViewSpec, frames: torch.Tensor, n: int, keep: Keep | None) -> Keep | None:
    """``keep`` when the gather of ``n``-frame spans already writes the view's final image size (the
    masks then go into the gather), else None (they are applied after the resize)."""
    final = image_size(spec, frames.shape[2], n) == (frames.shape[2], gather_width(spec, frames, n))
    return keep if final else None


def _after(x: torch.Tensor, keep: Keep | None, in_gather: Keep | None) -> torch.Tensor:
    """``x`` with the masks ``keep`` applied, unless the gather already applied them (``in_gather``)."""
    return x if in_gather is not None else apply_keep(x, keep)


# ``draw``: span masks drawn after the builder's own draws (crop starts), as augment_batch would
# draw them after the view (the same generator stream), and applied while the images are built.


def _fixed_items(spec: ViewSpec, frames, offsets, lengths, train, generator, draw: SpanDraw | None = None
                 ) -> ViewBatch:
    starts = crop_starts(lengths, spec.frames, mode=_crop_mode(spec, train), generator=generator)
    valid = (lengths - starts).clamp(max=spec.frames)
    mask = time_mask(valid, spec.frames)
    size = image_size(spec, frames.shape[2], spec.frames)
    keep = draw_keep(draw, len(lengths), size, valid if size[1] == spec.frames else None, frames)
    in_gather = _gathered(spec, frames, spec.frames, keep)
    crops = gather_crops(frames, offsets, lengths, starts, spec.frames, gather_width(spec, frames, spec.frames),
                         in_gather)
    return ViewBatch(_after(_finish(crops, spec), keep, in_gather), mask, masked=keep is not None)


def _segments_items(spec: ViewSpec, frames, offsets, lengths, train, generator, draw: SpanDraw | None = None
                    ) -> ViewBatch:
    B, S = lengths.shape[0], spec.n_segments
    j = torch.arange(S, device=lengths.device)
    begin = (lengths[:, None] * j[None, :]) // S  # (B, S)
    end = (lengths[:, None] * (j[None, :] + 1)) // S
    keep = draw_keep(draw, B, image_size(spec, frames.shape[2], spec.frames), None, frames)
    seg = resample_spans(frames, offsets.repeat_interleave(S), begin.reshape(-1), end.reshape(-1), spec.frames)
    seg = _finish(seg, spec)
    seg = apply_keep(seg.reshape(B, S, *seg.shape[1:]), keep)
    return ViewBatch(seg, end > begin, masked=keep is not None)


def window_count(lengths: torch.Tensor, window: int, shift: int) -> torch.Tensor:
    """Windows per utterance, ``(B,)``: ``1 + ceil(max(0, length - window) / shift)``; the last
    window is zero-padded past the utterance's end."""
    return 1 + torch.div((lengths - window).clamp(min=0) + shift - 1, shift, rounding_mode="floor")


def _windows_items(spec: ViewSpec, frames, offsets, lengths, train, generator, draw: SpanDraw | None = None
                   ) -> ViewBatch:
    B = lengths.shape[0]
    if spec.frames:  # pad/crop to ``frames`` first: every item then has the same number of windows
        starts = crop_starts(lengths, spec.frames, mode=_crop_mode(spec, train), generator=generator)
        limit = (lengths - starts).clamp(max=spec.frames)  # valid frames of each crop
        S = int(window_count(torch.tensor([spec.frames]), spec.window, spec.shift).item())
    else:
        starts, limit = torch.zeros_like(lengths), lengths
        S = int(window_count(lengths, spec.window, spec.shift).max().item())
    counts = window_count(limit, spec.window, spec.shift)  # real windows: as many as cover the valid frames
    begin = (offsets + starts)[:, None] + torch.arange(S, device=lengths.device)[None, :] * spec.shift  # (B, S)
    end = (offsets + starts + limit)[:, None].expand(B, S)  # the last window is zero-padded past it
    keep = draw_keep(draw, B, image_size(spec, frames.shape[2], spec.window), None, frames)
    in_gather = repeat_keep(_gathered(spec, frames, spec.window, keep), S)
    win = span_rows(frames, begin.reshape(-1), end.reshape(-1), spec.window, gather_width(spec, frames, spec.window),
                    in_gather)
    win = _finish(win, spec)
    win = win.reshape(B, S, *win.shape[1:])
    mask = torch.arange(S, device=lengths.device)[None, :] < counts[:, None]
    return ViewBatch(_after(win, keep, in_gather), mask, masked=keep is not None)


def _sequence(spec: ViewSpec, x, lengths, train, generator) -> ViewBatch:
    B, C, Fb, T = x.shape
    mask = time_mask(lengths, T)
    seq = (x * mask[:, None, None, :].to(x.dtype)).permute(0, 3, 1, 2).reshape(B, T, C * Fb)
    return ViewBatch(seq, mask)


def _full_items(spec: ViewSpec, frames, offsets, lengths, train, generator, draw) -> ViewBatch:
    """:func:`_full` read straight from ``frames (sum_T, C', F)``. Without a resize or a channel
    repeat, the batch is the items where they lie (:class:`ItemFrames`, with its span masks when
    ``draw`` is given: the draws of ``span_masks`` on the finished view; the view itself draws
    nothing), padded only when ``x`` is read: each item's frames are then written once, time-major
    as they lie, with the masks applied in the copy. No padded batch, pad, mask product or masking
    pass: four passes fewer over a batch that is hundreds of MB for stored SSL layers, and none at
    all for a model that reads the items in place."""
    longest = int(lengths.max()) if len(lengths) else 0
    width = max(spec.frames, longest) if spec.frames else longest
    keep = draw_keep(draw, len(lengths), (frames.shape[2], width), lengths, frames) if spec.resize is None else None
    items = ItemFrames(frames, offsets, lengths, width, keep)
    mask = time_mask(lengths, width)
    if spec.resize is None and spec.channels in (0, frames.shape[1]):  # _finish would change nothing
        return ViewBatch(None, mask, masked=keep is not None, items=items)
    return ViewBatch(_finish(items.padded(), spec), mask, masked=keep is not None)


ITEM_BUILDERS: dict[str, Callable[..., ViewBatch]] = {
    "full": _full_items,
    "fixed": _fixed_items,
    "segments": _segments_items,
    "windows": _windows_items,
}
"""View kinds built from items of time-major frames (no padded batch needed)."""


def _from_batch(builder: Callable[..., ViewBatch]) -> Callable[..., ViewBatch]:
    def build(spec: ViewSpec, x, lengths, train, generator) -> ViewBatch:
        flat, offsets = flatten_batch(x[:, : spec.channels] if 0 < spec.channels < x.shape[1] else x)
        return builder(spec, flat, offsets, lengths, train, generator)
    return build


VIEW_BUILDERS: dict[str, Callable[..., ViewBatch]] = {
    "full": _full,
    "fixed": _from_batch(_fixed_items),
    "segments": _from_batch(_segments_items),
    "windows": _from_batch(_windows_items),
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


def view_items(spec: ViewSpec, frames: torch.Tensor, offsets: torch.Tensor, lengths: torch.Tensor, *,
               train: bool = False, generator: torch.Generator | None = None,
               span_draw: SpanDraw | None = None) -> ViewBatch | None:
    """The view of items read straight from preloaded time-major ``frames (sum_T, C, F)`` at
    ``offsets``/``lengths (B,)``: the same tensors as :func:`apply_view` of their padded batch, and
    the same draws from ``generator``, without building that batch (only the frames each crop,
    segment or window reads are gathered, and only the channels the view uses). None for the kinds
    and time pooling that need the padded batch (``sequence``, ``time_pool > 1``).

    ``span_draw`` (:func:`~ser_pipeline.dataset.spec_augment.span_draw`): SpecAugment's span masks
    are drawn after the view's own draws and applied while the images are built (into the gather's
    weights or resize matrix where the gather writes the final image size, else by one product
    after it): the tensors and draws of ``span_masks`` on the view, without another pass over the
    batch; the result says ``masked``."""
    builder = ITEM_BUILDERS.get(spec.kind)
    if builder is None or spec.time_pool > 1:
        return None
    return builder(spec, used_channels(frames, spec.channels), offsets, lengths.long(), train, generator, span_draw)


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
