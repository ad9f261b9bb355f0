"""Prediction from audio files with a trained model (``ser predict``).

A trained model folder (``<experiment>/model/``: ``model.json`` + weights, written by
:mod:`ser_pipeline.experiments.runner`; the format is
:mod:`ser_pipeline.inference.model_folder`) records the exact feature spec, the view and the class names used
in training; :func:`load_predictor` rebuilds all three, so training and inference cannot diverge.
Each file is read, resampled to the spec's rate, checked (unreadable, empty, silent, non-finite
files get a per-file error) and turned into ``(C, F, T)`` features with
:func:`ser_pipeline.features.extract`; the view and network then give class posteriors
(segment views: mean of segment posteriors; two-stage models: stage-1 embeddings then stage 2).

Registered MLflow models (``models:/<name>@champion``) wrap the same code as a pyfunc
(:class:`ser_pipeline.tracking.pyfunc.SerAudioModel`); this module never imports tracking.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from ser_pipeline.audio import MIN_DURATION_S, check_recording, resample, signal_problem, to_mono
from ser_pipeline.dataset.normalise import floor_silence, normalise_tables, normalise_with
from ser_pipeline.dataset.tables import DictSource, load_table
from ser_pipeline.dataset.views import ViewSpec
from ser_pipeline.errors import AudioError, ConfigError, SerError
from ser_pipeline.features import FeatureSpec, extract
from ser_pipeline.inference.forward import (
    EMBEDDINGS,
    POSTERIORS,
    STAGE2_VIEW,
    predict_proba,
    sequence_table,
)
from ser_pipeline.inference.model_folder import load_trained_model


@dataclass
class Predictor:
    """A loaded model: network (+ stage 2), feature spec, view and class names."""

    model: Any
    stage2: Any | None
    feature_spec: FeatureSpec
    view: ViewSpec
    classes: list[str]
    meta: dict[str, Any]


def model_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` itself when it holds ``model.json``, else ``path/model`` (an experiment folder)."""
    path = Path(path)
    if (path / "model.json").is_file():
        return path
    if (path / "model" / "model.json").is_file():
        return path / "model"
    raise ConfigError(f"{path}: not a trained model folder (no model.json here or in model/)")


def load_predictor(path: str | os.PathLike[str], *, device: str = "cpu") -> Predictor:
    """Rebuild the network and the recorded feature spec / view from a model (or experiment) folder."""
    folder = model_folder(path)
    model, stage2, meta = load_trained_model(folder, device=device)
    if not meta.get("feature_spec"):
        raise ConfigError(f"{folder}/model.json: no feature_spec recorded; cannot predict from audio")
    bn_statistics = meta.setdefault("bn_statistics", "train")  # folders from before the field: trained statistics
    if bn_statistics not in POSTERIORS:
        raise ConfigError(f"{folder}/model.json: bn_statistics={bn_statistics!r}; valid: {', '.join(POSTERIORS)}")
    spec = FeatureSpec.from_dict(meta["feature_spec"])
    view = ViewSpec.from_dict(meta["view"])
    return Predictor(model, stage2, spec, view, list(meta["classes"]), meta)


def file_features(path: str | os.PathLike[str], spec: FeatureSpec, *,
                  min_duration_s: float = MIN_DURATION_S) -> np.ndarray:
    """``(C, F, T)`` float32 features of one audio file under ``spec``; AudioError names the file
    (``path does not exist``, ``truncated audio: ...``, ``too short: ...``, unreadable, silent)."""
    path = Path(path)
    if not path.exists():
        raise AudioError(f"{path}: path does not exist")
    if not path.is_file():
        raise AudioError(f"{path}: not a file")
    try:
        data, rate = check_recording(path, min_duration_s=min_duration_s)
        wave = (resample(to_mono(data), rate, spec.sample_rate, quality=spec.resample_quality)
                if rate != spec.sample_rate else to_mono(data))
    except SerError:
        raise
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types
        raise AudioError(f"{path}: unreadable audio ({exc})") from None
    problem = signal_problem(wave)
    if problem:
        raise AudioError(f"{path}: {problem}")
    try:
        feats = extract(wave, spec)
    except SerError as exc:
        raise AudioError(f"{path}: {exc}") from None
    if feats.shape[-1] == 0:
        raise AudioError(f"{path}: too short for one feature frame")
    return feats


