"""The ``classic`` trainer kind: a scikit-learn estimator on stored openSMILE functionals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ser_pipeline.models.classic import speaker_znorm
from ser_pipeline.training.trainers.base import TRAINERS, FoldOutcome, FoldRun


def functionals_matrix(fold: FoldRun, ids: list[str]) -> np.ndarray:
    """The stored functionals of ``ids`` (their ``orig`` items) as ``X (N, D)`` float64, in ``ids`` order."""
    assert fold.source is not None, "the classic trainer reads its functionals from the store"
    sha = fold.manifest.set_index("utterance_id")["sha256"]
    arrays = fold.source.read_many([(str(sha[u]), "orig") for u in ids])
    return np.stack([a.reshape(-1) for a in arrays]).astype(np.float64)


@dataclass(frozen=True)
class ClassicTrainer:
    """Fits on train + validation speakers (no epochs to select), predicts the test fold, on CPU."""

    name: str = "classic"
    reads_features: bool = True
    refits: bool = False
    fits_final: bool = True
    uses_view: bool = False
    uses_device: bool = False

    def run(self, fold: FoldRun) -> FoldOutcome:
        p = fold.plan
        model = p.entry.build(n_classes=len(fold.classes), in_channels=0, **{"seed": p.train.seed, **p.hparams})
        ids = list(fold.train_ids) + list(fold.val_ids) + list(fold.test_ids)
        rows = fold.manifest.set_index("utterance_id", drop=False).loc[ids]
        X = functionals_matrix(fold, ids)
        if model.speaker_norm:
            X = speaker_znorm(X, rows["speaker"].tolist())
        lookup = {c: i for i, c in enumerate(fold.classes)}
        y = np.array([lookup[e] for e in rows["emotion"]])
        n_fit = len(fold.train_ids) + len(fold.val_ids)
        model.fit(X[:n_fit], y[:n_fit])
        return FoldOutcome(model.predict_proba(X[n_fit:]), [], 0, float("nan"), model=model,
                           extra={"n_fit": n_fit})

    def fit_final(self, run: FoldRun, epochs: int) -> FoldOutcome:
        """The estimator fitted on every utterance of ``run.train_ids`` (``epochs`` is unused)."""
        p = run.plan
        model = p.entry.build(n_classes=len(run.classes), in_channels=0, **{"seed": p.train.seed, **p.hparams})
        ids = list(run.train_ids)
        rows = run.manifest.set_index("utterance_id", drop=False).loc[ids]
        X = functionals_matrix(run, ids)
        if model.speaker_norm:
            X = speaker_znorm(X, rows["speaker"].tolist())
        lookup = {c: i for i, c in enumerate(run.classes)}
        model.fit(X, np.array([lookup[e] for e in rows["emotion"]]))
        return FoldOutcome(np.zeros((0, len(run.classes))), [], 0, float("nan"), model=model, fold=run.name,
                           extra={"n_fit": len(ids)})


TRAINERS.add("classic", ClassicTrainer())
