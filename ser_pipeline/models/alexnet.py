"""AlexNet (Krizhevsky, Sutskever and Hinton, 2012, "ImageNet Classification with Deep
Convolutional Neural Networks", section 3.5 and figure 2) on 227x227x3 spectrogram images.

Keys follow torchvision's layout (``features.0/3/6/8/10``, ``classifier.1/4/6``) so that a local
torchvision ImageNet state dict loads with :func:`load_imagenet_weights`.

Two channel plans (registry ``VARIANTS``):
- ``torchvision``: 64, 192, 384, 256, 256 conv kernels (the single-GPU variant whose ImageNet
  weights torchvision publishes; the default, so pre-trained weights load);
- ``original``: 96, 256, 384, 384, 256 as in the paper.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ser_pipeline.config import require
from ser_pipeline.errors import ConfigError
from ser_pipeline.models import register_model

log = logging.getLogger(__name__)

VARIANTS: dict[str, tuple[int, int, int, int, int]] = {
    "torchvision": (64, 192, 384, 256, 256),
    "original": (96, 256, 384, 384, 256),
}
FC_DIM = 4096
WEIGHTS_ENV = "SER_ALEXNET_WEIGHTS"
"""Where ``ser train`` finds the ImageNet weights file when ``hparams.weights`` is not given (read once,
when the experiment is resolved, and recorded as ``hparams.weights``)."""
IMAGENET_LAYOUT = {"width_mult": 1.0, "batch_norm": False, "variant": "torchvision"}
"""The AlexNet hparams that torchvision's ImageNet weights fit."""


class AlexNet(nn.Module):
    """AlexNet: five conv layers (11x11/4, 5x5, 3x3, 3x3, 3x3), 3x3/2 max-pools after conv1,
    conv2 and conv5, adaptive average pool to 6x6, two FC layers of ``4096 * width_mult`` units
    with dropout, and a linear classifier.

    ``forward(x)``: ``(B, C, 227, 227) -> (B, n_classes)`` logits (any H, W >= 63 works).
    ``embed(x)``: ``(B, C, H, W) -> (B, fc_dim)`` the FC7 output (after ReLU), ``fc_dim = 4096``
    at ``width_mult=1``.

    ``batch_norm=True`` puts a BatchNorm after every conv (before its ReLU): the from-scratch
    variant of the CPU recipes, which trains from random initialisation where the plain network
    often stays at ln K loss. It has no ImageNet weights (torchvision's AlexNet has no BatchNorm).
    """

    def __init__(
        self,
        n_classes: int,
        in_channels: int = 3,
        *,
        dropout: float = 0.5,
        width_mult: float = 1.0,
        variant: str = "torchvision",
        batch_norm: bool = False,
    ) -> None:
        super().__init__()
        require(n_classes >= 2, "n_classes", n_classes, "need at least two classes")
        require(in_channels >= 1, "in_channels", in_channels, "must be positive")
        require(0.0 <= dropout < 1.0, "dropout", dropout, "must be in [0, 1)")
        require(width_mult > 0, "width_mult", width_mult, "must be positive")
        require(variant in VARIANTS, "variant", variant, f"valid variants: {sorted(VARIANTS)}")
        c1, c2, c3, c4, c5 = (max(1, round(c * width_mult)) for c in VARIANTS[variant])
        fc = max(1, round(FC_DIM * width_mult))
        self.embed_dim = fc
        self.batch_norm = batch_norm

        def conv(c_in: int, c_out: int, kernel: int, **kw: int) -> list[nn.Module]:
            norm = [nn.BatchNorm2d(c_out)] if batch_norm else []
            return [nn.Conv2d(c_in, c_out, kernel, **kw), *norm, nn.ReLU(inplace=True)]

        # without batch_norm the conv indices are torchvision's: features.0, 3, 6, 8, 10
        self.features = nn.Sequential(
            *conv(in_channels, c1, 11, stride=4, padding=2), nn.MaxPool2d(3, stride=2),
            *conv(c1, c2, 5, padding=2), nn.MaxPool2d(3, stride=2),
            *conv(c2, c3, 3, padding=1),
            *conv(c3, c4, 3, padding=1),
            *conv(c4, c5, 3, padding=1), nn.MaxPool2d(3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(c5 * 36, fc),  # 1
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(fc, fc),  # 4
            nn.ReLU(inplace=True),
            nn.Linear(fc, n_classes),  # 6
        )

    @property
    def head(self) -> nn.Module:
        """The emotion head (the last linear layer); the engine trains it alone after freezing."""
        return self.classifier[6]

    def conv_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, c5, 6, 6)`` pooled conv5 maps."""
        return self.avgpool(self.features(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, fc_dim)``: FC7 activations (after ReLU, before the classifier)."""
        z = torch.flatten(self.conv_features(x), 1)
        return self.classifier[:6](z)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W) -> (B, n_classes)`` logits."""
        return self.classifier[6](self.embed(x))


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB conv1 kernels ``(O, 3, k, k)`` -> ``(O, in_channels, k, k)``: channel mean, repeated,
    rescaled so the response to a constant input keeps its size."""
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (weight.shape[1] / in_channels)


