"""``att_res`` family: a residual CNN with spatial attention inside the residual block (CASIA).

Reference: the paper's "spatial attention" and "Res-A block" definitions (channel max-pool
and average-pool, 1x1 convolution, softmax over the spatial positions, element-wise product) and its
network and experiments (variants Att-Res0 ... Att-Res3; accuracies 57.2, 58.7, 64.4, 67.3,
69.8, 66.1 %). Input: a spectrogram resized to 128x128 (``feature_preset="spectrogram"``).
Training: Adam, 25 epochs, random 80/20 split (speaker-dependent).
(Section and equation numbers are not given: the papers could not be consulted offline, so each
part is cited by the paper's own heading topic; equations are written out in full.)

Network::

    input layer : conv 3x3 (32, stride 1) -> BN -> ReLU -> max-pool 2 -> identity residual block
    block i     : conv 3x3 (C_i, stride 2) -> BN -> ReLU -> max-pool -> residual block (Res or Res-A)
    head        : [spatial attention] -> global average pooling -> FC -> logits (softmax in the loss)

Documented choices where the paper is silent (all configurable):

- ``channels=(64, 128, 256)``: the paper names 32, 64 and 128; the third block's width is not given,
  we double it again (256) as in ResNet. ``channels=(64, 128, 128)`` is the other reading.
- ``block_pool_stride=1``: the max-pool inside a Block is 3x3 with stride 1 ("same" size). With a
  stride-2 convolution *and* a halving max-pool in every block, a 128x128 input reaches the third
  block as a 1x1 map, where a spatial softmax is identically 1 and the deep Block-A variants would
  collapse into the shallow ones. ``block_pool_stride=2`` gives the literal halving pool.
- ``att_res1`` places its single Block-A in the middle position (the one shared by ``att_res2``
  and ``att_res``); ``attention_blocks`` chooses any placement.
- Inside Res-A the attention multiplies the residual branch (after the second BN) before the
  shortcut is added, as in CBAM-style residual attention.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ser_pipeline.config import require
from ser_pipeline.models import register_model

REFERENCE = (
    "Residual network with spatial attention inside the residual block for speech emotion recognition "
    "on CASIA: spatial attention (channel max/avg pool, 1x1 conv, spatial softmax) and Res-A block; "
    "network and variants Att-Res0..Att-Res3"
)


class SpatialAttention(nn.Module):
    """The paper's spatial attention.

    ``maps = cat(max_c x, mean_c x)`` (B, 2, H, W) -> 1x1 conv -> softmax over the H*W positions ->
    scores (B, 1, H, W) that sum to 1 per map; the output is ``x * scores`` (B, C, H, W).
    The last scores are kept (detached) in ``last_scores`` for inspection.
    """

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 1, kernel_size=1)
        self.last_scores: torch.Tensor | None = None

    def scores(self, x: torch.Tensor) -> torch.Tensor:
        """Attention scores ``(B, 1, H, W)`` for features ``x`` ``(B, C, H, W)``; each map sums to 1."""
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        logits = self.conv(pooled)  # (B, 1, H, W)
        b, _, h, w = logits.shape
        return torch.softmax(logits.reshape(b, 1, h * w), dim=-1).reshape(b, 1, h, w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C, H, W)``: the input weighted by its spatial scores."""
        scores = self.scores(x)
        self.last_scores = scores.detach()
        return x * scores


