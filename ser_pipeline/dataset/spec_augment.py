"""Spectrogram augmentation at training time, seeded through an explicit ``torch.Generator``.

Images are ``(..., H, W)`` with ``W`` the time axis (``(B, C, H, W)`` or segment batches
``(B, S, C, H, W)``). Labels are soft targets ``(B, K)`` so mixed samples carry two labels and
their weights; :func:`soft_cross_entropy` is the matching (class-weighted) loss.

- Time and frequency masks (SpecAugment, Park et al., 2019): ``freq_masks`` bands of up to
  ``freq_width`` bins and ``time_masks`` spans of up to ``time_width`` frames (and at most a fifth
  of the utterance's valid frames) set to 0, the normalised mean; on by default for neural models.
- Cutout: zeroed time-frequency rectangles.
- Salt-and-pepper: a fraction of pixels set to the image's max or min.
- Random cut: a random crop in time (done by the view: ``ViewSpec(crop="random")``).
- Mixup (Zhang et al., 2018): ``x = lam x1 + (1 - lam) x2``, ``lam ~ Beta(alpha, alpha)``.
- Horizontal Mixup: ``I3(t) = min(1, w(t)) I1(t) + max(0, 1 - w(t)) I2(t)``,
  ``w(t) = c (a + b t / T)``; label weights are the time averages of the two factors.
  With ``a=1, b=0, c=0.5`` it is Mixup with ``lam = 0.5``.
- ``ratio``: mixed samples added per batch as a fraction of its size (the paper adds 30%).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ser_pipeline.config import Spec, require


@dataclass(frozen=True)
class SpecAugmentSpec(Spec):
    """Training-time spectrogram augmentation; every field off by default.

    ``cutout``: rectangles per image, each up to ``cutout_frac`` of (H, W). ``salt_pepper``:
    fraction of pixels. ``random_cut``: random time crop for fixed views. ``mixup``: Beta alpha
    (0 = off). ``hmixup``: ``(a, b, c)`` or None. ``ratio``: mixed samples added per batch.
    """

    CODE_VERSION = "1"

    cutout: int = 0
    cutout_frac: tuple[float, float] = (0.2, 0.2)
    salt_pepper: float = 0.0
    random_cut: bool = False
    mixup: float = 0.0
    hmixup: tuple[float, float, float] | None = None
    ratio: float = 0.3
    freq_masks: int = 0
    freq_width: int = 8
    time_masks: int = 0
    time_width: int = 10

    def validate(self) -> None:
        for name in ("freq_masks", "freq_width", "time_masks", "time_width"):
            require(getattr(self, name) >= 0, name, getattr(self, name), "must be >= 0")
        require(self.cutout >= 0, "cutout", self.cutout, "must be >= 0")
        require(len(self.cutout_frac) == 2 and all(0 < f <= 1 for f in self.cutout_frac),
                "cutout_frac", self.cutout_frac, "must be two fractions in (0, 1]")
        require(0 <= self.salt_pepper < 1, "salt_pepper", self.salt_pepper, "must be in [0, 1)")
        require(self.mixup >= 0, "mixup", self.mixup, "Beta alpha must be >= 0")
        if self.hmixup is not None:
            require(len(self.hmixup) == 3, "hmixup", self.hmixup, "must be (a, b, c)")
            a, b, c = self.hmixup
            require(c > 0 and b >= 0 and a >= 0, "hmixup", self.hmixup, "needs a >= 0, b >= 0, c > 0")
        require(not (self.mixup > 0 and self.hmixup is not None), "mixup", self.mixup,
                "cannot be combined with hmixup: choose one")
        require(0 < self.ratio <= 1, "ratio", self.ratio, "must be in (0, 1]")

    @property
    def mixing(self) -> bool:
        return self.mixup > 0 or self.hmixup is not None


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    return torch.rand(shape, generator=generator).to(device)


def cutout(x: torch.Tensor, *, holes: int, max_frac: tuple[float, float] = (0.2, 0.2),
           generator: torch.Generator | None = None) -> torch.Tensor:
    """Zero ``holes`` random rectangles per image (up to ``max_frac`` of H and W); returns a copy.

    ``x``: ``(N, ..., H, W)``; each leading-axis item gets its own rectangles, shared by its channels.
    """
    if holes == 0:
        return x.clone()
    N, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    u = _uniform((N, holes, 4), generator, x.device)
    h = (u[..., 0] * max_frac[0] * H).long() + 1
    w = (u[..., 1] * max_frac[1] * W).long() + 1
    top = (u[..., 2] * (H - h + 1).clamp(min=1)).long()
    left = (u[..., 3] * (W - w + 1).clamp(min=1)).long()
    rows = torch.arange(H, device=x.device)
    cols = torch.arange(W, device=x.device)
    in_r = (rows[None, None, :] >= top[..., None]) & (rows[None, None, :] < (top + h)[..., None])  # (N, holes, H)
    in_c = (cols[None, None, :] >= left[..., None]) & (cols[None, None, :] < (left + w)[..., None])
    hole = (in_r[..., :, None] & in_c[..., None, :]).any(dim=1)  # (N, H, W)
    shape = (N,) + (1,) * (x.ndim - 3) + (H, W)
    return x.masked_fill(hole.reshape(shape), 0.0)


def _spans(n: int, size: int, count: int, max_width: torch.Tensor, limit: torch.Tensor,
           generator: torch.Generator | None) -> torch.Tensor:
    """``(n, size)`` bool: ``count`` spans per row, width ``U{0..max_width}``, inside ``[0, limit)``."""
    hit = torch.zeros(n, size, dtype=torch.bool)
    pos = torch.arange(size)[None, :]
    for _ in range(count):
        w = torch.minimum((torch.rand(n, generator=generator) * (max_width + 1).float()).floor().long(), limit)
        start = (torch.rand(n, generator=generator) * (limit - w + 1).float()).floor().long()
        hit |= (pos >= start[:, None]) & (pos < (start + w)[:, None])
    return hit


def span_keep(n: int, height: int, width: int, spec: SpecAugmentSpec, lengths: torch.Tensor | None,
              generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The SpecAugment masks of ``n`` images of ``height x width`` as what they keep: ``bands (n,
    height)`` and ``frames (n, width)`` bool (CPU), an image keeping ``bands[:, :, None] & frames[:,
    None, :]``. Time masks fall inside ``lengths (n,)`` valid frames (None: the whole width). The
    draws of :func:`span_masks`, in its order (frequency, then time)."""
    lengths = lengths.long().cpu() if lengths is not None else torch.full((n,), width)
    f_hit = _spans(n, height, spec.freq_masks, torch.full((n,), spec.freq_width), torch.full((n,), height), generator)
    t_hit = _spans(n, width, spec.time_masks, torch.minimum(torch.full((n,), spec.time_width), lengths // 5),
                   lengths, generator)
    return ~f_hit, ~t_hit


SpanDraw = Callable[[int, int, int, "torch.Tensor | None"], tuple[torch.Tensor, torch.Tensor]]
"""``(n, height, width, lengths) -> (bands, frames)``: :func:`span_keep` with a recipe and a generator
bound (:func:`span_draw`), for a view that applies the masks while it builds its images."""


def span_draw(spec: SpecAugmentSpec | None, generator: torch.Generator | None) -> SpanDraw | None:
    """The span masks of ``spec`` drawn from ``generator`` (None when ``spec`` masks no span)."""
    if spec is None or not (spec.freq_masks or spec.time_masks):
        return None

    def draw(n: int, height: int, width: int, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return span_keep(n, height, width, spec, lengths, generator)

    return draw


def span_masks(x: torch.Tensor, spec: SpecAugmentSpec, *, mask: torch.Tensor | None = None,
               generator: torch.Generator | None = None, inplace: bool = False) -> torch.Tensor:
    """SpecAugment frequency and time masks on ``x (N, ..., H, W)`` (all channels of an item share
    them); ``mask (N, W)`` marks valid frames so time masks fall inside the utterance (segment
    batches ``(B, S, ...)`` with a ``(B, S)`` mask use the whole width). Returns a copy, or ``x``
    itself masked in place with ``inplace`` when ``x`` is contiguous (no element aliases another;
    the same values: one pass over the batch instead of a read and a write to new memory)."""
    N, H, W = x.shape[0], x.shape[-2], x.shape[-1]
    lengths = mask.long().sum(dim=1) if mask is not None and mask.shape[-1] == W and x.ndim == 4 else None
    bands, frames = span_keep(N, H, W, spec, lengths, generator)
    keep = bands[:, :, None] & frames[:, None, :]
    shape = (N,) + (1,) * (x.ndim - 3) + (H, W)
    # A product with the 0/1 mask: the values of a masked_fill with 0 (masked negatives become -0.0,
    # equal to 0.0) for finite features, in one vectorised pass (masked_fill broadcasts slowly on CPU).
    keep = keep.reshape(shape).to(device=x.device, dtype=x.dtype)
    return x.mul_(keep) if inplace and x.is_contiguous() else x * keep


def salt_and_pepper(x: torch.Tensor, *, amount: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Set a fraction ``amount`` of pixels to each item's max (salt) or min (pepper); returns a copy."""
    if amount == 0:
        return x.clone()
    N = x.shape[0]
    flat = x.reshape(N, -1)
    u = _uniform(tuple(flat.shape), generator, x.device)
    hi = flat.amax(dim=1, keepdim=True).expand_as(flat)
    lo = flat.amin(dim=1, keepdim=True).expand_as(flat)
    out = torch.where(u < amount / 2, hi, flat)
    out = torch.where((u >= amount / 2) & (u < amount), lo, out)
    return out.reshape(x.shape)


def mixup(x1: torch.Tensor, x2: torch.Tensor, lam: torch.Tensor | float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``lam x1 + (1 - lam) x2`` per item; ``lam``: scalar or ``(N,)``. Returns ``(x, w1 (N,), w2 (N,))``."""
    lam = torch.as_tensor(lam, dtype=x1.dtype, device=x1.device).expand(x1.shape[0])
    shape = (-1,) + (1,) * (x1.ndim - 1)
    return lam.reshape(shape) * x1 + (1 - lam.reshape(shape)) * x2, lam, 1 - lam


def hmixup_weights(frames: int, *, a: float, b: float, c: float, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
    """Time weights of Horizontal Mixup, ``(T,)`` each: ``min(1, w(t))`` and ``max(0, 1 - w(t))``,
    ``w(t) = c (a + b t / T)`` for ``t = 0 .. T-1``."""
    t = torch.arange(frames, dtype=torch.float32, device=device)
    w = c * (a + b * t / frames)
    return torch.clamp(w, max=1.0), torch.clamp(1.0 - w, min=0.0)


def horizontal_mixup(x1: torch.Tensor, x2: torch.Tensor, *, a: float = 0.05, b: float = 1.25, c: float = 1.0
                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Horizontal Mixup along the last (time) axis.

    ``x1``, ``x2``: ``(N, ..., H, T)``. Returns ``I3`` (same shape) and the label weights of the
    two parts ``(N,)`` each: the time averages of ``min(1, w)`` and ``max(0, 1 - w)``.
    """
    require(x1.shape == x2.shape, "hmixup", tuple(x2.shape), f"must match {tuple(x1.shape)}")
    f1, f2 = hmixup_weights(x1.shape[-1], a=a, b=b, c=c, device=x1.device)
    mixed = f1.to(x1.dtype) * x1 + f2.to(x1.dtype) * x2
    n = x1.shape[0]
    return mixed, f1.mean().expand(n).to(x1.dtype), f2.mean().expand(n).to(x1.dtype)


def changes_batch(spec: SpecAugmentSpec, *, masked: bool = False) -> bool:
    """Whether :func:`augment_batch` would change a batch (False: it returns it as it is, so a view
    batch need not be built as a tensor for it). ``masked``: the view applied the span masks."""
    spans_left = bool(spec.freq_masks or spec.time_masks) and not masked
    return spans_left or spec.cutout > 0 or spec.salt_pepper > 0 or spec.mixing


def augment_batch(
    x: torch.Tensor,
    targets: torch.Tensor,
    spec: SpecAugmentSpec,
    *,
    mask: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
    owned: bool = False,
    masked: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Apply ``spec`` to a training batch.

    ``x``: ``(B, ...)``; ``targets``: soft labels ``(B, K)``; ``mask``: ``(B, S)`` or ``(B, T)`` or
    None. Returns ``(x', targets', mask')`` where, when mixing is on, ``round(ratio * B)`` mixed
    samples (random pairs) are appended with soft labels ``w1 y_i + w2 y_j``. ``owned``: the caller
    hands ``x`` over (nothing else reads it), so the span masks may be applied to it in place.
    ``masked``: the view already applied the span masks (:func:`span_draw`); they are not drawn again.
    """
    if (spec.freq_masks or spec.time_masks) and not masked:
        x = span_masks(x, spec, mask=mask, generator=generator, inplace=owned)
    if spec.cutout:
        x = cutout(x, holes=spec.cutout, max_frac=spec.cutout_frac, generator=generator)
    if spec.salt_pepper:
        x = salt_and_pepper(x, amount=spec.salt_pepper, generator=generator)
    if not spec.mixing or x.shape[0] < 2:
        return x, targets, mask
    B = x.shape[0]
    k = max(1, round(spec.ratio * B))
    i = torch.randint(0, B, (k,), generator=generator).to(x.device)
    j = (i + torch.randint(1, B, (k,), generator=generator).to(x.device)) % B  # j != i
    if spec.hmixup is not None:
        a, b, c = spec.hmixup
        mixed, w1, w2 = horizontal_mixup(x[i], x[j], a=a, b=b, c=c)
    else:
        lam = _beta(spec.mixup, k, generator)
        mixed, w1, w2 = mixup(x[i], x[j], lam.to(x.device, x.dtype))
    soft = w1[:, None] * targets[i] + w2[:, None] * targets[j]
    new_mask = None if mask is None else torch.cat([mask, mask[i] & mask[j]])
    return torch.cat([x, mixed]), torch.cat([targets, soft.to(targets.dtype)]), new_mask


def _beta(alpha: float, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """``(n,)`` Beta(alpha, alpha) draws from ``generator`` (via two seeded Gamma draws)."""
    # Inverse-CDF sampling on a fine grid keeps the draw tied to ``generator``.
    u = torch.rand(n, generator=generator, dtype=torch.float64)
    grid = torch.linspace(1e-6, 1 - 1e-6, 4097, dtype=torch.float64)
    pdf = (grid * (1 - grid)) ** (alpha - 1)
    cdf = torch.cumsum(pdf, 0)
    cdf = cdf / cdf[-1]
    idx = torch.searchsorted(cdf, u).clamp(max=len(grid) - 1)
    return grid[idx].float()


def soft_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mixed-label (soft-target) cross-entropy, class-weighted.

    ``logits``, ``targets``: ``(N, K)``; ``weight``: ``(K,)`` or None. Loss =
    ``-sum_i sum_c w_c y_ic log p_ic / sum_i sum_c w_c y_ic``; with one-hot targets this equals
    ``F.cross_entropy(logits, y, weight=weight)``.
    """
    logp = F.log_softmax(logits.float(), dim=-1)
    t = targets.float()
    if weight is not None:
        t = t * weight.to(t.device)[None, :]
    denom = t.sum().clamp(min=1e-12)
    return -(t * logp).sum() / denom
