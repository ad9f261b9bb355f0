"""A light head on frozen self-supervised layers (SUPERB's emotion probe; EmoBox's protocol).

Input: stored SSL features ``(B, L, H, T)`` (layers, hidden size, frames) and a frame mask
``(B, T)`` (True = a real frame). The probe learns a softmax-weighted sum of the ``L`` layers
(weights initialised equal), optionally layer-normalises each layer first, then either pools over
time (length-masked mean, or attentive pooling) or runs a sequence model over the frames (a BiLSTM
or attention pooling over its outputs), and classifies with a small MLP.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F

from ser_pipeline.config import require
from ser_pipeline.dataset.items import ItemFrames
from ser_pipeline.dataset.views import time_mask
from ser_pipeline.models import register_model

POOLINGS = ("mean", "attentive")
SEQUENCES = ("none", "blstm")


def masked_mean(y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over time of ``(B, T, D)`` counting only ``mask`` ``(B, T)`` frames -> ``(B, D)``."""
    if mask is None:
        return y.mean(dim=1)
    weights = mask.to(y.dtype)[..., None]
    return (y * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def pooled_layers(x: torch.Tensor, mask: torch.Tensor | None, *, layer_norm: bool, eps: float = 1e-5) -> torch.Tensor:
    """Masked time means ``(B, L, H)`` of every layer of ``x`` ``(B, L, H, T)``, each frame's ``H``
    values layer-normalised first when ``layer_norm`` (no affine, ``eps`` as ``F.layer_norm``).

    Parameter-free (computed without autograd): with mean pooling and no sequence model the probe is
    ``sum_l w_l mean_t LN(x_l)[t]``, and the weighted sum and the time mean commute, so only these
    means need the frames. The normalised frames are never built: with ``mu, r`` the mean and
    reciprocal std of each frame (two passes, as ``F.layer_norm``), ``mean_t LN(x)[t] = sum_t a_t x_t - sum_t a_t mu_t`` with
    ``a_t = r_t m_t / n`` (``m`` the mask, ``n`` its count): one pass for the statistics and one
    batched matrix-vector product.
    """
    with torch.no_grad():
        frames = x.shape[3]
        if mask is None:
            share = x.new_full((x.shape[0], frames), 1.0 / max(frames, 1))
        else:
            real = mask.to(x.dtype)
            share = real / real.sum(dim=1, keepdim=True).clamp_min(1.0)  # (B, T)
        if x.permute(0, 3, 1, 2).is_contiguous():  # time-major memory (the full view's): read in place
            return torch.stack([_pooled_time_major(xb, sb, layer_norm, eps)
                                for xb, sb in zip(x.permute(0, 3, 1, 2), share, strict=True)])
        if not layer_norm:
            return torch.einsum("blht,bt->blh", x, share)
        mu = x.mean(dim=2)  # (B, L, T)
        # two passes, item by item (a small temporary); torch.var_mean over a middle axis is 2-3x slower
        var = torch.stack([(xb - mb[:, None, :]).square().mean(dim=1) for xb, mb in zip(x, mu, strict=True)])
        a = share[:, None, :] * torch.rsqrt(var + eps)
        return torch.einsum("blht,blt->blh", x, a) - (a * mu).sum(dim=2, keepdim=True)


def pooled_items(items: ItemFrames, *, layer_norm: bool, eps: float = 1e-5) -> torch.Tensor:
    """:func:`pooled_layers` of the padded batch ``items.padded()``, ``(B, L, H)``, read from the
    table's rows in place: item by item, each one's frames ``(T_b, L, H)`` where they lie. Span
    masks are folded in without copying the item: a masked frame (all zeros in the padded batch,
    whose normalised frame is zero) gets no weight, and masked hidden units are zeroed in a
    temporary copy of the item only when the draw masks any."""
    with torch.no_grad():
        pooled = []
        for rows, band, frame in items.each():
            share = rows.new_full((rows.shape[0],), 1.0 / max(rows.shape[0], 1))
            if frame is not None:
                share = share * frame
            if band is not None:
                rows = rows * band
            pooled.append(_pooled_time_major(rows, share, layer_norm, eps))
        return torch.stack(pooled)


def _pooled_time_major(x: torch.Tensor, share: torch.Tensor, layer_norm: bool, eps: float) -> torch.Tensor:
    """:func:`pooled_layers` of one item whose frames lie time-major, ``x (T, L, H)`` contiguous and
    ``share (T,)`` -> ``(L, H)``: the statistics reduce the contiguous axis, and the time sum is one
    batched matrix-vector product over the layers, reading ``x`` where it lies."""
    if not layer_norm:
        return (share @ x.reshape(x.shape[0], -1)).reshape(x.shape[1:])
    mu = x.mean(dim=2)  # (T, L)
    var = (x - mu[..., None]).square().mean(dim=2)
    a = share[:, None] * torch.rsqrt(var + eps)  # (T, L)
    return torch.bmm(a.t().unsqueeze(1), x.transpose(0, 1)).squeeze(1) - (a * mu).sum(dim=0)[:, None]


class AttentivePooling(nn.Module):
    """``alpha_t = softmax_t(v^T tanh(W y_t))`` over real frames; ``(B, T, D) -> (B, D)``."""

    def __init__(self, dim: int, hidden: int = 64) -> None:
        super().__init__()
        self.proj = nn.Linear(dim, hidden)
        self.score = nn.Linear(hidden, 1, bias=False)

    def forward(self, y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        scores = self.score(torch.tanh(self.proj(y))).squeeze(-1)  # (B, T)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        alpha = torch.softmax(scores, dim=1)
        return torch.einsum("bt,btd->bd", alpha, y)


class SslProbe(nn.Module):
    """Weighted layer sum -> (BiLSTM) -> pooling -> MLP.

    ``forward(x (B, L, H, T), mask (B, T) | None) -> (B, n_classes)`` logits;
    ``layer_weights() -> (L,)`` the current softmax weights (they sum to 1).
    """

    def __init__(self, n_classes: int, in_channels: int, *, feature_dim: int = 768, pooling: str = "mean",
                 sequence: str = "none", head: Sequence[int] = (256,), dropout: float = 0.2, layer_norm: bool = True,
                 lstm_hidden: int = 128) -> None:
        super().__init__()
        require(n_classes >= 2, "n_classes", n_classes, "need at least two classes")
        require(in_channels >= 1, "in_channels", in_channels, "need at least one layer")
        require(feature_dim >= 1, "feature_dim", feature_dim, "the stored hidden size H, >= 1")
        require(pooling in POOLINGS, "pooling", pooling, f"valid: {list(POOLINGS)}")
        require(sequence in SEQUENCES, "sequence", sequence, f"valid: {list(SEQUENCES)}")
        require(0.0 <= dropout < 1.0, "dropout", dropout, "must be in [0, 1)")
        self.layer_logits = nn.Parameter(torch.zeros(in_channels))
        self.layer_norm = layer_norm
        dim = feature_dim
        self.lstm = nn.LSTM(dim, lstm_hidden, batch_first=True, bidirectional=True) if sequence == "blstm" else None
        if self.lstm is not None:
            dim = 2 * lstm_hidden
        self.pool = AttentivePooling(dim) if pooling == "attentive" else None
        self.embed_dim = dim
        layers: list[nn.Module] = []
        for size in head:
            layers += [nn.Linear(dim, int(size)), nn.ReLU(), nn.Dropout(dropout)]
            dim = int(size)
        self.head = nn.Sequential(*layers, nn.Linear(dim, n_classes))

    def layer_weights(self) -> torch.Tensor:
        """``(L,)`` softmax weights of the layers."""
        return torch.softmax(self.layer_logits, dim=0)

    def weights_for(self, x: torch.Tensor) -> torch.Tensor:
        """:meth:`layer_weights` for a batch ``x (B, L, ...)``; ConfigError when ``L`` is not the
        layer count the probe was built for."""
        require(x.shape[1] == self.layer_logits.numel(), "layers", x.shape[1],
                f"the probe was built for {self.layer_logits.numel()} layers")
        return self.layer_weights()

    def combine(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, L, H, T) -> (B, T, H)``: the weighted sum of (normalised) layers."""
        weights = self.weights_for(x)
        y = x.transpose(2, 3)  # (B, L, T, H)
        if self.layer_norm:
            y = F.layer_norm(y, y.shape[-1:])
        return torch.einsum("l,bltd->btd", weights, y)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L, H, T) -> (B, D)`` pooled utterance embedding (padding ignored)."""
        if self.lstm is None and self.pool is None:  # mean pooling: the layer sum of per-layer means
            return self._layer_sum(pooled_layers(x, mask, layer_norm=self.layer_norm))
        y = self.combine(x)
        if self.lstm is not None:
            lengths = mask.sum(dim=1).clamp_min(1).cpu() if mask is not None else torch.full((y.shape[0],), y.shape[1])
            packed = nn.utils.rnn.pack_padded_sequence(y, lengths, batch_first=True, enforce_sorted=False)
            out, _ = self.lstm(packed)
            y, _ = nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=y.shape[1])
        return self.pool(y, mask) if self.pool is not None else masked_mean(y, mask)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, L, H, T)`` and ``(B, T)`` -> ``(B, n_classes)`` logits."""
        return self.head(self.embed(x, mask))

    def forward_items(self, items: ItemFrames) -> torch.Tensor:
        """:meth:`forward` of ``items.padded()`` and its frame mask, ``(B, n_classes)`` logits. With
        mean pooling and no sequence model the items are read where the table keeps them
        (:func:`pooled_items`); otherwise the padded batch is built."""
        if self.lstm is not None or self.pool is not None:
            return self(items.padded(), time_mask(items.lengths, items.width))
        return self.head(self._layer_sum(pooled_items(items, layer_norm=self.layer_norm)))

    def _layer_sum(self, pooled: torch.Tensor) -> torch.Tensor:
        """``(B, L, H) -> (B, H)``: per-layer time means summed with the layer weights."""
        return torch.einsum("l,blh->bh", self.weights_for(pooled), pooled)


@register_model(
    "ssl_probe",
    reference=("probe on frozen self-supervised layers (SUPERB emotion task; EmoBox): softmax-weighted sum of every "
               "hidden layer, length-masked mean (or attentive) pooling, MLP head; optional BiLSTM over frames"),
    feature_preset="ssl",
    # hidden states, not log energies; frames 0: a batch is padded to its longest item only (every pooling
    # and the BiLSTM ignore padded frames, and SpecAugment's time masks fall inside each item's length,
    # so a wider pad changes no output and only moves more memory: 300 frames are 6 s of 50 Hz layers)
    view={"kind": "full", "frames": 0, "channels": 0, "normalise": "none", "floor_db": 0.0},
    recipe={"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 30, "patience": 8},
    defaults={"feature_dim": 768, "pooling": "mean", "sequence": "none", "head": (256,), "dropout": 0.2,
              "layer_norm": True, "lstm_hidden": 128},
    ablations={"pooling": "mean | attentive", "sequence": "none | blstm over frames",
               "layer_norm": "normalise each layer before the weighted sum"},
    cpu={"hparams": {"head": (64,)}, "train": {"epochs": 15}},
)
def build_ssl_probe(n_classes: int, in_channels: int, **hparams: object) -> SslProbe:
    """Registry builder: :class:`SslProbe` (``feature_dim`` is filled from the feature spec's hidden size)."""
    return SslProbe(n_classes, in_channels, **hparams)  # type: ignore[arg-type]
