"""Classic baseline: a linear SVM on openSMILE functionals (trainer ``classic``).

The functionals are a feature kind of the store (``FeatureSpec(kind="functionals")``, preset
``functionals``, field ``functional_set``: IS09, IS10, eGeMAPSv02, ComParE_2016; see
:mod:`ser_pipeline.functionals`), keyed by digest like every other feature set, so LOSO folds and
re-runs never recompute them. Choose the set with ``feature_overrides: {functional_set: IS09}``
(``--set feature_overrides.functional_set=IS09``). Optional per-speaker z-normalisation uses each
speaker's own statistics (no labels), as in the speaker-normalised reference set-up.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ser_pipeline.config import require
from ser_pipeline.models import register_model


def speaker_znorm(X: np.ndarray, speakers: Sequence[str], *, eps: float = 1e-8) -> np.ndarray:
    """Z-normalise ``X (N, D)`` per speaker with that speaker's own mean and std (no labels used)."""
    out = np.empty_like(X, dtype=np.float64)
    spk = np.asarray(speakers)
    for s in np.unique(spk):
        rows = spk == s
        mean = X[rows].mean(axis=0)
        std = X[rows].std(axis=0)
        out[rows] = (X[rows] - mean) / np.where(std > eps, std, 1.0)
    return out


class FunctionalsSVM:
    """Standardise + linear SVM; ``predict_proba`` is the softmax of the decision values ``(N, K)``."""

    def __init__(self, n_classes: int, *, C: float = 1.0, speaker_norm: bool = True, max_iter: int = 20000,
                 seed: int = 0) -> None:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        require(C > 0, "C", C, "must be positive")
        self.n_classes = n_classes
        self.speaker_norm = speaker_norm
        self.pipeline = make_pipeline(StandardScaler(), LinearSVC(C=C, max_iter=max_iter, random_state=seed))

    def fit(self, X: np.ndarray, y: np.ndarray) -> FunctionalsSVM:
        self.pipeline.fit(X, y)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The fitted model as plain numbers (JSON-ready, no pickle): scaler mean and scale, the SVM's
        ``coef`` ``(K', D)`` and ``intercept`` ``(K',)``, the classes it saw."""
        scaler, svm = self.pipeline[0], self.pipeline[-1]
        return {"n_classes": self.n_classes, "speaker_norm": self.speaker_norm,
                "mean": scaler.mean_.tolist(), "scale": scaler.scale_.tolist(), "coef": svm.coef_.tolist(),
                "intercept": svm.intercept_.tolist(), "classes": [int(c) for c in svm.classes_]}

    @staticmethod
    def scores_from_state(state: dict[str, Any], X: np.ndarray) -> np.ndarray:
        """Decision values ``(N, K')`` of a :meth:`state_dict` on functionals ``X`` ``(N, D)``."""
        z = (np.asarray(X, dtype=np.float64) - np.asarray(state["mean"])) / np.asarray(state["scale"])
        return z @ np.asarray(state["coef"]).T + np.asarray(state["intercept"])

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """``(N, K)`` pseudo-posteriors over all ``n_classes`` (absent training classes get 0)."""
        scores = np.asarray(self.pipeline.decision_function(X), dtype=np.float64)
        seen = self.pipeline.classes_
        if scores.ndim == 1:  # two classes
            scores = np.stack([-scores, scores], axis=1)
        full = np.full((len(X), self.n_classes), -np.inf)
        full[:, seen] = scores
        full -= full.max(axis=1, keepdims=True)
        p = np.exp(full)
        return p / p.sum(axis=1, keepdims=True)


@register_model(
    "svm",
    reference="linear SVM on openSMILE functionals (Eyben et al., 2016, eGeMAPS; Schuller et al., IS09/IS10/ComParE)",
    feature_preset="functionals",
    view={},
    recipe={},
    defaults={"C": 0.01, "speaker_norm": True},
    ablations={"feature_overrides.functional_set": "IS09, IS10, eGeMAPSv02 or ComParE_2016",
               "speaker_norm": "per-speaker z-normalisation"},
    trainer="classic",
    cpu={"hparams": {}},  # already CPU-sized: the cpu preset changes nothing
)
def build_svm(n_classes: int, in_channels: int = 0, **hparams: Any) -> FunctionalsSVM:
    """Registry builder: :class:`FunctionalsSVM` (``in_channels`` is unused)."""
    return FunctionalsSVM(n_classes, **hparams)
