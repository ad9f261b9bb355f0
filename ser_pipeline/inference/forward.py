"""Forward passes shared by training and inference: logits of a view batch, utterance posteriors,
stage-1 embeddings, the stage-2 sequence table, and BatchNorm statistics recomputed from data
(precise-BN over a table; AdaBN per speaker). No optimiser, no training state."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Sequence
from typing import TypeVar

import numpy as np
import torch
from torch import nn

from ser_pipeline.config import require
from ser_pipeline.dataset.tables import FeatureTable, _pack, index_batches
from ser_pipeline.dataset.views import (
    ViewBatch,
    ViewSpec,
    flatten_segments,
    mean_segment_posteriors,
)
from ser_pipeline.models import ReadsItems, ReadsSegmentSequences

T = TypeVar("T")

STAGE2_VIEW = ViewSpec(kind="sequence", normalise="none", frames=0, channels=0)
"""The view stage 2 of a two-stage model reads: ``(B, S, D)`` sequences of stage-1 embeddings."""


def accepts_mask(model: nn.Module) -> bool:
    """Whether ``model.forward`` takes a ``mask`` keyword (the view's valid frames or steps)."""
    try:
        return "mask" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def forward_batch(model: nn.Module, batch: ViewBatch, view: ViewSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits for a view batch: ``(B, K)``, or ``(B, S, K)`` with the segment mask for segment views."""
    if batch.items is not None and isinstance(model, ReadsItems):  # reads the table's rows in place
        return model.forward_items(batch.items), None
    if view.segmented and isinstance(model, ReadsSegmentSequences):  # one logit row per utterance
        return model.forward_segments(batch.x, batch.mask), None
    if view.segmented:
        xs, mask = flatten_segments(batch)
        B, S = batch.x.shape[:2]
        return model(xs).reshape(B, S, -1), mask.reshape(B, S)
    if batch.mask is not None and accepts_mask(model):
        return model(batch.x, mask=batch.mask), None
    return model(batch.x), None


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def predict_proba(model: nn.Module, table: FeatureTable, view: ViewSpec, *, batch_size: int = 64,
                  bf16: bool = True) -> np.ndarray:
    """Utterance posteriors ``(N, K)`` float64 (segment views: mean of valid segment posteriors)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for idx in index_batches(len(table), batch_size, shuffle=False):
        vb = table.view(idx, view, device=device)  # crops read straight from the table (same tensors)
        with _autocast(device, bf16):
            logits, mask = forward_batch(model, vb, view)
        probs = torch.softmax(logits.float(), dim=-1)
        if mask is not None:
            probs = mean_segment_posteriors(probs, mask)
        out.append(probs.double().cpu())
    return torch.cat(out).numpy()


@torch.no_grad()
def embed_table(model: nn.Module, table: FeatureTable, view: ViewSpec, *, batch_size: int = 64,
                bf16: bool = True) -> list[np.ndarray]:
    """Stage-1 embeddings per item: ``(S_i, D)`` float32 (valid segments only; ``S_i = 1`` for
    non-segment views). ``model`` must expose ``embed(x) -> (N, D)``."""
    require(hasattr(model, "embed"), "model", type(model).__name__, "needs embed(x) for two-stage training")
    model.eval()
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for idx in index_batches(len(table), batch_size, shuffle=False):
        vb = table.view(idx, view, device=device)  # crops read straight from the table (same tensors)
        if view.segmented:
            xs, mask = flatten_segments(vb)
            B, S = vb.x.shape[:2]
        else:
            xs, mask, B, S = vb.x, torch.ones(vb.x.shape[0], dtype=torch.bool, device=device), vb.x.shape[0], 1
        with _autocast(device, bf16):
            z = model.embed(xs)
        z = z.float().reshape(B, S, -1).cpu()
        m = mask.reshape(B, S).cpu()
        out.extend(z[i][m[i]].numpy().astype(np.float32) for i in range(B))
    return out


def sequence_table(table: FeatureTable, embeddings: Sequence[np.ndarray]) -> FeatureTable:
    """A table of stage-2 inputs: item ``i`` is ``embeddings[i].T[None]``, i.e. ``(1, D, S_i)``,
    read by the ``sequence`` view as ``(B, S, D)``. Labels and speakers are kept."""
    require(len(embeddings) == len(table), "embeddings", len(embeddings), f"need one per item ({len(table)})")
    arrays = [np.ascontiguousarray(e.T[None]) for e in embeddings]
    return _pack(arrays, table.labels.cpu(), table.speakers.cpu(), table.utterance_ids, table.variants,
                 table.speaker_names, device=table.device)


def eval_view(view: ViewSpec) -> ViewSpec:
    """The evaluation form of a view (random crops become centre crops)."""
    return view.replace(crop="centre") if view.crop == "random" else view


def _bn_layers(model: nn.Module) -> list[nn.modules.batchnorm._BatchNorm]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@torch.no_grad()
def precise_bn(model: nn.Module, table: FeatureTable, view: ViewSpec, *, batch_size: int = 64,
               bf16: bool = True) -> int:
    """Recompute every BatchNorm's running mean/var as the exact average over one pass of ``table``
    (evaluation views: centre crops, no augmentation; weights unchanged; dropout off).

    Each BN layer accumulates batch statistics weighted by batch size (momentum ``B / (seen + B)``),
    so the running mean equals the mean over the whole table and the running variance the
    size-weighted mean of the batch variances (the total variance when one batch holds the table);
    the previous momentum is restored. Returns the number of BN layers reset (0: nothing to do).
    """
    bns = _bn_layers(model)
    if not bns:
        return 0
    was_training = model.training
    momenta = [m.momentum for m in bns]
    model.eval()
    for m in bns:
        m.reset_running_stats()
        m.train()
    device = next(model.parameters()).device
    seen = 0
    for idx in index_batches(len(table), batch_size, shuffle=False):
        for m in bns:  # weight each batch by its size: the running mean is the mean over every item
            m.momentum = len(idx) / (seen + len(idx))
        vb = table.view(idx, view, device=device, train=False)
        with _autocast(device, bf16):
            forward_batch(model, vb, view)
        seen += len(idx)
    for m, mom in zip(bns, momenta, strict=True):
        m.momentum = mom
    model.train(was_training)
    return len(bns)


def with_speaker_bn(model: nn.Module, table: FeatureTable, view: ViewSpec, score: Callable[[FeatureTable], Sequence[T]],
                    *, batch_size: int = 64, bf16: bool = True) -> list[T]:
    """AdaBN per speaker: ``score(speaker_table)`` for each speaker of ``table`` after every
    BatchNorm's running statistics are recomputed on that speaker's items alone (:func:`precise_bn`
    over its unlabelled items in evaluation views; weights unchanged, labels never read); one result
    per item, in ``table`` order. The model's own statistics are put back afterwards. A model
    without BatchNorm is scored as is."""
    bns = _bn_layers(model)
    if not bns or len(table) == 0:
        return list(score(table))
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone()) for m in bns]
    speakers = table.speakers.cpu()
    out: list[T | None] = [None] * len(table)
    try:
        for s in torch.unique(speakers).tolist():
            mask = speakers == s
            one = table.select(mask)
            precise_bn(model, one, eval_view(view), batch_size=batch_size, bf16=bf16)
            for i, result in zip(torch.nonzero(mask).flatten().tolist(), score(one), strict=True):
                out[i] = result
    finally:
        for m, (mean, var, count) in zip(bns, saved, strict=True):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
    return out  # type: ignore[return-value]  # every item belongs to one speaker


