"""``rescnn``: residual CNN for Chinese speech emotion recognition (CASIA, 6 classes).

Reference: the paper's network description (network: two convolution layers for shallow features, then two
blocks of one convolution layer followed by a residual identity block of two convolution layers
and a shortcut, a fully connected layer and softmax; ReLU, cross-entropy, Adam), its data-augmentation
section (time-domain augmentation: speed change and pitch shift at constant duration) and its experiments
(86.3 % accuracy on CASIA; the split is not stated, we run it as a random 80/20 split and label
it speaker-dependent). Input: a log-Mel spectrogram resized to 156x144.
(Section and equation numbers are not given: the papers could not be consulted offline, so each
part is cited by the paper's own heading topic; equations are written out in full.)

Network (``forward``: ``(B, C, 156, 144) -> (B, n_classes)``)::

    shallow : ConvBlock(C -> 32) -> ConvBlock(32 -> 64)          each conv 3x3 + BN + ReLU + max-pool 2
    block 1 : ConvBlock(64 -> 128)  -> BasicBlock(128, 128)       identity residual block
    block 2 : ConvBlock(128 -> 256) -> BasicBlock(256, 256)
    head    : global average pooling -> dropout -> FC -> logits (softmax in the loss)

Documented choices where the paper is silent (all configurable): 3x3 kernels, channel widths
``channels=(32, 64, 128, 256)``, batch normalisation after each convolution, a 2x2 max-pool after
each plain convolution, global average pooling before the FC layer (``pooling="flatten"`` keeps
the flattened maps), dropout 0.5 before the FC layer, Adam lr 1e-3, batch 32, 50 epochs.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ser_pipeline.config import require
from ser_pipeline.models import register_model
from ser_pipeline.models.blocks import BasicBlock, ConvBlock

REFERENCE = (
    "Residual CNN for Chinese speech emotion recognition (CASIA): network (2 conv layers, "
    "2 x [conv + identity residual block], FC + softmax), speed/pitch augmentation; reported "
    "86.3% accuracy on CASIA (split not stated; run as random 80/20, speaker-dependent)"
)
INPUT_SIZE = (156, 144)
POOLINGS = ("gap", "flatten")


class ResCNN(nn.Module):
    """Residual CNN. ``forward``: ``(B, C, H, W) -> (B, n_classes)`` logits (paper: H, W = 156, 144).

    ``embed``: ``(B, C, H, W) -> (B, D)`` with ``D = channels[-1]`` (``gap``) or the flattened map
    size (``flatten``, which fixes the input size to ``input_size``).
    """

    def __init__(
        self,
        n_classes: int,
        in_channels: int = 1,
        *,
        channels: Sequence[int] = (32, 64, 128, 256),
        kernel: int = 3,
        batch_norm: bool = True,
        pooling: str = "gap",
        dropout: float = 0.5,
        width: float = 1.0,
        input_size: Sequence[int] = INPUT_SIZE,
    ) -> None:
        super().__init__()
        require(n_classes >= 2, "n_classes", n_classes, "need at least 2 classes")
        require(in_channels >= 1, "in_channels", in_channels, "must be >= 1")
        require(len(channels) == 4, "channels", channels, "needs 4 widths: shallow1, shallow2, block1, block2")
        require(pooling in POOLINGS, "pooling", pooling, f"valid values: {POOLINGS}")
        require(width > 0, "width", width, "must be > 0")
        require(0.0 <= dropout < 1.0, "dropout", dropout, "must be in [0, 1)")
        c1, c2, c3, c4 = (max(1, round(c * width)) for c in channels)
        self.shallow = nn.Sequential(
            ConvBlock(in_channels, c1, kernel=kernel, pool=2, batch_norm=batch_norm),
            ConvBlock(c1, c2, kernel=kernel, pool=2, batch_norm=batch_norm),
        )
        self.blocks = nn.Sequential(
            ConvBlock(c2, c3, kernel=kernel, pool=2, batch_norm=batch_norm),
            BasicBlock(c3, c3, 1),
            ConvBlock(c3, c4, kernel=kernel, pool=2, batch_norm=batch_norm),
            BasicBlock(c4, c4, 1),
        )
        self.pooling = pooling
        if pooling == "gap":
            embed_dim = c4
        else:
            h, w = input_size
            for _ in range(4):  # four ceil-mode 2x2 pools
                h, w = -(-h // 2), -(-w // 2)
            embed_dim = c4 * h * w
        self.embed_dim = embed_dim
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(embed_dim, n_classes)

    def feature_maps(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, channels[-1], ceil(H/16), ceil(W/16))``."""
        return self.blocks(self.shallow(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, embed_dim)``."""
        maps = self.feature_maps(x)
        return maps.mean(dim=(2, 3)) if self.pooling == "gap" else maps.flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.embed(x)))


@register_model(
    "rescnn",
    reference=REFERENCE,
    feature_preset="logmel64",
    # the whole utterance (one segment) resampled to 144 frames, then resized to 156x144
    view={"kind": "segments", "n_segments": 1, "frames": INPUT_SIZE[1], "resize": INPUT_SIZE, "channels": 1,
          "normalise": "utterance"},
    recipe={"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 50, "patience": 10, "class_weighted": False},
    cpu={"hparams": {"width": 0.25}, "view": {"frames": 72, "resize": (78, 72)}, "train": {"epochs": 15}},
    defaults={
        "channels": (32, 64, 128, 256),
        "kernel": 3,
        "batch_norm": True,
        "pooling": "gap",
        "dropout": 0.5,
        "width": 1.0,
    },
    ablations={
        "augment": "time-domain speed change and pitch shift (the paper's augmentation); '' for none",
        "pooling": "gap (global average pooling) or flatten before the FC layer",
        "batch_norm": "batch normalisation after each convolution (not stated in the paper)",
        "channels": "widths of the two shallow convolutions and the two blocks",
        "width": "channel multiplier (tests only; 1.0 is the default)",
    },
    trainer="standard",
    protocol="random",
    augment="speed=0.9,1.1;pitch=-2,2",
)
def build_rescnn(n_classes: int, in_channels: int = 1, **hparams: object) -> ResCNN:
    """Registry builder: :class:`ResCNN` with the given hyperparameters."""
    return ResCNN(n_classes, in_channels, **hparams)  # type: ignore[arg-type]
