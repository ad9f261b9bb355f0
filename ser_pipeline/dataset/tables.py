"""Preloaded, in-memory feature tables per fold, and PyTorch datasets/loaders (issue 3, "Reading").

Features are read once through a :class:`FeatureSource` (the feature store's ``FeatureSet`` or
anything with ``read_many``) and kept as one concatenated tensor per split on the training
device: ``frames (sum_T, C, F)`` (time-major, so a gather copies contiguous ``C * F`` rows) plus
``offsets``/``lengths``, so whole corpora fit in GPU memory and a batch is a single gather. Training utterances may carry augmentation variants; validation
and test use only ``"orig"``.
"""

from __future__ import annotations

import logging
import warnings
import weakref
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch.utils.data import DataLoader, Dataset

from ser_pipeline.config import require
from ser_pipeline.dataset.normalise import floor_silence, normalise_tables, training_stats
from ser_pipeline.dataset.resample import resize_bands
from ser_pipeline.dataset.spec_augment import SpanDraw
from ser_pipeline.dataset.views import (
    ViewBatch,
    ViewSpec,
    apply_view,
    used_channels,
    view_items,
)
from ser_pipeline.errors import StoreError

log = logging.getLogger(__name__)

ORIG = "orig"
BAND_CACHE_BYTES = 2 << 30
"""Largest frequency-resized copy of a table's frames that :meth:`FeatureTable.view_frames` keeps (2 GiB)."""
FeatureKey = tuple[str, str]  # (audio sha256, variant)


class FeatureSource(Protocol):
    """Anything that returns stored ``(C, F, T)`` arrays for ``(sha256, variant)`` keys: float32,
    or with ``as_stored`` in whatever float dtype they are kept (the reader converts)."""

    def read_many(self, keys: Sequence[FeatureKey], *, as_stored: bool = False) -> list[np.ndarray]: ...


class DictSource:
    """A :class:`FeatureSource` over an in-memory ``{(sha256, variant): (C, F, T) array}`` dict."""

    def __init__(self, items: Mapping[FeatureKey, np.ndarray]) -> None:
        self.items = dict(items)

    def read_many(self, keys: Sequence[FeatureKey], *, as_stored: bool = False) -> list[np.ndarray]:
        """The arrays of ``keys`` as they are held (``as_stored`` changes nothing here)."""
        missing = [k for k in keys if k not in self.items]
        if missing:
            raise StoreError(f"feature item(s) not stored: {missing[:5]}")
        return [self.items[k] for k in keys]


_RESIZED_BANDS: dict[int, dict[tuple[Any, ...], Any]] = {}
"""``id`` of a table's ``frames`` tensor -> what is kept for it: its frequency-resized copies by
``(height, channels)`` (:meth:`FeatureTable.view_frames`) and its whole ``sequence`` view
(:meth:`FeatureTable.sequence_view`); an entry is dropped when its tensor is freed."""


def _kept_bands(frames: torch.Tensor) -> dict[tuple[Any, ...], Any]:
    """The resized copies kept for ``frames`` (a new, empty entry the first time)."""
    key = id(frames)
    if key not in _RESIZED_BANDS:
        _RESIZED_BANDS[key] = {}
        weakref.finalize(frames, _RESIZED_BANDS.pop, key, None)
    return _RESIZED_BANDS[key]


