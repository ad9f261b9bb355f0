"""A batch of items read in place from a preloaded table: the ``full`` view before it is padded.

The ``full`` view of a table's items (:func:`~ser_pipeline.dataset.views.view_items`) is a padded
copy of every item's frames, ``(B, C, F, W)``. For stored SSL layers that copy is hundreds of MB per
batch, and a model that only reduces each item over time (``ssl_probe``'s mean pooling) can read the
frames where the table keeps them instead. :class:`ItemFrames` describes the batch without copying
it: which rows of the table each item is, and SpecAugment's span masks drawn for it. The padded
tensor is built only when something asks for it (:meth:`ItemFrames.padded`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ser_pipeline.dataset.resample import Keep


@dataclass(frozen=True)
class ItemFrames:
    """``B`` items lying time-major in ``frames (sum_T, C, F)``: item ``b`` is the rows
    ``frames[offsets[b] : offsets[b] + lengths[b]]``, ``(T_b, C, F)``.

    ``width``: the frame count of the padded batch (at least the longest item). ``keep``: the span
    masks drawn for the batch (:func:`~ser_pipeline.dataset.resample.draw_keep`), bands ``(B, F)``
    and frames ``(B, width)``, 0/1 in ``frames``' dtype; an item's values are its frames times both.
    """

    frames: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    width: int
    keep: Keep | None = None

    def __len__(self) -> int:
        return len(self.lengths)

    def each(self) -> Iterator[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]]:
        """Every item's rows ``(T_b, C, F)`` (the table's, not a copy), its band keep ``(F,)`` when
        its draw masks any band (else None), and its frame keep ``(T_b,)`` (None without span
        masks). Offsets, lengths and which items mask bands are read once per batch (on a GPU,
        reading them item by item would wait for the device each time)."""
        spans = zip(self.offsets.tolist(), self.lengths.tolist(), strict=True)
        if self.keep is None:
            for start, n in spans:
                yield self.frames[start : start + n], None, None
            return
        bands, frames = self.keep
        masks_bands = (bands == 0).any(dim=1).tolist()
        for b, (start, n) in enumerate(spans):
            yield self.frames[start : start + n], bands[b] if masks_bands[b] else None, frames[b, :n]

    def padded(self) -> torch.Tensor:
        """The padded batch ``(B, C, F, width)``: every item's frames written once, time-major as they
        lie (so the result is a permuted view of a contiguous ``(B, width, C, F)`` tensor), times its
        span masks; zeros after each item's length."""
        x = self.frames.new_empty((len(self), self.width, *self.frames.shape[1:]))
        for b, (rows, band, frame) in enumerate(self.each()):
            n = rows.shape[0]
            if frame is None:
                x[b, :n] = rows
            else:
                keep = frame[:, None, None] if band is None else frame[:, None, None] * band[None, None, :]
                torch.mul(rows, keep, out=x[b, :n])
            x[b, n:] = 0
        return x.permute(0, 2, 3, 1)
