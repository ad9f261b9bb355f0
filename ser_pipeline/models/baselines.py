"""Baseline models: a plain 2-D CNN and a CNN-LSTM on log-Mel images.

Both take ``(B, C, F, T)`` (frequency ``F``, time ``T``) and return logits ``(B, n_classes)``;
both expose ``embed(x) -> (B, D)`` so the two-stage and speaker pre-training trainers can use them.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ser_pipeline.config import require
from ser_pipeline.models import register_model
from ser_pipeline.models.blocks import ConvBlock, global_pool, masked_time_pool, masked_time_stats

POOLS = ("masked", "stats", "avg")


class PlainCNN(nn.Module):
    """Stacked :class:`ConvBlock` (3x3 conv, BN, ReLU, 2x2 max-pool) then global average pooling,
    dropout and a linear head.

    ``forward``: ``(B, C, F, T) -> (B, n_classes)``; ``embed``: ``(B, C, F, T) -> (B, channels[-1])``.
    With ``mask (B, T)`` (valid frames, given by the engine for ``fixed`` and ``full`` views) the
    pooling is length-aware (:func:`masked_time_pool`): padding does not dilute the embedding.
    """

    def __init__(self, n_classes: int, in_channels: int, *, channels: Sequence[int] = (32, 64, 128, 128),
                 dropout: float = 0.3, pool: str = "masked") -> None:
        super().__init__()
        require(n_classes >= 2, "n_classes", n_classes, "need at least two classes")
        require(pool in POOLS, "pool", pool, "must be 'masked' (length-aware mean), 'stats' (length-aware mean "
                "and std over time) or 'avg'")
        self.pool = pool
        require(len(channels) >= 1 and all(c > 0 for c in channels), "channels", channels, "need positive widths")
        require(0.0 <= dropout < 1.0, "dropout", dropout, "must be in [0, 1)")
        widths = [in_channels, *channels]
        self.body = nn.Sequential(*(ConvBlock(a, b, kernel=3, pool=2) for a, b in zip(widths[:-1], widths[1:], strict=True)))
        self.embed_dim = widths[-1] * (2 if pool == "stats" else 1)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.embed_dim, n_classes)

    def embed(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, F, T) -> (B, D)`` pooled conv features (over valid frames with ``mask (B, T)``):
        ``D = channels[-1]``, or twice that for ``stats`` (mean and std over time)."""
        h = self.body(x)
        if self.pool == "stats":
            return masked_time_stats(h, mask)
        return masked_time_pool(h, mask) if mask is not None and self.pool == "masked" else global_pool(h)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, C, F, T)`` (+ optional valid-frame ``mask (B, T)``) -> ``(B, n_classes)`` logits."""
        return self.head(self.dropout(self.embed(x, mask)))


class CNNLSTM(nn.Module):
    """Two conv layers (16 then 32 kernels of 5x5, stride 1, each followed by 2x2 max-pooling)
    feeding an LSTM of ``hidden`` (512) cells over time, dropout 0.5 and a linear head.

    The conv maps ``(B, 32, F/4, T/4)`` are average-pooled along frequency to ``freq_bins`` (the
    identity for 64 bands and the default 16) and become a sequence ``(B, T/4, 32 * freq_bins)``;
    the LSTM's last hidden state is the utterance embedding ``(B, hidden)``.
    ``forward``: ``(B, C, F, T) -> (B, n_classes)``.
    """

    def __init__(self, n_classes: int, in_channels: int, *, conv: Sequence[int] = (16, 32), kernel: int = 5,
                 hidden: int = 512, dropout: float = 0.5, freq_bins: int = 16) -> None:
        super().__init__()
        require(n_classes >= 2, "n_classes", n_classes, "need at least two classes")
        require(hidden > 0, "hidden", hidden, "must be positive")
        require(freq_bins > 0, "freq_bins", freq_bins, "must be positive")
        require(kernel % 2 == 1, "kernel", kernel, "must be odd")
        require(0.0 <= dropout < 1.0, "dropout", dropout, "must be in [0, 1)")
        widths = [in_channels, *conv]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            layers += [nn.Conv2d(a, b, kernel, stride=1, padding=kernel // 2), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2, ceil_mode=True)]
        self.conv = nn.Sequential(*layers)
        self.freq_bins = freq_bins
        self.lstm = nn.LSTM(widths[-1] * freq_bins, hidden, batch_first=True)
        self.embed_dim = hidden
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, n_classes)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T) -> (B, T/4, 32 * freq_bins)`` conv feature sequence."""
        maps = self.conv(x)  # (B, C', F', T')
        maps = nn.functional.adaptive_avg_pool2d(maps, (self.freq_bins, maps.shape[3]))
        B, C, Fp, Tp = maps.shape
        return maps.permute(0, 3, 1, 2).reshape(B, Tp, C * Fp)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T) -> (B, hidden)`` last LSTM hidden state."""
        _, (h, _) = self.lstm(self.sequence(x))
        return h[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T) -> (B, n_classes)`` logits."""
        return self.head(self.dropout(self.embed(x)))


@register_model(
    "cnn",
    reference="baseline: plain 2-D CNN on log-Mel images (4 conv-BN-ReLU-maxpool blocks, global average pool)",
    feature_preset="logmel64",
    view={"kind": "fixed", "frames": 300, "channels": 3, "normalise": "utterance"},
    recipe={"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 30, "patience": 8},
    defaults={"channels": (32, 64, 128, 128), "dropout": 0.3, "pool": "masked"},
    ablations={"channels": "conv widths per block", "dropout": "dropout before the head",
               "pool": "masked (length-aware mean), stats (length-aware mean + std over time) or avg (padding "
                       "included) pooling"},
    cpu={"hparams": {"channels": (16, 32, 64, 64)}, "view": {"time_pool": 2}, "train": {"epochs": 30}},
)
def build_cnn(n_classes: int, in_channels: int, **hparams: object) -> PlainCNN:
    """Registry builder: :class:`PlainCNN`."""
    return PlainCNN(n_classes, in_channels, **hparams)  # type: ignore[arg-type]


@register_model(
    "cnn_lstm",
    reference="baseline: CNN-LSTM, two conv layers (16, 32 kernels 5x5, stride 1, max-pool) + LSTM(512), dropout 0.5",
    feature_preset="logmel64",
    view={"kind": "fixed", "frames": 300, "channels": 3, "normalise": "utterance"},
    recipe={"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 30, "patience": 8},
    defaults={"conv": (16, 32), "kernel": 5, "hidden": 512, "dropout": 0.5, "freq_bins": 16},
    ablations={"hidden": "LSTM cells", "conv": "conv kernels per layer"},
    cpu={"hparams": {"conv": (8, 16), "hidden": 64, "freq_bins": 8}, "view": {"time_pool": 2}, "train": {"epochs": 15}},
)
def build_cnn_lstm(n_classes: int, in_channels: int, **hparams: object) -> CNNLSTM:
    """Registry builder: :class:`CNNLSTM`."""
    return CNNLSTM(n_classes, in_channels, **hparams)  # type: ignore[arg-type]
