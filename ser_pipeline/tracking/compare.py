"""Reading parent and fold runs back: side-by-side rows and paired tests over folds."""

from __future__ import annotations

import os

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")

from typing import Any  # noqa: E402

from mlflow.tracking import MlflowClient  # noqa: E402

from ser_pipeline.errors import TrackingError  # noqa: E402
from ser_pipeline.metrics import compare_folds  # noqa: E402
from ser_pipeline.tracking.runs import client_for  # noqa: E402
from ser_pipeline.tracking.uri import check_reachable, default_tracking_uri  # noqa: E402


def list_experiments(uri: str | None = None) -> list[str]:
    """Names of the active MLflow experiments in the store."""
    uri = uri or default_tracking_uri()
    check_reachable(uri)
    return sorted(e.name for e in client_for(uri).search_experiments() if e.name != "Default")


SHORT_ID = 12  # the run ids the CLI prints


def _experiment_id(client: MlflowClient, experiment: str, uri: str) -> str:
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise TrackingError(f"MLflow experiment {experiment!r} not found at {uri}")
    return found.experiment_id


def parent_runs(client: MlflowClient, experiment_id: str, *, finished: bool = True) -> list[Any]:
    """The parent runs (one per experiment configuration) of an MLflow experiment, newest first."""
    where = "tags.`ser.kind` = 'parent'" + (" and attributes.status = 'FINISHED'" if finished else "")
    return client.search_runs([experiment_id], filter_string=where, max_results=5000,
                              order_by=["attributes.start_time DESC"])


def _when(run: Any) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(run.info.start_time / 1000).strftime("%Y-%m-%d %H:%M")


def find_parent(runs: list[Any], ref: str, *, experiment: str) -> Any:
    """The parent run that ``ref`` names: a full run id, a short id (a prefix of at least 6
    characters, as the CLI prints them) or a run name. An ambiguous name or prefix raises
    TrackingError listing the candidates (short id, start time, name)."""
    exact = [r for r in runs if r.info.run_id == ref]
    if exact:
        return exact[0]
    matches = [r for r in runs if r.info.run_name == ref]
    if not matches and len(ref) >= 6:
        matches = [r for r in runs if r.info.run_id.startswith(ref)]
    if len(matches) == 1:
        return matches[0]
    if matches:
        listing = "; ".join(f"{r.info.run_id[:SHORT_ID]} ({_when(r)}, {r.info.run_name})" for r in matches)
        raise TrackingError(f"run {ref!r} is ambiguous in experiment {experiment!r}: {len(matches)} runs match: "
                            f"{listing}; give one of these ids")
    names = sorted({r.info.run_name for r in runs})
    raise TrackingError(f"run {ref!r} not found in experiment {experiment!r} (a run name, a run id or its first "
                        f"{SHORT_ID} characters); runs: {', '.join(names) or 'none'}")


def differing_params(params: list[dict[str, str]]) -> list[str]:
    """The param names whose values are not the same in every one of ``params`` (missing counts)."""
    keys = sorted(set().union(*params)) if params else []
    return [k for k in keys if len({p.get(k, "-") for p in params}) > 1 and not k.startswith("features.preset")]


def _short(keys: list[str]) -> dict[str, str]:
    last = [k.split(".")[-1] for k in keys]
    return {k: (k.split(".")[-1] if last.count(k.split(".")[-1]) == 1 else k) for k in keys}


def compare_runs(experiment: str, *, uri: str | None = None, runs: list[str] | None = None,
                 models: list[str] | None = None, new: list[str] | None = None) -> list[dict[str, Any]]:
    """One row per finished parent run of ``experiment`` (or of the runs ``runs`` names; or of the
    models ``models``): name, model, UA/WA/F1 (mean ± std and pooled), folds, protocol,
    speaker-dependent flag, run id, ``differs`` (the params that differ between the rows) and
    ``new`` (the run id is in ``new``); sorted by mean UA, best first."""
    uri = uri or default_tracking_uri()
    check_reachable(uri)
    client = client_for(uri)
    exp_id = _experiment_id(client, experiment, uri)
    found = parent_runs(client, exp_id)
    if runs:
        found = [find_parent(found, ref, experiment=experiment) for ref in runs]
    if models:
        found = [r for r in found if r.data.tags.get("ser.model") in models]
    varying = differing_params([r.data.params for r in found]) if len(found) > 1 else []
    short = _short(varying)
    rows = []
    for run in found:
        row = compare_row(run.info.run_name, run.info.run_id, run.data.metrics, run.data.tags)
        row["differs"] = ", ".join(f"{short[k]}={run.data.params.get(k, '-')}" for k in varying)
        row["new"] = run.info.run_id in (new or [])
        row["started"] = _when(run)
        rows.append(row)
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
        "macro_f1": pick("macro_f1"),
        "pooled_ua": metrics.get("pooled_ua"),
        "folds": int(metrics.get("n_folds", 0)),
        "protocol": tags.get("ser.protocol", ""),
        "speaker_dependent": tags.get("ser.speaker_dependent", "false") == "true",
        "run_id": run_id,
    }


def fold_scores(experiment: str, run: str, *, metric: str = "ua", uri: str | None = None) -> dict[str, float]:
    """``{fold: metric}`` from the nested fold runs of the parent run ``run`` names
    (:func:`find_parent`: a name, a full id or a short id)."""
    uri = uri or default_tracking_uri()
    client = client_for(uri)
    exp_id = _experiment_id(client, experiment, uri)
    parent = find_parent(parent_runs(client, exp_id, finished=False), run, experiment=experiment)
    children = client.search_runs(
        [exp_id], f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=1000)
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
