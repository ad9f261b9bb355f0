"""Transforms of a preloaded :class:`~ser_pipeline.dataset.tables.FeatureTable`: normalisation
(statistics from the training split only), the silence floor and time pooling.

Every function takes a table of time-major frames ``(sum_T, C, F)`` and returns a new one (the
input is never written); statistics are ``(G, C, F)`` per group (speaker, utterance or one global
group). Nothing here sees a label.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import TYPE_CHECKING

import torch

from ser_pipeline.config import require

if TYPE_CHECKING:
    from ser_pipeline.dataset.tables import FeatureTable


def _owner(table: FeatureTable) -> torch.Tensor:
    """``(sum_T,)`` item index of every frame."""
    return torch.repeat_interleave(torch.arange(len(table), device=table.device), table.lengths)


def group_stats(table: FeatureTable, groups: torch.Tensor, n_groups: int, *, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and std per group over all frames of its items: ``groups (N,)`` -> two ``(G, C, F)``."""
    frame_group = groups[_owner(table)]
    data = table.frames.double()  # (sum_T, C, F)
    C, Fb = table.shape
    s = torch.zeros(n_groups, C, Fb, dtype=torch.float64, device=table.device).index_add_(0, frame_group, data)
    ss = torch.zeros_like(s).index_add_(0, frame_group, data * data)
    n = torch.zeros(n_groups, dtype=torch.float64, device=table.device).index_add_(
        0, frame_group, torch.ones_like(frame_group, dtype=torch.float64))
    n = n.clamp(min=1)[:, None, None]
    mean = s / n
    std = (ss / n - mean * mean).clamp(min=0).sqrt().clamp(min=eps)
    return mean.float(), std.float()


def _apply(table: FeatureTable, mean: torch.Tensor, std: torch.Tensor, groups: torch.Tensor) -> FeatureTable:
    g = groups[_owner(table)]
    return replace(table, frames=(table.frames - mean[g]) / std[g])


DB_PER_NEPER = 10.0 / 2.302585092994046  # dB of power per natural-log unit


def floor_silence(table: FeatureTable, floor_db: float) -> FeatureTable:
    """Floor the static log-Mel channel (channel 0, natural log of power) of every item at its own
    maximum minus ``floor_db`` dB: digital silence at the feature's log floor (1e-10, i.e. -23)
    becomes a level ``floor_db`` below the utterance's peak. Uses only the item itself (no labels,
    no other split). ``floor_db == 0``: unchanged."""
    if floor_db <= 0:
        return table
    owner = _owner(table)
    static = table.frames[:, 0, :]  # (sum_T, F)
    peak = torch.full((len(table),), -torch.inf, device=table.device, dtype=static.dtype)
    peak = peak.scatter_reduce(0, owner, static.amax(dim=1), reduce="amax")
    floor = (peak - floor_db / DB_PER_NEPER)[owner][:, None]
    frames = table.frames.clone()
    frames[:, 0, :] = torch.maximum(static, floor)
    return replace(table, frames=frames)


def pool_table(table: FeatureTable, k: int) -> FeatureTable:
    """Average every ``k`` consecutive frames of each item once, on the table's device: item ``i``
    ``(C, F, T_i) -> (C, F, ceil(T_i / k))``, the last pooled frame averaging only the item's own
    frames (the same values as :func:`ser_pipeline.dataset.views.pool_time` per batch, computed
    once instead of every batch). ``k == 1``: unchanged."""
    if k <= 1:
        return table
    owner = _owner(table)
    pos = torch.arange(table.frames.shape[0], device=table.device) - table.offsets[owner]
    lengths = (table.lengths + k - 1) // k
    offsets = torch.cumsum(lengths, 0) - lengths
    target = offsets[owner] + torch.div(pos, k, rounding_mode="floor")
    n_out = int(lengths.sum().item())
    sums = torch.zeros(n_out, *table.frames.shape[1:], dtype=table.frames.dtype, device=table.device)
    sums.index_add_(0, target, table.frames)
    counts = torch.zeros(n_out, dtype=table.frames.dtype, device=table.device).index_add_(
        0, target, torch.ones_like(target, dtype=table.frames.dtype))
    return replace(table, frames=sums / counts[:, None, None], offsets=offsets, lengths=lengths)


def training_stats(table: FeatureTable) -> dict[str, torch.Tensor]:
    """Global ``mean``/``std`` ``(C, F)`` over every frame of a (training) table."""
    mean, std = group_stats(table, torch.zeros(len(table), dtype=torch.long, device=table.device), 1)
    return {"mean": mean[0].cpu(), "std": std[0].cpu()}


def normalise_with(table: FeatureTable, mean: torch.Tensor, std: torch.Tensor) -> FeatureTable:
    """Apply stored global statistics ``(C, F)`` (e.g. from a trained model's folder) to a table."""
    zeros = torch.zeros(len(table), dtype=torch.long, device=table.device)
    return _apply(table, mean[None].to(table.device), std[None].to(table.device), zeros)


def normalise_tables(tables: Mapping[str, FeatureTable], mode: str, *, train: str = "train") -> dict[str, FeatureTable]:
    """Mean/variance-normalise every split; per channel and frequency bin.

    - ``none``: unchanged.
    - ``utterance``: each item by its own statistics over time (uses no other data).
    - ``global``: every split by the statistics of the training split.
    - ``speaker``: a training speaker by its training items only; a speaker absent from training
      (the test or validation speaker under LOSO) by its own items in that split, without labels.
      No split's statistics ever include another split's data.
    """
    require(mode in ("none", "utterance", "speaker", "global"), "view.normalise", mode, "unknown normalisation")
    if mode == "none":
        return dict(tables)
    out: dict[str, FeatureTable] = {}
    if mode == "utterance":
        for name, t in tables.items():
            groups = torch.arange(len(t), device=t.device)
            mean, std = group_stats(t, groups, len(t))
            out[name] = _apply(t, mean, std, groups)
        return out
    ref = tables[train]
    if mode == "global":
        mean, std = group_stats(ref, torch.zeros(len(ref), dtype=torch.long, device=ref.device), 1)
        for name, t in tables.items():
            out[name] = _apply(t, mean, std, torch.zeros(len(t), dtype=torch.long, device=t.device))
        return out
    n_spk = max(int(t.speakers.max().item()) for t in tables.values()) + 1
    train_mean, train_std = group_stats(ref, ref.speakers, n_spk)
    train_speakers = set(ref.speakers.unique().tolist())
    for name, t in tables.items():
        if name == train:
            out[name] = _apply(t, train_mean, train_std, t.speakers)
            continue
        own_mean, own_std = group_stats(t, t.speakers, n_spk)
        use_train = torch.tensor([s in train_speakers for s in range(n_spk)], device=t.device)[:, None, None]
        out[name] = _apply(t, torch.where(use_train, train_mean, own_mean), torch.where(use_train, train_std, own_std),
                           t.speakers)
    return out
