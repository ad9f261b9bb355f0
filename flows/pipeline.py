"""Prefect flow ``pipeline``: ingest -> featurize -> train -> track, the whole DAG (``ser run``).

``stages`` picks the stages to run (``--stage`` / ``--from``); the others read their inputs from
disk (manifest digests). ``force`` names stages to recompute even when cached; their dependents
recompute only when the forced stage's output digest changes. A summary of every stage (status
``computed`` / ``cached`` / ``failed``) and the comparison rows is written to
``<root>/runs/last_run.json`` before the flow ends, so a failed model never hides the others.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from prefect import flow

from flows.featurize import manifests_on_disk, run_featurize
from flows.ingest import run_ingest
from flows.train import raise_failures, run_train
from ser_pipeline.pipeline.config import STAGES, check_config
from ser_pipeline.tracking.uri import default_tracking_uri
from ser_pipeline.workspace import Workspace

COMPARE_KEYS = ("label", "run_name", "model", "corpus", "seed", "ua", "ua_std", "wa", "macro_f1", "pooled_ua", "folds",
                "protocol", "speaker_dependent", "experiment_dir", "status")


def comparison_rows(trained: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Side-by-side rows (best mean UA first) from the train stage results; failed models last."""
    rows = [{k: r.get(k) for k in (*COMPARE_KEYS, "error")} for r in trained]
    return sorted(rows, key=lambda r: (r["status"] == "failed", -(r["ua"] or 0.0)))


def last_run_path(root: str) -> Path:
    return Path(root) / "runs" / "last_run.json"


@flow(name="pipeline", log_prints=True)
def pipeline_flow(config: str, root: str | None = None, stages: list[str] | None = None,
                  force: list[str] | None = None, tracking_uri: str | None = None) -> dict[str, Any]:
    """Run ``stages`` (default all) of the YAML experiment config ``config`` on workspace ``root``."""
    start = time.perf_counter()
    cfg, planned = check_config(config)
    root_ = str(Workspace.resolve(root).root)
    plan = list(stages or STAGES)
    forced = set(force or [])
    uri = tracking_uri or default_tracking_uri()
    summary: dict[str, Any] = {"config": str(config), "name": cfg.name, "root": root_, "tracking_uri": uri,
                               "stages": plan, "ingest": [], "featurize": [], "train": [], "track": [],
                               "failed": [], "comparison": []}
    try:
        if "ingest" in plan:
            summary["ingest"] = run_ingest(cfg, root_, force="ingest" in forced)
            manifests = {r["corpus"]: r["manifest_digest"] for r in summary["ingest"]}
        else:
            manifests = manifests_on_disk(cfg, root_)
        if "featurize" in plan:
            summary["featurize"] = run_featurize(cfg, root_, manifests, force="featurize" in forced, planned=planned)
        if "train" in plan:
            result = run_train(cfg, root_, manifests, force="train" in forced, force_track="track" in forced, uri=uri,
                               planned=planned)
            summary.update(result)
            summary["comparison"] = comparison_rows(result["train"])
            summary["experiments"] = sorted({r["experiment"] for r in result["train"] if r.get("experiment")})
    finally:
        summary["seconds"] = round(time.perf_counter() - start, 3)
        summary["all_cached"] = all(r.get("status") == "cached" for key in ("ingest", "featurize", "train", "track")
                                    for r in summary[key])
        _write_last(root_, summary)
    raise_failures(summary)
    return summary


def _write_last(root: str, summary: dict[str, Any]) -> None:
    path = last_run_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)