@dataclass
class FeatureTable:
    """One split's features, labels and speakers, concatenated along time.

    - ``frames``: ``(sum_T, C, F)`` float32 (time-major); ``offsets``, ``lengths``: ``(N,)`` long.
    - ``labels``: ``(N,)`` long class index; ``speakers``: ``(N,)`` long index into ``speaker_names``.
    - ``utterance_ids``/``variants``: per item (an utterance appears once per variant).

    The frequency-resized frames of the views read from a table are kept beside its ``frames``
    tensor (:meth:`view_frames`) as long as that tensor lives; ``frames`` is never written in place.
    """

    frames: torch.Tensor
    offsets: torch.Tensor
    lengths: torch.Tensor
    labels: torch.Tensor
    speakers: torch.Tensor
    utterance_ids: list[str]
    variants: list[str]
    speaker_names: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.lengths.shape[0])

    @property
    def device(self) -> torch.device:
        return self.frames.device

    @property
    def shape(self) -> tuple[int, int]:
        """``(C, F)`` of every item."""
        return int(self.frames.shape[1]), int(self.frames.shape[2])

    def to(self, device: torch.device | str) -> FeatureTable:
        move = lambda t: t.to(device)  # noqa: E731
        return replace(self, frames=move(self.frames), offsets=move(self.offsets), lengths=move(self.lengths),
                       labels=move(self.labels), speakers=move(self.speakers))

    def batch(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded batch of items ``index (B,)``: ``x (B, C, F, T_max)`` (zeros past each end), ``lengths (B,)``."""
        index = index.to(self.offsets.device)
        lengths = self.lengths[index]
        t_max = int(lengths.max().item()) if len(index) else 0
        t = torch.arange(t_max, device=self.frames.device)
        valid = t[None, :] < lengths[:, None]
        pos = (self.offsets[index][:, None] + t[None, :]).clamp(max=max(self.frames.shape[0] - 1, 0))
        x = self.frames[pos] * valid[:, :, None, None].to(self.frames.dtype)  # (B, T_max, C, F)
        return x.permute(0, 2, 3, 1).contiguous(), lengths

    def view(self, index: torch.Tensor, spec: ViewSpec, *, device: torch.device | str | None = None,
             train: bool = False, generator: torch.Generator | None = None,
             span_draw: SpanDraw | None = None) -> ViewBatch:
        """The view ``spec`` of items ``index (B,)`` on ``device`` (default: the table's).

        Cropping views (``fixed``, ``segments``, ``windows``) are read straight from the preloaded
        frames when the table lives on ``device``: only the frames and channels the view uses are
        gathered, with no padded batch (:func:`~ser_pipeline.dataset.views.view_items`); otherwise
        ``apply_view`` of :meth:`batch`. Both give the same tensors and the same draws from ``generator``.
        ``span_draw``: span masks applied while the view is built (read straight from the frames
        only; the result says ``masked``, else the caller applies them).
        """
        device = torch.device(device) if device is not None else self.device
        if device == self.device and spec.kind == "sequence" and spec.time_pool <= 1:
            i = index.to(self.lengths.device)
            whole = self.sequence_view(spec)
            width = int(self.lengths[i].max())  # padded as a batch of these items alone would be
            return ViewBatch(whole.x[i, :width], whole.mask[i, :width])
        if device == self.device:
            i = index.to(self.offsets.device)
            built = view_items(spec, self.view_frames(spec), self.offsets[i], self.lengths[i], train=train,
                               generator=generator, span_draw=span_draw)
            if built is not None:
                return built
        x, lengths = self.batch(index)
        return apply_view(spec, x.to(device, non_blocking=True), lengths.to(device), train=train, generator=generator)

    def sequence_view(self, spec: ViewSpec) -> ViewBatch:
        """The ``sequence`` view of every item at once, ``x (N, S_max, C*F)`` and ``mask (N, S_max)``,
        built once for this table and kept as long as its ``frames`` live: the view is deterministic
        (no crop, no augmentation), so a batch is a row selection of it (stage-2 heads on stored
        embeddings take steps of a few milliseconds, where building each batch again showed)."""
        kept = _kept_bands(self.frames)
        key = ("sequence", spec.kind)
        if key not in kept:
            x, lengths = self.batch(torch.arange(len(self), device=self.lengths.device))
            kept[key] = apply_view(spec, x, lengths)
        return kept[key]

    def view_frames(self, spec: ViewSpec) -> torch.Tensor:
        """The time-major frames a cropping view ``spec`` reads, ``(sum_T, C', H)``: the channels it
        uses (:func:`~ser_pipeline.dataset.views.used_channels`) and, when it resizes frequency to
        ``H`` bands, those bands resized once for this table and kept
        (:func:`~ser_pipeline.dataset.resample.resize_bands`): the frequency resize depends on no crop,
        so every batch then resizes only time. The stored frames themselves when the view keeps
        the band count or the resized copy would pass :data:`BAND_CACHE_BYTES`."""
        frames = used_channels(self.frames, spec.channels)
        if spec.resize is None or int(spec.resize[0]) == frames.shape[2]:
            return frames
        key = (int(spec.resize[0]), int(frames.shape[1]))
        kept = _kept_bands(self.frames)
        if key not in kept:
            if frames.shape[0] * key[1] * key[0] * frames.element_size() > BAND_CACHE_BYTES:
                return frames
            kept[key] = resize_bands(frames, key[0])
        return kept[key]

    def item(self, i: int) -> torch.Tensor:
        """Item ``i`` as ``(C, F, T_i)``."""
        o, n = int(self.offsets[i]), int(self.lengths[i])
        return self.frames[o : o + n].permute(1, 2, 0)

    def select(self, mask: torch.Tensor) -> FeatureTable:
        """The items where ``mask (N,)`` is True, as a new table (frames copied)."""
        idx = torch.nonzero(mask.to(self.lengths.device), as_tuple=False).flatten()
        arrays = [self.item(int(i)) for i in idx]
        keep = idx.tolist()
        return _pack(arrays, self.labels[idx], self.speakers[idx], [self.utterance_ids[i] for i in keep],
                     [self.variants[i] for i in keep], self.speaker_names, device=self.device)

    def with_labels(self, labels: torch.Tensor) -> FeatureTable:
        """The same features with other labels (e.g. speaker indices for speaker pre-training)."""
        return replace(self, labels=labels.to(self.labels.device).long())


def concat_tables(first: FeatureTable, second: FeatureTable) -> FeatureTable:
    """The items of ``first`` then those of ``second`` as one table (frames copied); both must
    index the same ``speaker_names`` and have the same ``(C, F)``."""
    require(first.speaker_names == second.speaker_names, "tables", "speaker_names",
            "differ: the tables index different speaker lists")
    require(first.shape == second.shape, "tables", f"{first.shape} vs {second.shape}", "disagree on (C, F)")
    lengths = torch.cat([first.lengths, second.lengths.to(first.device)])
    return FeatureTable(
        frames=torch.cat([first.frames, second.frames.to(first.device)]), offsets=torch.cumsum(lengths, 0) - lengths,
        lengths=lengths, labels=torch.cat([first.labels, second.labels.to(first.device)]),
        speakers=torch.cat([first.speakers, second.speakers.to(first.device)]),
        utterance_ids=[*first.utterance_ids, *second.utterance_ids], variants=[*first.variants, *second.variants],
        speaker_names=list(first.speaker_names))


def _pack(
    arrays: list[torch.Tensor | np.ndarray],
    labels: torch.Tensor | Sequence[int],
    speakers: torch.Tensor | Sequence[int],
    utterance_ids: list[str],
    variants: list[str],
    speaker_names: list[str],
    *,
    device: torch.device | str = "cpu",
) -> FeatureTable:
    """One table of items ``(C, F, T_i)`` (any float dtype, as stored): each item is converted to
    float32 while it is written time-major into the table's frames, and dropped from ``arrays``
    (which this consumes: each entry becomes None) once written. Loading holds no float32 copy of
    every item beside the table, and the stored arrays are freed as the table fills (CASIA's SSL
    layers, 4.5 GB as the table: peak 8.0 -> 4.9 GB with the float16 reads of :func:`load_table`)."""
    require(len(arrays) > 0, "split", 0, "no utterances to load")
    arrays = arrays if isinstance(arrays, list) else list(arrays)
    shapes = {tuple(np.shape(a)[:2]) for a in arrays}
    if len(shapes) != 1:
        raise StoreError(f"feature items disagree on (C, F): {sorted(shapes)}")
    lengths = torch.tensor([np.shape(a)[2] for a in arrays], dtype=torch.long)
    bad = [utterance_ids[i] for i in torch.nonzero(lengths == 0).flatten().tolist()]
    if bad:
        raise StoreError(f"feature items with zero frames: {bad[:5]}")
    offsets = torch.cumsum(lengths, 0) - lengths
    frames = torch.empty((int(lengths.sum()), *shapes.pop()), dtype=torch.float32)  # (sum_T, C, F)
    for i, (start, n) in enumerate(zip(offsets.tolist(), lengths.tolist(), strict=True)):
        a = arrays[i]
        frames[start : start + n] = (a.cpu() if torch.is_tensor(a) else torch.as_tensor(np.asarray(a))).permute(2, 0, 1)
        arrays[i] = None  # type: ignore[call-overload]  # freed as the table fills
    return FeatureTable(
        frames=frames.to(device), offsets=offsets.to(device), lengths=lengths.to(device),
        labels=torch.as_tensor(labels, dtype=torch.long).to(device),
        speakers=torch.as_tensor(speakers, dtype=torch.long).to(device),
        utterance_ids=list(utterance_ids), variants=list(variants), speaker_names=list(speaker_names),
    )


def load_table(
    source: FeatureSource,
    rows: pd.DataFrame,
    classes: Sequence[str],
    speaker_names: Sequence[str],
    *,
    variants: Sequence[str] = (ORIG,),
    device: torch.device | str = "cpu",
) -> FeatureTable:
    """Read every (row, variant) from ``source`` into one table.

    ``rows`` needs ``utterance_id, sha256, emotion, speaker``. Item order: rows, then variants.
    """
    class_index = {c: i for i, c in enumerate(classes)}
    speaker_index = {s: i for i, s in enumerate(speaker_names)}
    unknown = sorted(set(rows["emotion"]) - set(class_index))
    require(not unknown, "emotion", unknown, f"not among the classes {list(classes)}")
    keys, labels, speakers, uids, vars_ = [], [], [], [], []
    for row in rows.itertuples(index=False):
        for variant in variants:
            keys.append((row.sha256, variant))
            labels.append(class_index[row.emotion])
            speakers.append(speaker_index.get(row.speaker, -1))
            uids.append(row.utterance_id)
            vars_.append(variant)
    arrays = source.read_many(keys, as_stored=True)  # _pack converts while it fills the table
    return _pack(arrays, labels, speakers, uids, vars_, list(speaker_names), device=device)


# ----------------------------------------------------------------------------------------------
# Folds


@dataclass
class FoldData:
    """A fold's preloaded tables (``train`` may hold augmentation variants) and its label space;
    ``val`` is None in a refit's data (train holds the validation speakers; nothing is validated)."""

    name: str
    train: FeatureTable
    val: FeatureTable | None
    test: FeatureTable
    classes: list[str]
    speaker_names: list[str]
    stats: dict[str, torch.Tensor] = field(default_factory=dict)  # global training mean/std (C, F)

    def tables(self) -> dict[str, FeatureTable]:
        splits = {"train": self.train, "val": self.val, "test": self.test}
        return {split: table for split, table in splits.items() if table is not None}


def build_fold_data(
    source: FeatureSource,
    manifest: pd.DataFrame,
    *,
    name: str,
    train_ids: Sequence[str],
    val_ids: Sequence[str] | None,
    test_ids: Sequence[str],
    classes: Sequence[str],
    train_variants: Sequence[str] = (ORIG,),
    normalise: str = "speaker",
    floor_db: float = 0.0,
    device: torch.device | str = "cpu",
) -> FoldData:
    """Preload one fold onto ``device``; train items use ``train_variants``, val/test only ``orig``.
    ``val_ids`` None: no validation table (a refit's data, whose ``train_ids`` hold them).

    ``floor_db`` > 0 floors each item's silence (:func:`floor_silence`) before ``normalise``
    (``speaker`` by default: see :func:`normalise_tables`)."""
    require(len(train_ids) > 0, "fold.train", name, "has no training utterances")
    require(val_ids is None or len(val_ids) > 0, "fold.val", name, "has no validation utterances")
    require(len(test_ids) > 0, "fold.test", name, "has no test utterances")
    overlap = (set(train_ids) | set(val_ids or ())) & set(test_ids)
    require(not overlap, "fold.test", name, f"shares utterances with train/val: {sorted(overlap)[:3]}")
    speaker_names = sorted(manifest["speaker"].unique())
    by_id = manifest.set_index("utterance_id", drop=False)

    def rows(ids: Sequence[str]) -> pd.DataFrame:
        return by_id.loc[list(ids)]

    tables = {
        "train": load_table(source, rows(train_ids), classes, speaker_names, variants=train_variants, device=device),
        "test": load_table(source, rows(test_ids), classes, speaker_names, device=device),
    }
    if val_ids is not None:
        tables["val"] = load_table(source, rows(val_ids), classes, speaker_names, device=device)
    warn_missing_classes(tables["train"], classes, fold=name)
    tables, stats = prepare_tables(tables, normalise=normalise, floor_db=floor_db)
    return FoldData(name, tables["train"], tables.get("val"), tables["test"], list(classes), speaker_names, stats)


def prepare_tables(tables: Mapping[str, FeatureTable], *, normalise: str, floor_db: float
                   ) -> tuple[dict[str, FeatureTable], dict[str, torch.Tensor]]:
    """Silence floor then normalisation of loaded tables (statistics from ``tables["train"]``), and
    the global training statistics (``normalise="global"``; else ``{}``)."""
    floored = {k: floor_silence(t, floor_db) for k, t in tables.items()}
    stats = training_stats(floored["train"]) if normalise == "global" else {}
    return normalise_tables(floored, normalise), stats


def build_final_data(source: FeatureSource, manifest: pd.DataFrame, *, name: str, train_ids: Sequence[str],
                     classes: Sequence[str], train_variants: Sequence[str] = (ORIG,), normalise: str = "speaker",
                     floor_db: float = 0.0, device: torch.device | str = "cpu") -> FoldData:
    """Every utterance of ``train_ids`` (all speakers) as one training table, prepared like a fold's
    training table. Nothing is held out: ``val`` and ``test`` are that same table and must never be
    scored (a final model's quality is the folds' estimate)."""
    require(len(train_ids) > 0, "final.train", name, "has no training utterances")
    speaker_names = sorted(manifest["speaker"].unique())
    rows = manifest.set_index("utterance_id", drop=False).loc[list(train_ids)]
    table = load_table(source, rows, classes, speaker_names, variants=train_variants, device=device)
    tables, stats = prepare_tables({"train": table}, normalise=normalise, floor_db=floor_db)
    t = tables["train"]
    return FoldData(name, t, t, t, list(classes), speaker_names, stats)


def warn_missing_classes(table: FeatureTable, classes: Sequence[str], *, fold: str) -> list[str]:
    """Warn (and return the names) when a class has no training item in this fold."""
    counts = torch.bincount(table.labels.cpu(), minlength=len(classes))
    missing = [c for c, n in zip(classes, counts.tolist(), strict=True) if n == 0]
    if missing:
        warnings.warn(f"fold {fold}: class(es) {missing} have no training utterance", stacklevel=2)
    return missing


def class_weights(labels: torch.Tensor, n_classes: int) -> torch.Tensor:
    """Inverse-frequency weights ``N / (K * n_c)`` as ``(K,)`` float; an absent class gets 0."""
    counts = torch.bincount(labels.cpu(), minlength=n_classes).double()
    present = counts > 0
    w = torch.zeros(n_classes, dtype=torch.float64)
    w[present] = counts.sum() / (present.sum() * counts[present])
    return w.float()


# ----------------------------------------------------------------------------------------------
# Batching: in-memory index batches, or a PyTorch Dataset/DataLoader


def index_batches(n: int, batch_size: int, *, shuffle: bool, generator: torch.Generator | None = None) -> Iterator[torch.Tensor]:
    """Yield ``(B,)`` index tensors covering ``range(n)`` (a seeded permutation when ``shuffle``)."""
    require(batch_size > 0, "batch_size", batch_size, "must be positive")
    order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
    yield from torch.split(order, batch_size)


class TableDataset(Dataset):
    """Items of a :class:`FeatureTable`: ``(features (C, F, T_i), label, speaker)``."""

    def __init__(self, table: FeatureTable) -> None:
        self.table = table.to("cpu")

    def __len__(self) -> int:
        return len(self.table)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        return self.table.item(i), int(self.table.labels[i]), int(self.table.speakers[i])


class SourceDataset(Dataset):
    """Lazy items read one by one from a :class:`FeatureSource` (for corpora that do not fit)."""

    def __init__(self, source: FeatureSource, keys: Sequence[FeatureKey], labels: Sequence[int], speakers: Sequence[int]) -> None:
        require(len(keys) == len(labels) == len(speakers), "keys", len(keys), "labels/speakers differ in length")
        self.source, self.keys, self.labels, self.speakers = source, list(keys), list(labels), list(speakers)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        (array,) = self.source.read_many([self.keys[i]])
        return torch.as_tensor(np.asarray(array, dtype=np.float32)), self.labels[i], self.speakers[i]


def collate_padded(items: Sequence[tuple[torch.Tensor, int, int]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``[(C, F, T_i), label, speaker]`` -> ``x (B, C, F, T_max)`` zero-padded, ``lengths``, ``labels``, ``speakers``."""
    lengths = torch.tensor([x.shape[2] for x, _, _ in items], dtype=torch.long)
    t_max = int(lengths.max())
    x = torch.stack([torch.nn.functional.pad(f, (0, t_max - f.shape[2])) for f, _, _ in items])
    labels = torch.tensor([y for _, y, _ in items], dtype=torch.long)
    speakers = torch.tensor([s for _, _, s in items], dtype=torch.long)
    return x, lengths, labels, speakers


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, seed: int = 0, num_workers: int = 0) -> DataLoader:
    """A seeded DataLoader with :func:`collate_padded`."""
    gen = torch.Generator().manual_seed(seed)
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=num_workers,
                      collate_fn=collate_padded)
