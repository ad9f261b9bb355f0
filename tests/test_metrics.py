"""Metric functions checked against scikit-learn and scipy."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, recall_score

from ser_pipeline.errors import ConfigError
from ser_pipeline.metrics import (
    aggregate,
    compare_folds,
    confusion,
    row_normalise,
    score,
    unweighted_average_recall,
)

CLASSES = ["anger", "happiness", "neutral", "sadness"]


def random_predictions(seed: int, n: int = 80, k: int = 4) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    pred = np.where(rng.random(n) < 0.6, y, rng.integers(0, k, n))
    return y, pred


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_metrics_match_sklearn(seed: int) -> None:
    y, pred = random_predictions(seed)
    m = score(y, pred, CLASSES)
    assert m["wa"] == pytest.approx(accuracy_score(y, pred))
    assert m["ua"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    recalls = recall_score(y, pred, average=None, labels=range(4))
    assert [m["per_class_recall"][c] for c in CLASSES] == pytest.approx(list(recalls))
    assert np.array_equal(np.array(m["confusion"]), confusion_matrix(y, pred, labels=range(4)))
    assert np.allclose(m["confusion_normalised"], confusion_matrix(y, pred, labels=range(4), normalize="true"), atol=1e-6)


def test_missing_class_warns_and_metrics_stay_defined() -> None:
    y = np.array([0, 0, 1, 1, 2, 2])
    pred = np.array([0, 1, 1, 1, 2, 3])
    with pytest.warns(UserWarning, match="sadness"):
        m = score(y, pred, CLASSES, where="fold x")
    assert m["per_class_recall"]["sadness"] is None and m["missing_classes"] == ["sadness"]
    with pytest.warns(UserWarning):
        expected_ua = balanced_accuracy_score(y, pred)
    assert m["ua"] == pytest.approx(expected_ua)
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro", labels=[0, 1, 2, 3]))
    assert np.isfinite(m["wa"]) and np.isfinite(m["ua"]) and np.isfinite(m["macro_f1"])
    assert unweighted_average_recall(y, pred, 4) == pytest.approx(expected_ua)


def test_row_normalise_handles_empty_rows() -> None:
    cm = np.array([[2, 2], [0, 0]])
    assert row_normalise(cm).tolist() == [[0.5, 0.5], [0.0, 0.0]]


def test_out_of_range_labels_are_rejected() -> None:
    with pytest.raises(ConfigError, match="labels"):
        confusion([0, 5], [0, 1], 4)


def test_aggregate_pooled_and_mean_std_are_different_and_named() -> None:
    folds, pooled = [], np.zeros((4, 4), dtype=np.int64)
    all_y, all_p = [], []
    for seed, n in ((0, 20), (1, 60), (2, 40)):
        y, p = random_predictions(seed, n)
        folds.append(score(y, p, CLASSES))
        pooled += confusion(y, p, 4)
        all_y.append(y)
        all_p.append(p)
    agg = aggregate(folds, pooled, CLASSES)
    y, p = np.concatenate(all_y), np.concatenate(all_p)
    assert agg["pooled"]["ua"] == pytest.approx(balanced_accuracy_score(y, p))
    assert agg["pooled"]["wa"] == pytest.approx(accuracy_score(y, p))
    uas = [f["ua"] for f in folds]
    assert agg["mean"]["ua"] == pytest.approx(np.mean(uas))
    assert agg["std"]["ua"] == pytest.approx(np.std(uas, ddof=1))
    assert agg["n_folds"] == 3


def test_compare_folds_matches_scipy() -> None:
    a = [0.61, 0.55, 0.70, 0.64, 0.59, 0.66]
    b = [0.58, 0.50, 0.69, 0.60, 0.52, 0.61]
    out = compare_folds(a, b)
    assert out["t_pvalue"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert out["wilcoxon_pvalue"] == pytest.approx(stats.wilcoxon(a, b).pvalue)
    assert out["mean_diff"] == pytest.approx(np.mean(np.subtract(a, b)))
    same = compare_folds(a, a)
    assert same["t_pvalue"] is None and same["wilcoxon_pvalue"] is None
    with pytest.raises(ConfigError, match="folds"):
        compare_folds(a, b[:3])
