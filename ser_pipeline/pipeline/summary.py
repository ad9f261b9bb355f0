"""The pipeline run's summary: comparison rows, ``<root>/runs/last_run.json``, and the summary of a
run whose every stage is already done, read straight from the stage records.

A fully cached ``ser run`` has nothing to orchestrate: :func:`cached_run_summary` returns the same
summary the Prefect flow would (every row ``cached``, the comparison table) from the records the
stages wrote, without starting Prefect. Any stage with work left (or a forced one) returns None and
the run goes through the flow.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ser_pipeline.errors import SerError
from ser_pipeline.pipeline import stages
from ser_pipeline.pipeline.config import PipelineConfig, PlannedExperiment, experiment_name
from ser_pipeline.pipeline.records import cached, done_record, read_record

COMPARE_KEYS = ("label", "run_name", "model", "corpus", "seed", "ua", "ua_std", "wa", "macro_f1", "pooled_ua", "folds",
                "protocol", "speaker_dependent", "experiment_dir", "status")
SUMMARY_STAGES = ("ingest", "featurize", "train", "track")


def comparison_rows(trained: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Side-by-side rows (best mean UA first) from the train stage results; failed models last."""
    rows = [{k: r.get(k) for k in (*COMPARE_KEYS, "error")} for r in trained]
    return sorted(rows, key=lambda r: (r["status"] == "failed", -(r["ua"] or 0.0)))


def new_summary(config: str, cfg: PipelineConfig, root: str, uri: str, plan: list[str]) -> dict[str, Any]:
    """An empty summary: config, name, root, tracking URI, stages, one list per stage."""
    return {"config": str(config), "name": cfg.name, "root": root, "tracking_uri": uri, "stages": list(plan),
            **{stage: [] for stage in SUMMARY_STAGES}, "failed": [], "comparison": []}


def finish_train(summary: dict[str, Any]) -> None:
    """The comparison rows and the MLflow experiments of the train rows."""
    summary["comparison"] = comparison_rows(summary["train"])
    summary["experiments"] = sorted({r["experiment"] for r in summary["train"] if r.get("experiment")})


def all_cached(summary: dict[str, Any]) -> bool:
    return all(r.get("status") == "cached" for key in SUMMARY_STAGES for r in summary[key])


def last_run_path(root: str) -> Path:
    return Path(root) / "runs" / "last_run.json"


def write_last(root: str, summary: dict[str, Any]) -> None:
    """``<root>/runs/last_run.json`` (atomically)."""
    path = last_run_path(root)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(summary, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def cached_run_summary(config: str, cfg: PipelineConfig, planned: list[PlannedExperiment], root: str, *,
                       plan: list[str], uri: str) -> dict[str, Any] | None:
    """The summary of a run of ``plan`` when every one of its stages is done (records present, outputs
    on disk, every trained model tracked under ``uri``), else None. Same keys and rows as the flow's."""
    start = time.perf_counter()
    summary = new_summary(config, cfg, root, uri, plan)
    manifests: dict[str, str] = {}
    for corpus in cfg.corpora:
        done = done_record(root, "ingest", stages.ingest_key(corpus.to_dict()))
        if "ingest" in plan:
            if done is None:
                return None
            summary["ingest"].append(cached(done))
            manifests[corpus.name] = done["manifest_digest"]
        else:
            try:
                manifests[corpus.name] = stages.manifest_state(corpus.name, root)["manifest_digest"]
            except SerError:
                return None
    if "featurize" in plan:
        for corpus, digest in manifests.items():
            for setting in stages.feature_settings(planned, corpus):
                done = done_record(root, "featurize", stages.featurize_key(digest, setting))
                if done is None:
                    return None
                summary["featurize"].append(cached(done))
    if "train" in plan:
        for p in planned:
            if p.corpus not in manifests:
                continue
            key = stages.train_key(manifests[p.corpus], p)
            done = done_record(root, "train", key)
            tracked = read_record(root, "track", stages.track_key(key, uri, cfg.register))
            if done is None or tracked is None:
                return None
            summary["train"].append({**cached(done), "experiment": experiment_name(cfg, p.corpus), "key": key})
            summary["track"].append(cached(tracked))
        finish_train(summary)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["all_cached"] = True
    summary["orchestrator"] = "none: every stage cached (read from the stage records; no Prefect flow started)"
    write_last(root, summary)
    return summary
