"""Classic baseline: a linear SVM on openSMILE functionals (trainer ``classic``).

Feature sets (``FUNCTIONAL_SETS``): IS09 (emotion challenge, 384), IS10 (paralinguistics, 1582),
eGeMAPSv02 (88) and ComParE_2016 (6373). Functionals are cached per feature set in
``<root>/features/functionals/<set>.parquet`` keyed by the audio sha256, so LOSO folds and re-runs
never recompute them. Optional per-speaker z-normalisation uses each speaker's own statistics
(no labels), as in the speaker-normalised reference set-up.

``opensmile`` is an optional extra (``pip install ser-pipeline[opensmile]``); without it the model
is still listed and fails with a clear ConfigError when used.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ser_pipeline.config import require
from ser_pipeline.errors import ConfigError, SerError
from ser_pipeline.models import register_model

log = logging.getLogger(__name__)

FUNCTIONAL_SETS = ("IS09", "IS10", "eGeMAPSv02", "ComParE_2016")
SAMPLE_RATE = 16000


def _smile(feature_set: str) -> Any:
    require(feature_set in FUNCTIONAL_SETS, "feature_set", feature_set, f"valid sets: {list(FUNCTIONAL_SETS)}")
    try:
        import opensmile
    except ModuleNotFoundError:
        raise ConfigError("model 'svm' needs openSMILE: pip install 'ser-pipeline[opensmile]'") from None
    return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, feature_set),
                           feature_level=opensmile.FeatureLevel.Functionals)


def extract_functionals(path: str, feature_set: str) -> np.ndarray:
    """Functionals of one recording (mono, 16 kHz): ``(D,)`` float64."""
    from ser_pipeline.audio import load

    wave, sr = load(path, sample_rate=SAMPLE_RATE)
    return _smile(feature_set).process_signal(np.asarray(wave, dtype=np.float32), sr).to_numpy()[0].astype(np.float64)


def _extract_many(args: tuple[list[str], str]) -> list[tuple[np.ndarray | None, str]]:
    paths, feature_set = args
    smile = _smile(feature_set)
    from ser_pipeline.audio import load

    out: list[tuple[np.ndarray | None, str]] = []
    for path in paths:
        try:
            wave, sr = load(path, sample_rate=SAMPLE_RATE)
            out.append((smile.process_signal(np.asarray(wave, dtype=np.float32), sr).to_numpy()[0].astype(np.float64), ""))
        except (SerError, OSError, RuntimeError, ValueError) as exc:
            out.append((None, f"{path}: {exc}"))
    return out


def cache_path(features_dir: str | Path, feature_set: str) -> Path:
    return Path(features_dir) / "functionals" / f"{feature_set}.parquet"


def functionals(
    manifest: pd.DataFrame, feature_set: str, features_dir: str | Path, *, workers: int = 2
) -> tuple[np.ndarray, dict[str, str]]:
    """Functionals for every manifest row: ``X (N, D)`` in row order (NaN rows for failures) and
    ``{utterance_id: reason}`` for recordings that failed. Computes only what the cache lacks."""
    from ser_pipeline.manifest import atomic_write_bytes

    path = cache_path(features_dir, feature_set)
    cached = pd.read_parquet(path) if path.exists() else pd.DataFrame()
    have = set(cached.index) if len(cached) else set()
    todo = manifest.loc[~manifest["sha256"].isin(have)].drop_duplicates("sha256")
    failed: dict[str, str] = {}
    if len(todo):
        _smile(feature_set)  # fail early when opensmile is absent
        paths = todo["path"].tolist()
        chunks = [paths[i::max(1, workers)] for i in range(max(1, workers))]
        shas = [todo["sha256"].tolist()[i::max(1, workers)] for i in range(max(1, workers))]
        if workers > 1 and len(paths) > 8:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                results = list(pool.map(_extract_many, [(c, feature_set) for c in chunks]))
        else:
            results = [_extract_many((c, feature_set)) for c in chunks]
        rows, index = [], []
        for sha_chunk, res in zip(shas, results, strict=True):
            for sha, (vec, reason) in zip(sha_chunk, res, strict=True):
                if vec is None:
                    failed[sha] = reason
                else:
                    rows.append(vec)
                    index.append(sha)
        if rows:
            names = [f"f{i}" for i in range(len(rows[0]))]
            new = pd.DataFrame(np.stack(rows), index=index, columns=names)
            cached = pd.concat([cached, new]) if len(cached) else new
            buf = io.BytesIO()
            cached.to_parquet(buf)
            atomic_write_bytes(path, buf.getvalue())
            log.info("functionals %s: computed %d, cached %d", feature_set, len(rows), len(cached))
    X = cached.reindex(manifest["sha256"].tolist()).to_numpy(dtype=np.float64)
    by_sha = dict(zip(manifest["sha256"], manifest["utterance_id"], strict=True))
    failed_ids = {by_sha[s]: r for s, r in failed.items() if s in by_sha}
    for uid, row in zip(manifest["utterance_id"], X, strict=True):
        if uid not in failed_ids and not np.isfinite(row).all():
            failed_ids[uid] = "functionals missing or non-finite"
    return X, failed_ids


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

    def __init__(self, n_classes: int, *, C: float = 1.0, feature_set: str = "eGeMAPSv02",
                 speaker_norm: bool = True, max_iter: int = 20000, seed: int = 0) -> None:
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler
        from sklearn.svm import LinearSVC

        require(C > 0, "C", C, "must be positive")
        require(feature_set in FUNCTIONAL_SETS, "feature_set", feature_set, f"valid sets: {list(FUNCTIONAL_SETS)}")
        self.n_classes = n_classes
        self.feature_set = feature_set
        self.speaker_norm = speaker_norm
        self.pipeline = make_pipeline(StandardScaler(), LinearSVC(C=C, max_iter=max_iter, random_state=seed))

    def fit(self, X: np.ndarray, y: np.ndarray) -> FunctionalsSVM:
        self.pipeline.fit(X, y)
        return self

    def state_dict(self) -> dict[str, Any]:
        """The fitted model as plain numbers (JSON-ready, no pickle): scaler mean and scale, the SVM's
        ``coef`` ``(K', D)`` and ``intercept`` ``(K',)``, the classes it saw."""
        scaler, svm = self.pipeline[0], self.pipeline[-1]
        return {"n_classes": self.n_classes, "feature_set": self.feature_set, "speaker_norm": self.speaker_norm,
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
    defaults={"C": 0.01, "feature_set": "eGeMAPSv02", "speaker_norm": True},
    ablations={"feature_set": f"one of {list(FUNCTIONAL_SETS)}", "speaker_norm": "per-speaker z-normalisation"},
    trainer="classic",
    cpu={"hparams": {}},  # already CPU-sized: the cpu preset changes nothing
)
def build_svm(n_classes: int, in_channels: int = 0, **hparams: Any) -> FunctionalsSVM:
    """Registry builder: :class:`FunctionalsSVM` (``in_channels`` is unused)."""
    return FunctionalsSVM(n_classes, **hparams)