def load_imagenet_weights(model: AlexNet, path: str | os.PathLike[str] | None) -> dict[str, Any]:
    """Load a local torchvision-layout AlexNet state dict into ``model``.

    - ``path`` None: keep the random initialisation and log a warning.
    - The last layer (``classifier.6``) is skipped when its class count differs.
    - ``features.0`` is adapted by channel averaging when ``in_channels`` is not 3.
    - Any other shape mismatch or missing key raises :class:`ConfigError` naming the key.

    Returns ``{"loaded": [keys], "skipped": [keys], "path": str | None}``.
    """
    if path is None:  # an experiment says so when resolved; a served model's weights come after
        log.info("alexnet: no ImageNet weights file given (hparam 'weights'); random init")
        return {"loaded": [], "skipped": [], "path": None}
    if model.batch_norm:
        raise ConfigError(f"weights={str(path)!r}: batch_norm=True has no ImageNet weights (torchvision's AlexNet "
                          "has no BatchNorm); give batch_norm=false to fine-tune them")
    file = Path(path).expanduser()
    if not file.is_file():
        raise ConfigError(f"weights={str(file)!r}: ImageNet weights file not found")
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file is a config problem
        raise ConfigError(f"weights={str(file)!r}: cannot read a state dict ({exc})") from exc
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    own = model.state_dict()
    loaded, skipped = [], []
    new_state = dict(own)
    for key, target in own.items():
        if key not in state:
            raise ConfigError(f"weights={str(file)!r}: missing key {key!r} (expected torchvision AlexNet layout)")
        value = state[key]
        if value.shape != target.shape:
            if key.startswith("classifier.6."):
                skipped.append(key)
                continue
            if key == "features.0.weight" and value.shape[0] == target.shape[0] and value.shape[2:] == target.shape[2:]:
                value = _adapt_first_conv(value, target.shape[1])
            else:
                raise ConfigError(
                    f"weights={str(file)!r}: key {key!r} has shape {tuple(value.shape)}, model needs "
                    f"{tuple(target.shape)} (only variant='torchvision', width_mult=1 loads ImageNet weights)"
                )
        new_state[key] = value.to(target.dtype)
        loaded.append(key)
    model.load_state_dict(new_state)
    log.info("alexnet: loaded %d tensors from %s (skipped %s)", len(loaded), file, skipped)
    return {"loaded": loaded, "skipped": skipped, "path": str(file)}


SCRATCH = {"hparams": {"batch_norm": True}}
"""The from-scratch variant of every AlexNet-based model (no ImageNet weights given; default and cpu
presets): a BatchNorm after each conv. Without it the network from random initialisation stays at
ln K training loss: ``alexnet_sru`` at full width on the demo corpus (default preset, one LOSO fold,
4 epochs) kept its stage-1 loss at ln 4 and scored test UA 0.362, against 0.938 with it (stop 31);
the demo's width-1/8 network 0.278 against 0.747 over 4 folds; the quarter width on CASIA (stop 12)."""


@register_model(
    "alexnet",
    reference="Krizhevsky, Sutskever and Hinton, 2012, ImageNet Classification with Deep CNNs (NeurIPS), sec. 3.5",
    feature_preset="logmel64",
    view={"kind": "fixed", "frames": 300, "resize": (227, 227), "channels": 3, "normalise": "utterance"},
    recipe={"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "batch_size": 32, "epochs": 30, "patience": 8},
    defaults={"dropout": 0.5, "width_mult": 1.0, "variant": "torchvision", "weights": None, "batch_norm": False},
    ablations={"weights": "local torchvision ImageNet state dict (None: random init)", "variant": "channel plan",
               "batch_norm": "BatchNorm after every conv (from-scratch variant; no ImageNet weights)"},
    # from scratch on CPU: BatchNorm per conv (without it the network often stays at ln K loss), AdamW 3e-3
    cpu={"hparams": {"width_mult": 0.25, "batch_norm": True}, "view": {"resize": (96, 96)}, "train": {"epochs": 15}},
    scratch=dict(SCRATCH),
)
def build_alexnet(n_classes: int, in_channels: int, *, weights: str | None = None, **hparams: Any) -> AlexNet:
    """Registry builder: :class:`AlexNet`, initialised from the ``weights`` file when given.

    ``$SER_ALEXNET_WEIGHTS`` is read by the experiment layer (``experiments.config``), which records
    the file it names as this hparam."""
    model = AlexNet(n_classes, in_channels, **hparams)
    load_imagenet_weights(model, weights)
    return model
