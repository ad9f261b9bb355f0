"""The ``classic`` trainer kind: a scikit-learn estimator on openSMILE functionals."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ser_pipeline.errors import TrainingError
from ser_pipeline.models.classic import functionals, speaker_znorm
from ser_pipeline.training.trainers.base import TRAINERS, FoldOutcome, FoldRun


@dataclass(frozen=True)
class ClassicTrainer:
    """Fits on train + validation speakers (no epochs to select), predicts the test fold, on CPU."""

    name: str = "classic"
    reads_features: bool = False
    uses_view: bool = False
    uses_device: bool = False

    def run(self, fold: FoldRun) -> FoldOutcome:
        p = fold.plan
        model = p.entry.build(n_classes=len(fold.classes), in_channels=0, **{"seed": p.train.seed, **p.hparams})
        ids = list(fold.train_ids) + list(fold.val_ids) + list(fold.test_ids)
        rows = fold.manifest.set_index("utterance_id", drop=False).loc[ids]
        assert fold.functionals_dir is not None
        X, failed = functionals(rows, model.feature_set, fold.functionals_dir)
        if failed:
            raise TrainingError(f"fold {fold.name}: functionals failed for {sorted(failed)[:3]}")
        if model.speaker_norm:
            X = speaker_znorm(X, rows["speaker"].tolist())
        lookup = {c: i for i, c in enumerate(fold.classes)}
        y = np.array([lookup[e] for e in rows["emotion"]])
        n_fit = len(fold.train_ids) + len(fold.val_ids)
        model.fit(X[:n_fit], y[:n_fit])
        return FoldOutcome(model.predict_proba(X[n_fit:]), [], 0, float("nan"), model=model)


TRAINERS.add("classic", ClassicTrainer())