def posteriors(predictor: Predictor, features: list[np.ndarray]) -> np.ndarray:
    """Class posteriors ``(N, K)`` for a list of ``(C, F, T)`` feature arrays.

    Normalisation follows the view: ``utterance`` uses each file's own statistics (as in training);
    ``global`` applies the training statistics recorded with the model; ``speaker`` treats each file
    as its own unseen speaker (a test speaker's statistics are never seen in training either).
    BatchNorm statistics follow ``model.json``'s ``bn_statistics``: ``speaker`` (AdaBN) recomputes
    them on each file's own frames, as each file is its own speaker; ``train`` (and folders written
    before the field existed) keep the trained statistics.
    """
    n = len(features)
    ids = [f"file{i}" for i in range(n)]
    rows = pd.DataFrame({"utterance_id": ids, "sha256": ids, "emotion": [predictor.classes[0]] * n,
                         "speaker": ids})
    source = DictSource({(uid, "orig"): feats for uid, feats in zip(ids, features, strict=True)})
    table = floor_silence(load_table(source, rows, predictor.classes, ids), predictor.view.floor_db)  # as in training
    mode = predictor.view.normalise
    stats = predictor.meta.get("normalisation")
    if mode == "global" and stats is not None:
        table = normalise_with(table, stats["mean"], stats["std"])
    else:
        table = normalise_tables({"train": table}, "speaker" if mode == "global" else mode)["train"]
    device = next(predictor.model.parameters()).device
    table = table.to(device)
    with torch.no_grad():
        bn_statistics = predictor.meta["bn_statistics"]  # checked by load_predictor
        if predictor.stage2 is not None:
            seq = sequence_table(table, EMBEDDINGS[bn_statistics](predictor.model, table, predictor.view, bf16=False))
            return predict_proba(predictor.stage2, seq, STAGE2_VIEW, bf16=False)
        return POSTERIORS[bn_statistics](predictor.model, table, predictor.view, bf16=False)


CHUNK = 256  # files whose features are held in memory at once


def predict_paths(predictor: Predictor, paths: list[str], *, chunk: int = CHUNK) -> list[dict[str, Any]]:
    """One result per path: ``{"path", "emotion", "probabilities": {class: p}, "error"}``.

    The model is used as loaded (once); files are featurized and scored in chunks of ``chunk``
    (batched forward passes). A file that cannot be used gets ``emotion=None`` and an ``error``
    naming the problem; the other files are still predicted.
    """
    results: list[dict[str, Any]] = [{"path": str(p), "emotion": None, "probabilities": {}, "error": None}
                                     for p in paths]
    for lo in range(0, len(paths), chunk):
        good: list[int] = []
        feats: list[np.ndarray] = []
        for i in range(lo, min(lo + chunk, len(paths))):
            try:
                feats.append(file_features(paths[i], predictor.feature_spec))
                good.append(i)
            except SerError as exc:
                results[i]["error"] = str(exc)
        if feats:
            probs = posteriors(predictor, feats)
            for i, row in zip(good, probs, strict=True):
                results[i]["probabilities"] = {c: float(p) for c, p in zip(predictor.classes, row, strict=True)}
                results[i]["emotion"] = predictor.classes[int(np.argmax(row))]
    return results


def results_frame(results: list[dict[str, Any]], classes: list[str]) -> pd.DataFrame:
    """Flat frame (pyfunc output): ``path, emotion, p_<class>..., error`` (NaN probabilities on error)."""
    return pd.DataFrame([{
        "path": r["path"], "emotion": r["emotion"] or "",
        **{f"p_{c}": r["probabilities"].get(c, float("nan")) for c in classes}, "error": r["error"] or "",
    } for r in results])


def frame_results(frame: pd.DataFrame) -> list[dict[str, Any]]:
    """Inverse of :func:`results_frame`."""
    classes = [c[2:] for c in frame.columns if c.startswith("p_")]
    out = []
    for row in frame.to_dict("records"):
        error = row.get("error") or None
        out.append({"path": row["path"], "emotion": row.get("emotion") or None, "error": error,
                    "probabilities": {} if error else {c: float(row[f"p_{c}"]) for c in classes}})
    return out