class ResidualBlock(nn.Module):
    """Identity residual block (two 3x3 conv + BN, shortcut); ``attention=True`` makes it Res-A.

    ``(B, C, H, W) -> (B, C, H, W)``.
    """

    def __init__(self, channels: int, *, attention: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.attention = SpatialAttention() if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.attention is not None:
            out = self.attention(out)
        return torch.relu(out + x)


def conv_bn_pool(in_ch: int, out_ch: int, *, stride: int, pool_stride: int) -> nn.Sequential:
    """3x3 conv (``stride``) -> BN -> ReLU -> max-pool (2x2/2 when ``pool_stride=2``, 3x3/1 when 1)."""
    pool = nn.MaxPool2d(2, 2) if pool_stride == 2 else nn.MaxPool2d(3, 1, padding=1)
    return nn.Sequential(
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
        pool,
    )


class AttRes(nn.Module):
    """Att-Res network. ``forward``: ``(B, C, 128, 128) -> (B, n_classes)`` logits.

    Any input size works (global average pooling); the paper's view resizes to 128x128.
    """

    def __init__(
        self,
        n_classes: int,
        in_channels: int = 1,
        *,
        attention_blocks: Sequence[bool] = (False, True, True),
        final_attention: bool = False,
        stem_channels: int = 32,
        channels: Sequence[int] = (64, 128, 256),
        block_pool_stride: int = 1,
        width: float = 1.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        require(n_classes >= 2, "n_classes", n_classes, "need at least 2 classes")
        require(in_channels >= 1, "in_channels", in_channels, "must be >= 1")
        require(len(attention_blocks) == len(channels), "attention_blocks", attention_blocks,
                f"needs one flag per block ({len(channels)} blocks)")
        require(block_pool_stride in (1, 2), "block_pool_stride", block_pool_stride, "must be 1 or 2")
        require(width > 0, "width", width, "must be > 0")
        require(0.0 <= dropout < 1.0, "dropout", dropout, "must be in [0, 1)")
        scaled = [max(1, round(c * width)) for c in (stem_channels, *channels)]
        self.stem = nn.Sequential(
            conv_bn_pool(in_channels, scaled[0], stride=1, pool_stride=2),
            ResidualBlock(scaled[0], attention=False),
        )
        self.blocks = nn.ModuleList(
            nn.Sequential(
                conv_bn_pool(c_in, c_out, stride=2, pool_stride=block_pool_stride),
                ResidualBlock(c_out, attention=bool(att)),
            )
            for c_in, c_out, att in zip(scaled[:-1], scaled[1:], attention_blocks, strict=True)
        )
        self.final_attention = SpatialAttention() if final_attention else None
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(scaled[-1], n_classes)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C_last, H', W')``: the maps before global pooling."""
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        if self.final_attention is not None:
            x = self.final_attention(x)
        return x

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, C_last)``: globally average-pooled features."""
        return self.feature_maps(x).mean(dim=(2, 3))

    def attention_modules(self) -> list[SpatialAttention]:
        """Every spatial attention in forward order (their ``last_scores`` after a forward)."""
        return [m for m in self.modules() if isinstance(m, SpatialAttention)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.embed(x)))


# the whole utterance (one segment) resampled to 128 frames, then resized to 128x128
VIEW = {"kind": "segments", "n_segments": 1, "frames": 128, "resize": (128, 128), "channels": 1,
        "normalise": "utterance"}
RECIPE = {
    "optimizer": "adam",
    "lr": 1e-3,
    "batch_size": 32,
    "epochs": 25,
    "weight_decay": 0.0,
    "class_weighted": False,
    "patience": None,
}
ABLATIONS = {
    "attention_blocks": "Block (False) or Block-A (True) at each of the three block positions",
    "final_attention": "spatial attention on the last feature maps before global pooling (Att-Res0+att)",
    "channels": "widths of the three blocks; the third is not given by the paper (256 or 128)",
    "block_pool_stride": "1: size-keeping 3x3 max-pool in blocks (default); 2: halving 2x2 max-pool",
    "width": "channel multiplier (tests only; 1.0 is the paper)",
}

# preset -> (attention_blocks, final_attention, reported accuracy %)
PRESETS: dict[str, tuple[tuple[bool, bool, bool], bool, float]] = {
    "att_res0": ((False, False, False), False, 57.2),
    "att_res0_att": ((False, False, False), True, 58.7),
    "att_res1": ((False, True, False), False, 64.4),
    "att_res2": ((True, True, False), False, 67.3),
    "att_res": ((False, True, True), False, 69.8),
    "att_res3": ((True, True, True), False, 66.1),
}


def build_att_res(n_classes: int, in_channels: int = 1, **hparams: object) -> AttRes:
    """Builder used by every preset: ``AttRes(n_classes, in_channels, **hparams)``."""
    return AttRes(n_classes, in_channels, **hparams)  # type: ignore[arg-type]


def _register_presets() -> None:
    for name, (blocks, final, acc) in PRESETS.items():
        register_model(
            name,
            reference=f"{REFERENCE}; reported CASIA accuracy {acc}% (random 80/20, speaker-dependent)",
            feature_preset="spectrogram",
            view=dict(VIEW),
            recipe=dict(RECIPE),
            defaults={
                "attention_blocks": blocks,
                "final_attention": final,
                "stem_channels": 32,
                "channels": (64, 128, 256),
                "block_pool_stride": 1,
                "width": 1.0,
                "dropout": 0.0,
            },
            ablations=dict(ABLATIONS),
            trainer="standard",
            protocol="random",
            augment="",
            cpu={"hparams": {"width": 0.25}, "view": {"frames": 64, "resize": (64, 64)}, "train": {"epochs": 15}},
        )(build_att_res)


_register_presets()
