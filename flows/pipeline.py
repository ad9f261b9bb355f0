"""Prefect flow ``pipeline``: ingest -> featurize -> train -> track, the whole DAG (``ser run``).

``stages`` picks the stages to run (``--stage`` / ``--from``); the others read their inputs from
disk (manifest digests). ``force`` names stages to recompute even when cached; their dependents
recompute only when the forced stage's output digest changes. A summary of every stage (status
``computed`` / ``cached`` / ``failed``) and the comparison rows is written to
``<root>/runs/last_run.json`` before the flow ends, so a failed model never hides the others.
"""

from __future__ import annotations

import time
from typing import Any

from prefect import flow

from flows.featurize import manifests_on_disk, run_featurize
from flows.ingest import run_ingest
from flows.train import raise_failures, run_train
from ser_pipeline.pipeline.config import STAGES, check_config
from ser_pipeline.pipeline.summary import all_cached, finish_train, new_summary, write_last
from ser_pipeline.tracking.uri import default_tracking_uri
from ser_pipeline.workspace import Workspace


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
    summary = new_summary(config, cfg, root_, uri, plan)
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
            finish_train(summary)
    finally:
        summary["seconds"] = round(time.perf_counter() - start, 3)
        summary["all_cached"] = all_cached(summary)
        write_last(root_, summary)
    raise_failures(summary)
    return summary
