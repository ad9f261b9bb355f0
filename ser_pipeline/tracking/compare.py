"""Reading parent and fold runs back: side-by-side rows and paired tests over folds."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

import mlflow  # noqa: E402
import pandas as pd  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

from typing import Any  # noqa: E402

from ser_pipeline.errors import TrackingError  # noqa: E402
from ser_pipeline.metrics import compare_folds  # noqa: E402
from ser_pipeline.tracking.runs import client_for  # noqa: E402
from ser_pipeline.tracking.uri import check_reachable, default_tracking_uri  # noqa: E402


def list_experiments(uri: str | None = None) -> list[str]:
    """Names of the active MLflow experiments in the store."""
    uri = uri or default_tracking_uri()
    check_reachable(uri)
    return sorted(e.name for e in client_for(uri).search_experiments() if e.name != "Default")


def compare_runs(experiment: str, *, uri: str | None = None) -> list[dict[str, Any]]:
    """One row per finished parent run of ``experiment``: name, model, UA/WA/F1 (mean ± std and pooled),
    folds, protocol, speaker-dependent flag, run id; sorted by mean UA, best first."""
    uri = uri or default_tracking_uri()
    check_reachable(uri)
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"MLflow experiment {experiment!r} not found at {uri}")
    runs = client.search_runs([found.experiment_id], filter_string="tags.`ser.kind` = 'parent' "
                              "and attributes.status = 'FINISHED'", max_results=1000)
    rows = [compare_row(run.info.run_name, run.info.run_id, run.data.metrics, run.data.tags) for run in runs]
    return sorted(rows, key=lambda r: -(r["ua"] if r["ua"] is not None else -1.0))


def compare_row(name: str, run_id: str, metrics: dict[str, float], tags: dict[str, str]) -> dict[str, Any]:
    """A comparison-table row from a parent run's metrics and tags."""
    def pick(key: str) -> float | None:
        return metrics.get(f"mean_{key}")

    return {
        "run": name,
        "model": tags.get("ser.model", ""),
        "ua": pick("ua"),
        "ua_std": metrics.get("std_ua"),
        "wa": pick("wa"),
        "f1": pick("macro_f1"),
        "pooled_ua": metrics.get("pooled_ua"),
        "folds": int(metrics.get("n_folds", 0)),
        "protocol": tags.get("ser.protocol", ""),
        "speaker_dependent": tags.get("ser.speaker_dependent", "false") == "true",
        "run_id": run_id,
    }


def fold_scores(experiment: str, run: str, *, metric: str = "ua", uri: str | None = None) -> dict[str, float]:
    """``{fold: metric}`` from the nested fold runs of the parent run named (or with id) ``run``."""
    uri = uri or default_tracking_uri()
    client = client_for(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"MLflow experiment {experiment!r} not found at {uri}")
    parents = [r for r in client.search_runs([found.experiment_id], "tags.`ser.kind` = 'parent'", max_results=1000)
               if run in (r.info.run_name, r.info.run_id)]
    if not parents:
        names = sorted({r.info.run_name for r in client.search_runs([found.experiment_id], "tags.`ser.kind` = 'parent'")})
        raise TrackingError(f"run {run!r} not found in experiment {experiment!r}; runs: {', '.join(names)}")
    parent = max(parents, key=lambda r: r.info.start_time)
    children = client.search_runs(
        [found.experiment_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000)
    return {c.data.tags.get("ser.fold", c.info.run_name): float(c.data.metrics[metric])
            for c in children if metric in c.data.metrics}


def paired_test(a: dict[str, float], b: dict[str, float]) -> dict[str, Any]:
    """Paired t-test and Wilcoxon signed-rank test over the folds both runs share
    (:func:`ser_pipeline.metrics.compare_folds`); a p-value is 1.0 when the folds do not differ."""
    folds = sorted(set(a) & set(b))
    if len(folds) < 2:
        raise TrackingError(f"paired tests need at least 2 shared folds; shared: {folds}")
    xa, xb = [a[f] for f in folds], [b[f] for f in folds]
    tests = compare_folds(xa, xb)
    same = all(x == y for x, y in zip(xa, xb, strict=True))
    fallback = 1.0 if same else float("nan")
    return {"folds": folds, "mean_a": sum(xa) / len(xa), "mean_b": sum(xb) / len(xb),
            "mean_diff": tests["mean_diff"],
            "t_test_p": tests["t_pvalue"] if tests["t_pvalue"] is not None else fallback,
            "wilcoxon_p": tests["wilcoxon_pvalue"] if tests["wilcoxon_pvalue"] is not None else fallback}
