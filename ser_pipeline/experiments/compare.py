"""Comparing two finished experiments on the folds they share (paired tests from
:func:`ser_pipeline.metrics.compare_folds`, the one implementation)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from ser_pipeline.errors import StoreError
from ser_pipeline.experiments.record import ExperimentRecord
from ser_pipeline.metrics import compare_folds

log = logging.getLogger(__name__)


def compare_experiments(a_dir: str | Path, b_dir: str | Path, *, metric: str = "ua") -> dict[str, Any]:
    """Paired t-test and Wilcoxon signed-rank test over the folds two experiments share."""
    fa = ExperimentRecord.read(a_dir).fold_scores(metric)
    fb = ExperimentRecord.read(b_dir).fold_scores(metric)
    shared = sorted(set(fa) & set(fb))
    if not shared:
        raise StoreError(f"experiments {a_dir} and {b_dir} share no folds")
    if set(fa) != set(fb):
        log.warning("comparing only the %d shared folds", len(shared))
    return {"metric": metric, "folds": shared, "a": str(a_dir), "b": str(b_dir),
            **compare_folds([fa[f] for f in shared], [fb[f] for f in shared])}
