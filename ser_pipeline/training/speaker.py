"""Speaker pre-training: stage 1 on the training speakers, then freeze the backbone (the paper) or
fine-tune it (``freeze=False``) while the emotion layers train."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from ser_pipeline.config import require
from ser_pipeline.dataset.tables import FeatureTable
from ser_pipeline.dataset.views import ViewSpec
from ser_pipeline.training.config import TrainConfig
from ser_pipeline.training.loop import EpochCallback, FitResult, fit


class SpeakerClassifier(nn.Module):
    """Stage-1 wrapper: ``(B, C, H, W) -> (B, n_speakers)`` through the backbone's speaker path.

    Uses ``model.speaker_logits`` after ``model.speaker_head(n)`` when the model defines them,
    else a new linear layer on ``model.embed``.
    """

    def __init__(self, model: nn.Module, n_speakers: int) -> None:
        super().__init__()
        self.model = model
        if hasattr(model, "speaker_head"):
            self.head = model.speaker_head(n_speakers)
        else:
            require(hasattr(model, "embed"), "model", type(model).__name__, "needs embed(x) for speaker pre-training")
            dim = getattr(model, "embed_dim", None)
            require(dim is not None, "model", type(model).__name__, "needs an embed_dim attribute")
            self.head = nn.Linear(int(dim), n_speakers)
        self.head.to(next(model.parameters()).device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "speaker_logits"):
            return self.model.speaker_logits(x)
        return self.head(self.model.embed(x))


def freeze_backbone(model: nn.Module) -> list[str]:
    """Freeze everything but the emotion path: ``model.freeze_backbone()`` when defined, else all
    parameters except ``model.head``. Returns the names of the trainable parameters left."""
    if hasattr(model, "freeze_backbone"):
        model.freeze_backbone()
    else:
        require(hasattr(model, "head"), "model", type(model).__name__, "needs a head or freeze_backbone()")
        head_ids = {id(p) for p in model.head.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head_ids)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def speaker_holdout(table: FeatureTable, *, fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks ``(N,)`` (train, val) over a training table for speaker identification:
    per speaker about ``fraction`` of its utterances (all variants of one utterance together)."""
    rng = np.random.default_rng(seed)
    uids = np.array(table.utterance_ids)
    spk = table.speakers.cpu().numpy()
    val_ids: set[str] = set()
    for s in np.unique(spk):
        ids = np.unique(uids[spk == s])
        n = min(max(1, int(round(fraction * len(ids)))), len(ids) - 1) if len(ids) > 1 else 0
        val_ids.update(rng.permutation(ids)[:n].tolist())
    val = torch.tensor([u in val_ids for u in table.utterance_ids])
    return ~val, val


def speaker_labels(table: FeatureTable) -> tuple[torch.Tensor, list[int]]:
    """Speaker indices of ``table`` remapped to ``0..n_speakers-1`` and the original indices."""
    speakers = sorted(set(table.speakers.cpu().tolist()))
    lookup = {s: i for i, s in enumerate(speakers)}
    return torch.tensor([lookup[s] for s in table.speakers.cpu().tolist()], dtype=torch.long), speakers


def pretrain_speakers(
    model: nn.Module,
    train: FeatureTable,
    *,
    view: ViewSpec,
    config: TrainConfig,
    fold: str,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    callbacks: Sequence[EpochCallback] = (),
    freeze: bool = True,
) -> FitResult:
    """Stage 1 of ``speaker_pretrain``: speaker identification on the training speakers only
    (a per-speaker hold-out of training utterances selects the checkpoint), then the backbone is
    frozen (``freeze``; otherwise stage 2 fine-tunes it from the speaker weights). The emotion
    validation and test speakers are never seen."""
    labels, speakers = speaker_labels(train)
    require(len(speakers) >= 2, "speakers", len(speakers), "speaker pre-training needs >= 2 training speakers")
    table = train.with_labels(labels)
    tr_mask, va_mask = speaker_holdout(table, seed=config.seed)
    wrapper = SpeakerClassifier(model, len(speakers))
    result = fit(wrapper, table.select(tr_mask), table.select(va_mask), view=view, config=config,
                 n_classes=len(speakers), fold=f"{fold}/speaker", checkpoint_dir=checkpoint_dir,
                 callbacks=callbacks)
    if hasattr(model, "drop_speaker_head"):  # a speaker head installed on the model itself is stage 1's only
        model.drop_speaker_head()
    if freeze:
        freeze_backbone(model)
    return result