def predict_speaker_bn(model: nn.Module, table: FeatureTable, view: ViewSpec, *, batch_size: int = 64,
                       bf16: bool = True) -> np.ndarray:
    """Posteriors ``(N, K)`` as :func:`predict_proba`, with BatchNorm statistics per speaker
    (:func:`with_speaker_bn`)."""
    def score(one: FeatureTable) -> np.ndarray:
        return predict_proba(model, one, view, batch_size=batch_size, bf16=bf16)

    if len(table) == 0:
        return score(table)
    return np.stack(with_speaker_bn(model, table, view, score, batch_size=batch_size, bf16=bf16))


def embed_speaker_bn(model: nn.Module, table: FeatureTable, view: ViewSpec, *, batch_size: int = 64,
                     bf16: bool = True) -> list[np.ndarray]:
    """Stage-1 embeddings ``(S_i, D)`` as :func:`embed_table`, with BatchNorm statistics per speaker
    (:func:`with_speaker_bn`)."""
    def embed(one: FeatureTable) -> list[np.ndarray]:
        return embed_table(model, one, view, batch_size=batch_size, bf16=bf16)

    return with_speaker_bn(model, table, view, embed, batch_size=batch_size, bf16=bf16)


POSTERIORS: dict[str, Callable[..., np.ndarray]] = {"train": predict_proba, "speaker": predict_speaker_bn}
"""Utterance posteriors ``(N, K)`` by where BatchNorm statistics come from (``TrainConfig.bn_statistics``):
the model's own, or each speaker's (AdaBN). Same signature as :func:`predict_proba`."""
EMBEDDINGS: dict[str, Callable[..., list[np.ndarray]]] = {"train": embed_table, "speaker": embed_speaker_bn}
"""Stage-1 embeddings by the same key; same signature as :func:`embed_table`."""

