"""The trainer protocol and what one fold hands a trainer (:class:`FoldRun`) and gets back
(:class:`FoldOutcome`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch

from ser_pipeline.dataset.spec_augment import SpecAugmentSpec
from ser_pipeline.dataset.tables import FeatureSource, FoldData, build_final_data, build_fold_data
from ser_pipeline.dataset.views import ViewSpec
from ser_pipeline.models import ModelEntry
from ser_pipeline.registry import Registry
from ser_pipeline.training.config import TrainConfig
from ser_pipeline.training.loop import EpochCallback


@dataclass(frozen=True)
class TrainingPlan:
    """Everything a trainer needs to know about the model and its optimisation (resolved once by
    :func:`ser_pipeline.experiments.config.resolve`)."""

    entry: ModelEntry
    hparams: dict[str, Any]
    view: ViewSpec
    train: TrainConfig
    spec_augment: SpecAugmentSpec | None = None
    stage2_hparams: dict[str, Any] = field(default_factory=dict)
    stage2_train: TrainConfig | None = None
    speaker_train: TrainConfig | None = None
    speaker_freeze: bool = True  # speaker_pretrain: freeze the backbone after stage 1 (False: fine-tune it)
    refit: bool = True  # after choosing the epoch on validation, retrain on train + val (standard trainer)
    notes: tuple[str, ...] = ()  # recipe decisions to record (e.g. a from-scratch variant)


@dataclass
class FoldRun:
    """One fold: the ids of its three parts, the data source and where to keep checkpoints."""

    name: str
    index: int
    plan: TrainingPlan
    manifest: pd.DataFrame
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    classes: list[str]
    device: torch.device
    workdir: Path
    callbacks: Sequence[EpochCallback]
    source: FeatureSource | None = None  # the feature set (trainers that read the store)
    store: Any = None  # FeatureStore: two-stage derived items
    feature_digest: str = ""
    train_variants: tuple[str, ...] = ("orig",)

    @property
    def seed(self) -> int:
        return self.plan.train.seed + 1000 * self.index

    def final_data(self) -> FoldData:
        """Every utterance of ``train_ids`` as one training table (:func:`build_final_data`)."""
        assert self.source is not None, "this trainer reads features; the runner passes the feature set"
        return build_final_data(self.source, self.manifest, name=self.name, train_ids=self.train_ids,
                                classes=self.classes, train_variants=self.train_variants,
                                normalise=self.plan.view.normalise, floor_db=self.plan.view.floor_db,
                                device=self.device)

    def fold_data(self, *, with_val: bool = False) -> FoldData:
        """The fold's preloaded tables; ``with_val``: the training table holds train + validation
        utterances (a refit on every non-test speaker; normalisation statistics follow) and there
        is no validation table (a refit validates nothing: loading it again cost 300 of the 1,500
        CASIA items of a refit)."""
        assert self.source is not None, "this trainer reads features; the runner passes the feature set"
        train_ids = self.train_ids + self.val_ids if with_val else self.train_ids
        return build_fold_data(
            self.source, self.manifest, name=self.name, train_ids=train_ids,
            val_ids=None if with_val else self.val_ids,
            test_ids=self.test_ids, classes=self.classes, train_variants=self.train_variants,
            normalise=self.plan.view.normalise, floor_db=self.plan.view.floor_db, device=self.device)


@dataclass
class FoldOutcome:
    """Test posteriors ``probs (N_test, K)`` in ``test_ids`` order, plus what to save."""

    probs: np.ndarray
    history: list[dict[str, float]]
    best_epoch: int
    val_ua: float
    model: Any = None
    stage2: Any = None
    stage1_history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    fold: str = ""


class Trainer(Protocol):
    """One trainer kind: ``run(fold) -> FoldOutcome`` plus what the runner must prepare for it."""

    name: str
    reads_features: bool  # reads its feature set (log-Mel, spectrogram, ssl, functionals) from the store
    uses_view: bool  # the model entry's view applies
    uses_device: bool  # runs on the requested device (else on CPU)
    refits: bool  # with plan.refit, ends each fold with a refit on train + validation speakers
    fits_final: bool  # can train one model on every speaker after the folds (final_model=all_speakers)

    def run(self, fold: FoldRun) -> FoldOutcome: ...

    def fit_final(self, run: FoldRun, epochs: int) -> FoldOutcome:
        """A model trained on every utterance of ``run.train_ids`` for ``epochs`` epochs, no
        validation and nothing scored (``probs`` is empty); only kinds with ``fits_final``."""
        ...


TRAINERS: Registry[Trainer] = Registry("trainer")
