"""``alexnet_sru``: segment-level AlexNet plus a Simple Recurrent Unit (EMO-DB, CASIA).

Reference: the DCNN + SRU paper on EMO-DB and CASIA (indexed as "Speech emotion recognition using
deep convolutional neural network and simple recurrent unit"): its features (3-channel log-Mel:
static, delta, delta-delta, 60 bands, 25 ms Hamming window, 10 ms hop; each utterance cut into N equal segments, each resized bilinearly
to 227x227x3), its DCNN stage (stage 1: AlexNet fine-tuned on segments that carry their utterance's
label; SGD lr 0.001, momentum 0.9, dropout 0.5, batch 30, at most 400 epochs; FC7 outputs are the
4096-d segment features), its SRU stage (stage 2: the SRU equations below, then softmax; Adam lr 0.001,
batch 30) and its experiments (LOSO; EMO-DB WA/UA 82.5/80.6 with N=3, CASIA 51.3/51.3 with N=5).
(Section and equation numbers are not given: the papers could not be consulted offline, so each
part is cited by the paper's own heading topic; equations are written out in full.)

SRU, implemented here exactly; ``f_t`` is the segment feature at step t::

    x~_t = W f_t
    f'_t = sigmoid(W_f f_t + b_f)                    (forget gate)
    c_t  = f'_t * c_{t-1} + (1 - f'_t) * x~_t
    r_t  = sigmoid(W_r f_t + b_r)                    (reset/highway gate)
    h_t  = r_t * tanh(c_t) + (1 - r_t) * f_t         (f_t is projected by P when sizes differ)

Documented choices where the paper is silent (all configurable): the classifier reads the last
hidden state ``h_N`` (``readout="mean"`` averages over steps); one SRU layer; ``c_0 = 0``; the
highway projection ``P`` has no bias; early stopping patience 20 epochs on the validation UA with
the 400-epoch cap; stage-2 epochs 100 with patience 20; stage-1 AlexNet uses the torchvision channel
plan so ImageNet weights from a local file load (``weights=`` or ``$SER_ALEXNET_WEIGHTS``).

Ablations (from its experiments): ``alexnet_sru_cnn_only`` (stage 1 only, segment posteriors averaged),
``alexnet_sru_sru_only`` (the SRU on the segments themselves, each average-pooled to a small
vector, without the CNN), ``alexnet_sru`` (CNN + SRU), and ``n_segments`` = 1..5 in the view.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ser_pipeline.config import require
from ser_pipeline.models import register_model
from ser_pipeline.models.alexnet import SCRATCH, build_alexnet

REFERENCE = (
    "Speech emotion recognition using deep convolutional neural network and simple recurrent unit: "
    "N equal segments (227x227x3), AlexNet fine-tuning (FC7 4096-d), SRU; LOSO, reported "
    "EMO-DB WA/UA 82.5/80.6 (N=3), CASIA 51.3/51.3 (N=5); IS09/IS10+SVM baselines 75.5/78.1 WA (EMO-DB)"
)
READOUTS = ("last", "mean")


class SRUCell(nn.Module):
    """One SRU layer (the five equations in the module docstring) over a whole sequence.

    ``forward(f (B, T, D), c0 (B, H) | None) -> (h (B, T, H), c_T (B, H))``. The three input
    transforms are one matrix product for all steps (no recurrence in them); only the elementwise
    cell update is sequential.
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        require(input_size >= 1, "input_size", input_size, "must be >= 1")
        require(hidden_size >= 1, "hidden_size", hidden_size, "must be >= 1")
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.W = nn.Linear(input_size, hidden_size, bias=False)
        self.W_f = nn.Linear(input_size, hidden_size)
        self.W_r = nn.Linear(input_size, hidden_size)
        self.P = nn.Linear(input_size, hidden_size, bias=False) if input_size != hidden_size else None

    def highway(self, f: torch.Tensor) -> torch.Tensor:
        """The highway input: ``f`` itself, or ``P f`` when the sizes differ. ``(..., D) -> (..., H)``."""
        return f if self.P is None else self.P(f)

    def step(self, f_t: torch.Tensor, c_prev: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One step of the five SRU equations: ``f_t (B, D)``, ``c_prev (B, H)`` -> ``(h_t (B, H), c_t (B, H))``."""
        x_tilde = self.W(f_t)
        forget = torch.sigmoid(self.W_f(f_t))
        c_t = forget * c_prev + (1.0 - forget) * x_tilde
        reset = torch.sigmoid(self.W_r(f_t))
        h_t = reset * torch.tanh(c_t) + (1.0 - reset) * self.highway(f_t)
        return h_t, c_t

    def forward(self, f: torch.Tensor, c0: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        require(f.dim() == 3 and f.shape[-1] == self.input_size, "input shape", tuple(f.shape),
                f"SRU expects (B, T, {self.input_size})")
        b, t, _ = f.shape
        x_tilde = self.W(f)  # (B, T, H), all steps at once
        forget = torch.sigmoid(self.W_f(f))
        reset = torch.sigmoid(self.W_r(f))
        skip = self.highway(f)
        c = f.new_zeros(b, self.hidden_size) if c0 is None else c0
        hs = []
        for i in range(t):
            c = forget[:, i] * c + (1.0 - forget[:, i]) * x_tilde[:, i]
            hs.append(reset[:, i] * torch.tanh(c) + (1.0 - reset[:, i]) * skip[:, i])
        return torch.stack(hs, dim=1), c


class SRUClassifier(nn.Module):
    """Stage 2: stacked :class:`SRUCell` layers over segment features, then a linear softmax layer.

    ``forward``: ``(B, S, D) -> (B, n_classes)`` logits; ``embed``: ``(B, S, D) -> (B, hidden)``.
    """

    def __init__(
        self,
        n_classes: int,
        embed_dim: int,
        *,
        hidden_size: int = 4096,
        num_layers: int = 1,
        dropout: float = 0.0,
        readout: str = "last",
    ) -> None:
        super().__init__()
        require(n_classes >= 2, "n_classes", n_classes, "need at least 2 classes")
        require(num_layers >= 1, "num_layers", num_layers, "must be >= 1")
        require(readout in READOUTS, "readout", readout, f"valid values: {READOUTS}")
        require(0.0 <= dropout < 1.0, "dropout", dropout, "must be in [0, 1)")
        sizes = [embed_dim] + [hidden_size] * num_layers
        self.layers = nn.ModuleList(SRUCell(i, o) for i, o in zip(sizes[:-1], sizes[1:], strict=True))
        self.readout = readout
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(hidden_size, n_classes)

    def embed(self, f: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, S, D) -> (B, hidden)``: the last valid (or mean of the valid) hidden states of the
        top layer. ``mask`` ``(B, S)`` bool marks real steps (padding comes after them)."""
        h = f
        for layer in self.layers:
            h, _ = layer(h)
        if mask is None:
            return h[:, -1] if self.readout == "last" else h.mean(dim=1)
        m = mask.to(h.dtype)
        if self.readout == "mean":
            return (h * m[:, :, None]).sum(dim=1) / m.sum(dim=1, keepdim=True).clamp(min=1.0)
        last = (mask.long().sum(dim=1) - 1).clamp(min=0)  # (B,)
        return h[torch.arange(h.shape[0], device=h.device), last]

    def forward(self, f: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """``(B, S, D)`` (+ optional ``mask`` ``(B, S)``) -> ``(B, n_classes)`` logits."""
        return self.head(self.dropout(self.embed(f, mask)))


class SegmentPool(nn.Module):
    """The ``sru_only`` ablation's stage-1 "network": no CNN, each segment is average-pooled.

    ``embed``: ``(B, C, H, W) -> (B, C * pool * pool)`` (parameter-free). ``forward`` adds a linear
    head only to satisfy the stage-1 contract (its recipe has 0 epochs); the SRU sees ``embed``.
    """

    def __init__(self, n_classes: int, in_channels: int = 3, *, pool: int = 8) -> None:
        super().__init__()
        require(pool >= 1, "pool", pool, "must be >= 1")
        self.pool = nn.AdaptiveAvgPool2d((pool, pool))
        self.embed_dim = in_channels * pool * pool
        self.head = nn.Linear(self.embed_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(x).flatten(1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(x))


def build_sru_classifier(n_classes: int, embed_dim: int, **hparams: Any) -> SRUClassifier:
    """Stage-2 builder: :class:`SRUClassifier` on ``embed_dim``-d segment features."""
    return SRUClassifier(n_classes, embed_dim, **hparams)


# each of the N segments is resampled to 227 frames and its bands to 227 rows: a bilinear resize
VIEW = {"kind": "segments", "n_segments": 5, "frames": 227, "resize": (227, 227), "channels": 3,
        "normalise": "utterance"}
STAGE1_RECIPE = {
    "optimizer": "sgd",
    "lr": 1e-3,
    "momentum": 0.9,
    "batch_size": 30,
    "epochs": 400,
    "patience": 20,
    "class_weighted": False,
}
STAGE2_RECIPE = {"optimizer": "adam", "lr": 1e-3, "batch_size": 30, "epochs": 100, "patience": 20}
STAGE1_DEFAULTS = {"dropout": 0.5, "width_mult": 1.0, "variant": "torchvision", "weights": None, "batch_norm": False}
STAGE2_DEFAULTS = {"hidden_size": 4096, "num_layers": 1, "dropout": 0.0, "readout": "last"}
ABLATIONS = {
    "mode": "cnn+sru: alexnet_sru; cnn_only: alexnet_sru_cnn_only; sru_only: alexnet_sru_sru_only",
    "n_segments": "view n_segments = 1..5 (paper: 5 for CASIA, 3 for EMO-DB)",
    "hidden_size": "stage-2 SRU hidden size (4096 in the paper)",
    "weights": "local torchvision ImageNet AlexNet state dict; None = random init (logged)",
    "width_mult": "AlexNet width multiplier (tests only; 1.0 is the paper)",
}
# preset cpu: 3 segments of 64 frames at 64x64, a quarter-width AlexNet with BatchNorm (trains from
# scratch: CASIA validation UA of stage 1 0.46-0.49 against 0.35-0.39 without), a 128-cell SRU
CPU_VIEW = {"n_segments": 3, "frames": 64, "resize": (64, 64)}
CPU = {"hparams": {"width_mult": 0.25, "batch_norm": True}, "view": CPU_VIEW, "train": {"epochs": 20},
       "stage2_hparams": {"hidden_size": 128, "dropout": 0.5, "readout": "mean"}, "stage2_train": {"epochs": 20}}


@register_model(
    "alexnet_sru",
    reference=REFERENCE,
    feature_preset="logmel60",
    view=dict(VIEW),
    recipe=dict(STAGE1_RECIPE),
    defaults=dict(STAGE1_DEFAULTS),
    ablations=dict(ABLATIONS),
    trainer="two_stage",
    stage2=build_sru_classifier,
    stage2_defaults=dict(STAGE2_DEFAULTS),
    stage2_recipe=dict(STAGE2_RECIPE),
    protocol="loso",
    cpu=dict(CPU),
    scratch=dict(SCRATCH),
)
def build_alexnet_sru(n_classes: int, in_channels: int = 3, **hparams: Any) -> nn.Module:
    """Stage-1 builder: the segment AlexNet (``embed`` gives the 4096-d FC7 features)."""
    return build_alexnet(n_classes, in_channels, **hparams)


@register_model(
    "alexnet_sru_cnn_only",
    reference=REFERENCE + "; ablation 'CNN only': segment posteriors averaged per utterance",
    feature_preset="logmel60",
    view=dict(VIEW),
    recipe=dict(STAGE1_RECIPE),
    defaults=dict(STAGE1_DEFAULTS),
    ablations=dict(ABLATIONS),
    trainer="standard",
    protocol="loso",
    cpu={k: v for k, v in CPU.items() if not k.startswith("stage2")},
    scratch=dict(SCRATCH),
)
def build_alexnet_sru_cnn_only(n_classes: int, in_channels: int = 3, **hparams: Any) -> nn.Module:
    """The CNN-only ablation: the same segment AlexNet, trained and scored on its own."""
    return build_alexnet(n_classes, in_channels, **hparams)


@register_model(
    "alexnet_sru_sru_only",
    reference=REFERENCE + "; ablation 'SRU only': SRU on average-pooled segments, no CNN",
    feature_preset="logmel60",
    view=dict(VIEW),
    recipe={**STAGE1_RECIPE, "epochs": 0, "patience": None},  # nothing to fit: embed is pooling
    defaults={"pool": 8},
    ablations={**ABLATIONS, "pool": "each segment is average-pooled to pool x pool per channel"},
    trainer="two_stage",
    stage2=build_sru_classifier,
    stage2_defaults=dict(STAGE2_DEFAULTS),
    stage2_recipe=dict(STAGE2_RECIPE),
    protocol="loso",
    cpu={"view": CPU_VIEW, "stage2_hparams": {"hidden_size": 128}, "stage2_train": {"epochs": 20}},
)
def build_alexnet_sru_sru_only(n_classes: int, in_channels: int = 3, *, pool: int = 8) -> nn.Module:
    """The SRU-only ablation's stage 1: parameter-free segment pooling (``embed``)."""
    return SegmentPool(n_classes, in_channels, pool=pool)
