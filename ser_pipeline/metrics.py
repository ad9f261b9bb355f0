"""Utterance-level metrics: WA, UA, macro-F1, per-class recall, confusion matrices, and their
aggregation over folds (pooled and mean/std), plus paired tests between experiments.

Labels are integer class indices ``(N,)`` in ``range(n_classes)``.

- WA (weighted accuracy) = accuracy = trace(C) / N.
- UA (unweighted average recall) = mean over the classes *present in the true labels* of
  recall_c. A class absent from a fold's test labels is left out of UA (as scikit-learn's
  ``balanced_accuracy_score`` does) and reported with recall ``None`` and a warning.
- macro-F1 = mean over the classes present in the true or predicted labels of F1_c
  (``f1_score(average="macro", labels=present)``).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from ser_pipeline.config import require
from ser_pipeline.errors import ConfigError

METRIC_NAMES = ("wa", "ua", "macro_f1")


def confusion(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int) -> np.ndarray:
    """Counts ``(K, K)``: row = true class, column = predicted class."""
    t = np.asarray(y_true, dtype=np.int64)
    p = np.asarray(y_pred, dtype=np.int64)
    require(t.shape == p.shape, "predictions", p.shape, f"must match the labels' shape {t.shape}")
    bad = (t < 0) | (t >= n_classes) | (p < 0) | (p >= n_classes)
    require(not bad.any(), "labels", sorted(set(t[bad]) | set(p[bad])), f"outside range(0, {n_classes})")
    return np.bincount(t * n_classes + p, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def row_normalise(cm: np.ndarray) -> np.ndarray:
    """Row-normalised confusion ``(K, K)`` float: each true class's row sums to 1 (0 for empty rows)."""
    rows = cm.sum(axis=1, keepdims=True).astype(np.float64)
    return np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)


def metrics_from_confusion(cm: np.ndarray, classes: Sequence[str] | None = None, *, where: str = "") -> dict[str, Any]:
    """WA, UA, macro-F1, per-class recall/precision/F1 and supports from a confusion matrix."""
    cm = np.asarray(cm, dtype=np.int64)
    k = cm.shape[0]
    classes = list(classes) if classes is not None else [str(i) for i in range(k)]
    require(len(classes) == k, "classes", len(classes), f"confusion has {k} classes")
    n = int(cm.sum())
    require(n > 0, "predictions", n, "no predictions to score")
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    tp = np.diag(cm)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    true_present = support > 0
    any_present = true_present | (predicted > 0)
    missing = [c for c, present in zip(classes, true_present, strict=True) if not present]
    if missing:
        warnings.warn(f"{where or 'metrics'}: class(es) {missing} absent from the true labels; "
                      "UA averages over the classes present", stacklevel=2)
    return {
        "n": n,
        "wa": float(tp.sum() / n),
        "ua": float(recall[true_present].mean()),
        "macro_f1": float(f1[any_present].mean()),
        "per_class_recall": {c: (float(r) if p else None) for c, r, p in zip(classes, recall, true_present, strict=True)},
        "per_class_precision": {c: float(v) for c, v in zip(classes, precision, strict=True)},
        "per_class_f1": {c: float(v) for c, v in zip(classes, f1, strict=True)},
        "support": {c: int(v) for c, v in zip(classes, support, strict=True)},
        "missing_classes": missing,
        "confusion": cm.tolist(),
        "confusion_normalised": row_normalise(cm).round(6).tolist(),
    }


def score(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, classes: Sequence[str], *, where: str = "") -> dict[str, Any]:
    """All metrics for one set of predictions (see :func:`metrics_from_confusion`)."""
    return metrics_from_confusion(confusion(y_true, y_pred, len(classes)), classes, where=where)


def unweighted_average_recall(y_true: Sequence[int] | np.ndarray, y_pred: Sequence[int] | np.ndarray, n_classes: int) -> float:
    """UA alone (quiet about missing classes): used for checkpoint selection on validation data."""
    cm = confusion(y_true, y_pred, n_classes)
    support = cm.sum(axis=1)
    present = support > 0
    if not present.any():
        return float("nan")
    return float((np.diag(cm)[present] / support[present]).mean())


def aggregate(fold_metrics: Sequence[Mapping[str, Any]], pooled_cm: np.ndarray, classes: Sequence[str]) -> dict[str, Any]:
    """Fold aggregation, both ways, named: ``pooled`` = metrics of all test predictions together;
    ``mean``/``std`` = mean and sample std (ddof=1; 0 for one fold) of the per-fold values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pooled = metrics_from_confusion(pooled_cm, classes, where="pooled")
    mean: dict[str, Any] = {}
    std: dict[str, Any] = {}
    for name in METRIC_NAMES:
        values = np.array([m[name] for m in fold_metrics], dtype=np.float64)
        mean[name] = float(values.mean())
        std[name] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
    per_class = {}
    for c in classes:
        vals = [m["per_class_recall"][c] for m in fold_metrics if m["per_class_recall"].get(c) is not None]
        per_class[c] = float(np.mean(vals)) if vals else None
    mean["per_class_recall"] = per_class
    return {"pooled": pooled, "mean": mean, "std": std, "n_folds": len(fold_metrics)}


def compare_folds(a: Sequence[float], b: Sequence[float]) -> dict[str, Any]:
    """Paired t-test and Wilcoxon signed-rank test over matched folds (scipy).

    Returns mean difference ``a - b``, the statistics and two-sided p-values (``None`` when a test
    is undefined, e.g. all differences zero or fewer than two folds).
    """
    from scipy import stats

    x = np.asarray(a, dtype=np.float64)
    y = np.asarray(b, dtype=np.float64)
    if x.shape != y.shape:
        raise ConfigError(f"folds: cannot pair {len(x)} folds with {len(y)}; experiments must share their folds")
    diff = x - y
    out: dict[str, Any] = {"n_folds": int(len(x)), "mean_diff": float(diff.mean()) if len(x) else math.nan,
                           "t_statistic": None, "t_pvalue": None, "wilcoxon_statistic": None, "wilcoxon_pvalue": None}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # scipy's precision note for near-equal folds
        if len(x) >= 2 and np.any(diff != diff[0]):
            t = stats.ttest_rel(x, y)
            out["t_statistic"], out["t_pvalue"] = float(t.statistic), float(t.pvalue)
        if len(x) >= 2 and np.any(diff != 0):
            w = stats.wilcoxon(x, y)
            out["wilcoxon_statistic"], out["wilcoxon_pvalue"] = float(w.statistic), float(w.pvalue)
    return out
