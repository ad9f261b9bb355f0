"""``res_trans``: SE-ResNet-18 feature extractor plus a Transformer encoder over time, with
voiceprint (speaker-identification) regularisation.

Reference: the paper's feature-extractor description (ResNet-18 with squeeze-and-excitation channel attention in its
blocks, last pooling and classification layers removed; the 512 feature maps form a sequence along
the time axis), its encoder description (Transformer encoder: multi-head self-attention, feed-forward, layer
norm, residual connections; a linear classifier on the pooled output), its voiceprint-regularisation method (
regularisation: stage 1 trains the CNN to identify the training speakers directly from its final
feature maps; stage 2 freezes the CNN and trains the Transformer and the classifier for emotion),
its augmentation section (Horizontal Mixup, a = 0.05, b = 1.25, c = 1, adding 30 % mixed data; Cutout,
salt-and-pepper, random cut and Mixup as options) and its experiments (F1 0.966 and per-class accuracy on
a 4-class Chinese corpus that we do not have; any CSV-described corpus runs the same recipe).
(Section and equation numbers are not given: the papers could not be consulted offline, so each
part is cited by the paper's own heading topic; equations are written out in full.)

Shapes: ``(B, C, F, T)`` -> SE-ResNet-18 ``features`` ``(B, 512, F/32, T/32)`` -> mean over
frequency -> sequence ``(B, T/32, 512)`` -> Transformer encoder -> mean over time ``(B, 512)`` ->
linear -> ``(B, n_classes)``.

Documented choices where the paper is silent (all configurable): 2 encoder layers, 8 heads,
feed-forward 1024, dropout 0.1, sinusoidal positional encoding, pre-norm off (post-norm as in the
original Transformer), mean pooling over time, frequency pooled by its mean, ImageNet-style ResNet
stem, input log-Mel 64 bands cut/padded to 300 frames (3 s).

Trainers: ``res_trans`` uses ``speaker_pretrain`` (stage 1 ``speaker_head(n_speakers)`` on the
CNN's globally pooled final maps; then :meth:`ResTrans.freeze_backbone` and the emotion stage);
``res_trans_single_stage`` is the end-to-end ablation (``standard`` trainer, nothing frozen).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ser_pipeline.config import require
from ser_pipeline.models import register_model
from ser_pipeline.models.resnet import ResNet18

REFERENCE = (
    "SE-ResNet-18 + Transformer encoder with voiceprint regularisation for SER: SE-ResNet-18 "
    "feature maps as a time sequence, Transformer encoder + linear classifier, "
    "speaker-identification pre-training then frozen CNN, Horizontal Mixup (a=0.05, b=1.25, "
    "c=1, +30%); reported F1 0.966 on a 4-class Chinese corpus (not available here)"
)


def sinusoidal_encoding(length: int, dim: int) -> torch.Tensor:
    """Vaswani et al. positional encoding ``(length, dim)``: sin on even, cos on odd features."""
    pos = torch.arange(length, dtype=torch.float32)[:, None]
    freq = torch.exp(torch.arange(0, dim, 2, dtype=torch.float32) * (-math.log(10000.0) / dim))
    enc = torch.zeros(length, dim)
    enc[:, 0::2] = torch.sin(pos * freq)
    enc[:, 1::2] = torch.cos(pos * freq)[:, : dim // 2]
    return enc


class ResTrans(nn.Module):
    """SE-ResNet-18 + Transformer encoder. ``forward``: ``(B, C, F, T) -> (B, n_classes)``.

    ``sequence(x)``: ``(B, T', D)`` CNN feature sequence with ``D = 8 * width``;
    ``embed(x)``: ``(B, D)`` the pooled encoder output; ``speaker_logits(x)``: ``(B, n_speakers)``
    after :meth:`speaker_head`.
    """

    def __init__(
        self,
        n_classes: int,
        in_channels: int = 1,
        *,
        width: int = 64,
        se_reduction: int = 16,
        stem: str = "imagenet",
        layers: int = 2,
        heads: int = 8,
        ff_dim: int = 1024,
        dropout: float = 0.1,
        positional: bool = True,
    ) -> None:
        super().__init__()
        require(layers >= 1, "layers", layers, "must be >= 1")
        require(heads >= 1 and (8 * width) % heads == 0, "heads", heads, f"must divide d_model={8 * width}")
        require(ff_dim >= 1, "ff_dim", ff_dim, "must be >= 1")
        self.cnn = ResNet18(n_classes, in_channels, width=width, se=True, se_reduction=se_reduction, stem=stem)
        self.cnn.head = nn.Identity()  # the last pooling and classification layers are not used
        d_model = self.cnn.out_channels
        self.d_model = d_model
        self.embed_dim = d_model
        self.positional = positional
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=ff_dim, dropout=dropout, batch_first=True, norm_first=False
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(d_model, n_classes)
        self.speaker_fc: nn.Linear | None = None
        self._frozen = False
        self.register_load_state_dict_pre_hook(_without_a_dropped_speaker_head)

    def sequence(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T) -> (B, T', D)``: SE-ResNet-18 maps, frequency averaged, time as steps."""
        maps = self.cnn.features(x)  # (B, D, F', T')
        return maps.mean(dim=2).transpose(1, 2)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T) -> (B, D)``: the Transformer's output averaged over time."""
        seq = self.sequence(x)
        if self.positional:
            seq = seq + sinusoidal_encoding(seq.shape[1], seq.shape[2]).to(seq)
        return self.encoder(seq).mean(dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))

    # -- voiceprint regularisation --------------------------------------------------------------
    def speaker_head(self, n_speakers: int) -> nn.Linear:
        """Install (and return) the stage-1 speaker classifier on the CNN's pooled final maps."""
        require(n_speakers >= 2, "n_speakers", n_speakers, "speaker pre-training needs >= 2 training speakers")
        self.speaker_fc = nn.Linear(self.d_model, n_speakers)
        return self.speaker_fc

    def speaker_logits(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, F, T) -> (B, n_speakers)``: speaker identification from the CNN maps alone."""
        if self.speaker_fc is None:
            raise RuntimeError("call speaker_head(n_speakers) before speaker_logits")
        return self.speaker_fc(self.cnn.embed(x))

    def drop_speaker_head(self) -> None:
        """Remove the stage-1 speaker classifier: the emotion model that is saved, served and loaded
        is the registered architecture, without it."""
        self.speaker_fc = None

    def backbone(self) -> nn.Module:
        """The part that stage 1 trains and stage 2 freezes: the SE-ResNet-18."""
        return self.cnn

    def freeze_backbone(self) -> None:
        """Freeze the CNN (no gradients, BN statistics fixed by ``train()`` below)."""
        for p in self.cnn.parameters():
            p.requires_grad_(False)
        self._frozen = True
        self.cnn.eval()

    def train(self, mode: bool = True) -> ResTrans:
        super().train(mode)
        if self._frozen:
            self.cnn.eval()
        return self


def _without_a_dropped_speaker_head(module: ResTrans, state_dict: dict[str, Any], prefix: str, *_: Any) -> None:
    """Load-state pre-hook: model folders written before the speaker head was dropped after stage 1
    hold ``speaker_fc.*``; a model without the head ignores them (it never uses them)."""
    if module.speaker_fc is None:
        for key in [k for k in state_dict if k.startswith(f"{prefix}speaker_fc.")]:
            del state_dict[key]


def build_res_trans(n_classes: int, in_channels: int = 1, **hparams: Any) -> ResTrans:
    """Registry builder: :class:`ResTrans` with the given hyperparameters."""
    return ResTrans(n_classes, in_channels, **hparams)


VIEW = {"kind": "fixed", "frames": 300, "channels": 1, "normalise": "utterance"}
RECIPE = {"optimizer": "adam", "lr": 1e-4, "batch_size": 32, "epochs": 50, "patience": 10,
          "speaker_epochs": 20, "speaker_lr": 1e-3, "speaker_freeze": True}
DEFAULTS = {"width": 64, "se_reduction": 16, "stem": "imagenet", "layers": 2, "heads": 8, "ff_dim": 1024,
            "dropout": 0.1, "positional": True}
# SpecAugmentSpec fields (ser_pipeline.dataset.spec_augment): Horizontal Mixup (a, b, c), adding 30 %
SPEC_AUGMENT = {"hmixup": (0.05, 1.25, 1.0), "ratio": 0.3}
ABLATIONS = {
    "single_stage": "res_trans_single_stage: end to end, no speaker pre-training, nothing frozen",
    "spec_augment": "horizontal_mixup (paper), or cutout / salt_pepper / random_cut / mixup",
    "layers": "Transformer encoder layers",
    "heads": "attention heads",
    "positional": "sinusoidal positional encoding on the CNN sequence",
    "width": "ResNet base width (64 is the paper; small values for tests)",
}

for _name, _trainer, _extra in (
    ("res_trans", "speaker_pretrain", ""),
    ("res_trans_single_stage", "standard", "; ablation: single-stage end-to-end training"),
):
    register_model(
        _name,
        reference=REFERENCE + _extra,
        feature_preset="logmel64",
        view=dict(VIEW),
        recipe=dict(RECIPE),
        defaults=dict(DEFAULTS),
        ablations=dict(ABLATIONS),
        trainer=_trainer,
        protocol="loso",
        spec_augment=dict(SPEC_AUGMENT),
        cpu={"hparams": {"width": 16, "layers": 1, "heads": 4, "ff_dim": 128}, "view": {"time_pool": 2},
             "train": {"epochs": 15, "speaker_epochs": 5}},
    )(build_res_trans)
