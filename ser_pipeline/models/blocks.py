"""Shared building blocks for the model families (DESIGN.md convention 6).

Every block takes and returns image-like tensors ``(B, C, H, W)`` where, for spectrograms,
``H`` is frequency and ``W`` is time.
"""

from __future__ import annotations

import torch
from torch import nn

from ser_pipeline.config import require


class SqueezeExcitation(nn.Module):
    """Squeeze-and-excitation channel gate (Hu et al., 2018, eq. 2-4).

    ``(B, C, H, W) -> (B, C, H, W)``: global average pool to ``(B, C)``, a bottleneck MLP
    ``C -> max(1, C // reduction) -> C`` with ReLU and a sigmoid, then channel-wise rescale.
    """

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        require(channels > 0, "channels", channels, "must be positive")
        require(reduction > 0, "se_reduction", reduction, "must be positive")
        hidden = max(1, channels // reduction)
        self.fc1 = nn.Linear(channels, hidden)
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, C, H, W)`` -> same shape, each channel scaled by a gate in (0, 1)."""
        squeeze = x.mean(dim=(2, 3))
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(squeeze))))
        return x * gate[:, :, None, None]


class BasicBlock(nn.Module):
    """ResNet basic block (He et al., 2016, fig. 2): two 3x3 conv-BN layers plus a shortcut.

    ``(B, in_ch, H, W) -> (B, out_ch, ceil(H/stride), ceil(W/stride))``. The shortcut is a 1x1
    strided conv + BN when the shape changes, else the identity. With ``se=True`` a
    :class:`SqueezeExcitation` gate rescales the residual branch before the addition.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, *, se: bool = False, se_reduction: int = 16) -> None:
        super().__init__()
        require(stride in (1, 2), "stride", stride, "must be 1 or 2")
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.se = SqueezeExcitation(out_ch, se_reduction) if se else nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: ``(B, in_ch, H, W)`` -> ``(B, out_ch, H', W')``."""
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return torch.relu(out + self.shortcut(x))


class ConvBlock(nn.Module):
    """Conv2d -> BatchNorm -> ReLU -> optional max-pool.

    ``(B, in_ch, H, W) -> (B, out_ch, H // pool, W // pool)`` ("same" padding for odd kernels).
    """

    def __init__(self, in_ch: int, out_ch: int, *, kernel: int = 3, pool: int = 2, batch_norm: bool = True) -> None:
        super().__init__()
        require(kernel % 2 == 1, "kernel", kernel, "must be odd (same padding)")
        layers: list[nn.Module] = [nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=not batch_norm)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_ch))
        layers.append(nn.ReLU(inplace=True))
        if pool > 1:
            layers.append(nn.MaxPool2d(pool, ceil_mode=True))
        self.body = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def global_pool(x: torch.Tensor, *, mode: str = "avg") -> torch.Tensor:
    """``(B, C, H, W) -> (B, C)``: mean (``avg``) or max (``max``) over both spatial axes."""
    require(mode in ("avg", "max"), "pool", mode, "must be 'avg' or 'max'")
    return x.mean(dim=(2, 3)) if mode == "avg" else x.amax(dim=(2, 3))


def valid_steps(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``(B, W)`` float 1/0: the time steps of ``x (B, C, H, W)`` that cover valid input frames of
    ``mask (B, T)`` (a step covers ``T / W`` frames); all ones without a mask."""
    B, W = x.shape[0], x.shape[3]
    if mask is None:
        return torch.ones(B, W, dtype=x.dtype, device=x.device)
    T = mask.shape[1]
    valid = mask.long().sum(dim=1)
    steps = torch.div(valid * W + T - 1, T, rounding_mode="floor").clamp(min=1, max=W)  # ceil(valid * W / T)
    return (torch.arange(W, device=x.device)[None, :] < steps[:, None]).to(x.dtype)


def masked_time_stats(x: torch.Tensor, mask: torch.Tensor | None, *, eps: float = 1e-5) -> torch.Tensor:
    """Statistics pooling: ``(B, C, H, W) -> (B, 2C)``, the mean and the standard deviation over the
    valid time steps of the frequency-averaged maps (as x-vector statistics pooling). The spread
    over time keeps variability cues that a mean alone averages away."""
    z = x.mean(dim=2)  # (B, C, W)
    m = valid_steps(x, mask)[:, None, :]
    n = m.sum(dim=2).clamp(min=1.0)
    mean = (z * m).sum(dim=2) / n
    var = (((z - mean[:, :, None]) ** 2) * m).sum(dim=2) / n
    return torch.cat([mean, torch.sqrt(var + eps)], dim=1)


def masked_time_pool(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Length-aware mean pooling: ``(B, C, H, W) -> (B, C)``, the mean over H and over the time
    steps ``W`` that cover valid input frames; ``mask`` ``(B, T)`` marks the valid input frames
    (``T`` = the input width; a step covers ``T / W`` frames). ``mask=None``: the plain mean.

    Padding past an utterance's end never enters the mean, so extra padding leaves the output unchanged
    (as long as it does not reach the valid steps through the receptive field)."""
    if mask is None:
        return x.mean(dim=(2, 3))
    m = valid_steps(x, mask)  # (B, W)
    return (x.mean(dim=2) * m[:, None, :]).sum(dim=2) / m.sum(dim=1, keepdim=True)
