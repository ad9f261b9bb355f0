"""ResNet-18 adapted to spectrogram inputs (He et al., 2016, "Deep Residual Learning for Image
Recognition", table 1, 18-layer column), with an optional squeeze-and-excitation gate per block.

Input ``(B, C, F, T)`` with any channel count ``C``; feature maps ``(B, 8*width, F', T')``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ser_pipeline.config import require
from ser_pipeline.models import register_model
from ser_pipeline.models.blocks import BasicBlock


def _imagenet_stem(in_channels: int, width: int) -> nn.Module:
    """7x7/2 conv + BN + ReLU + 3x3/2 max-pool: ``(B, C, H, W) -> (B, width, H/4, W/4)``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 7, stride=2, padding=3, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2, padding=1),
    )


def _small_stem(in_channels: int, width: int) -> nn.Module:
    """3x3/1 conv + BN + ReLU, for small spectrograms: ``(B, C, H, W) -> (B, width, H, W)``."""
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, stride=1, padding=1, bias=False),
        nn.BatchNorm2d(width),
        nn.ReLU(inplace=True),
    )


STEMS: dict[str, Callable[[int, int], nn.Module]] = {"imagenet": _imagenet_stem, "small": _small_stem}


class ResNet18(nn.Module):
    """ResNet-18: stem, four stages of two :class:`BasicBlock` each (widths w, 2w, 4w, 8w; the
    last three stages stride 2), global average pooling and a linear head.

    ``features(x)``: ``(B, C, F, T) -> (B, 8*width, F', T')`` (no pooling; ``F' = F/32`` with the
    ImageNet stem). ``embed(x)``: ``(B, 8*width)``. ``forward(x)``: logits ``(B, n_classes)``.
    """

    def __init__(
        self,
        n_classes: int,
        in_channels: int,
        *,
        width: int = 64,
        se: bool = False,
        se_reduction: int = 16,
        stem: str = "imagenet",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        require(n_classes >= 2, "n_classes", n_classes, "need at least two classes")
        require(in_channels >= 1, "in_channels", in_channels, "must be positive")
        require(width >= 1, "width", width, "must be positive")
        require(stem in STEMS, "stem", stem, f"valid stems: {sorted(STEMS)}")
        require(0.0 <= dropout < 1.0, "dropout", dropout, "must be in [0, 1)")
        self.stem = STEMS[stem](in_channels, width)
        widths = (width, 2 * width, 4 * width, 8 * width)
        stages: list[nn.Module] = []
        in_ch = width
        for i, out_ch in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(
                nn.Sequential(
                    BasicBlock(in_ch, out_ch, stride, se=se, se_reduction=se_reduction),
                    BasicBlock(out_ch, out_ch, 1, se=se, se_reduction=se_reduction),
                )
            )
            in_ch = out_ch
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.out_channels = widths[-1]
        self.embed_dim = widths[-1]
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(self.out_channels, n_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T) -> (B, 8*width, F', T')`` feature maps, before any pooling."""
        x = self.stem(x)
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T) -> (B, 8*width)``: globally average-pooled feature maps."""
        return self.features(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T) -> (B, n_classes)`` logits."""
        return self.head(self.dropout(self.embed(x)))


@register_model(
    "resnet18",
    reference="He et al., 2016, Deep Residual Learning for Image Recognition (CVPR), table 1 (18-layer)",
    feature_preset="logmel64",
    view={"kind": "fixed", "frames": 300, "channels": 3, "normalise": "utterance"},
    recipe={"optimizer": "adam", "lr": 1e-3, "batch_size": 32, "epochs": 30, "patience": 8},
    defaults={"width": 64, "se": False, "stem": "imagenet", "dropout": 0.0},
    cpu={"hparams": {"width": 16}, "view": {"time_pool": 2}, "train": {"epochs": 15}},
    ablations={"se": "add a squeeze-and-excitation gate to every basic block", "width": "base channel width"},
)
def build_resnet18(n_classes: int, in_channels: int, **hparams: object) -> ResNet18:
    """Registry builder: :class:`ResNet18` with the given hyperparameters."""
    return ResNet18(n_classes, in_channels, **hparams)  # type: ignore[arg-type]
