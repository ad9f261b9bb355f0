"""A batch of items read in place from a preloaded table: the ``full`` view before it is padded.

The ``full`` view of a table's items (:func:`~ser_pipeline.dataset.views.view_items`) is a padded
copy of every item's frames, ``(B, C, F, W)``. For stored SSL layers that copy is hundreds of MB per
batch, and a model that only reduces each item over time (``ssl_probe``'s mean pooling) can read the
frames where the table keeps them instead. :class:`ItemFrames` describes the batch without copying
it: which rows of the table each item is, and SpecAugment's span masks drawn for it. The padded
tensor is built only when something asks for it (:meth:`ItemFrames.padded`).
"""

from __future__ import annotations

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

    def item(self, b: int) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """Item ``b``'s frames ``(T_b, C, F)`` (the table's rows, not a copy), and its band keep
        ``(F,)`` and frame keep ``(T_b,)`` (None without span masks)."""
        start, n = int(self.offsets[b]), int(self.lengths[b])
        rows = self.frames[start : start + n]
        if self.keep is None:
            return rows, None, None
        return rows, self.keep[0][b], self.keep[1][b, :n]

    def padded(self) -> torch.Tensor:
        """The padded batch ``(B, C, F, width)``: every item's frames written once, time-major as they
        lie (so the result is a permuted view of a contiguous ``(B, width, C, F)`` tensor), times its
        span masks; zeros after each item's length."""
        x = self.frames.new_empty((len(self), self.width, *self.frames.shape[1:]))
        for b in range(len(self)):
            rows, band, frame = self.item(b)
            n = rows.shape[0]
            if band is None:
                x[b, :n] = rows
            else:
                torch.mul(rows, frame[:, None, None] * band[None, None, :], out=x[b, :n])
            x[b, n:] = 0
        return x.permute(0, 2, 3, 1)
