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
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
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


@dataclass(frozen=True)
class StageItem:
    """One item a run of the pipeline touches: its stage, a label, and its stage record when the
    item is done (None when it has work left, cannot be known yet, or is forced)."""

    stage: str
    item: str
    record: dict[str, Any] | None
    extra: dict[str, Any] = field(default_factory=dict)  # train items: the MLflow experiment and the key


def _manifest_digest(corpus: str, root: str) -> str | None:
    try:
        return str(stages.manifest_state(corpus, root)["manifest_digest"])
    except SerError:
        return None


def stage_items(cfg: PipelineConfig, planned: list[PlannedExperiment], root: str, *, plan: list[str], uri: str,
                forced: Sequence[str] = ()) -> Iterator[StageItem]:
    """Every item of a run of ``plan``, in stage order, with its record from the stage records
    (``ser run --check`` prints them; a fully cached run is summarised from them). An item whose
    inputs are not known yet (its corpus not ingested) has no record; each trained model is
    followed by its ``track`` item under ``uri``."""
    manifests: dict[str, str | None] = {}
    for corpus in cfg.corpora:
        done = None if "ingest" in forced else done_record(root, "ingest", stages.ingest_key(corpus.to_dict()))
        if "ingest" in plan:
            yield StageItem("ingest", corpus.name, done)
        manifests[corpus.name] = _manifest_digest(corpus.name, root) if done or "ingest" not in plan else None
    if "featurize" in plan:
        for corpus, digest in manifests.items():
            for setting in stages.feature_settings(planned, corpus):
                record = None if digest is None or "featurize" in forced else done_record(
                    root, "featurize", stages.featurize_key(digest, setting))
                yield StageItem("featurize", f"{corpus} {setting['label']}", record)
    if "train" not in plan:
        return
    for p in planned:
        digest = manifests.get(p.corpus)
        key = stages.train_key(digest, p) if digest is not None else None
        record = None if key is None or "train" in forced else done_record(root, "train", key)
        yield StageItem("train", f"{p.label} ({p.corpus}, seed {p.config.seed})", record,
                        {"experiment": experiment_name(cfg, p.corpus), "key": key})
        tracked = None if key is None or {"train", "track"} & set(forced) else read_record(
            root, "track", stages.track_key(key, uri, cfg.register))
        yield StageItem("track", p.label, tracked)


def cached_run_summary(config: str, cfg: PipelineConfig, planned: list[PlannedExperiment], root: str, *,
                       plan: list[str], uri: str) -> dict[str, Any] | None:
    """The summary of a run of ``plan`` when every one of its items is done (records present, outputs
    on disk, every trained model tracked under ``uri``), else None. Same keys and rows as the flow's."""
    start = time.perf_counter()
    items = list(stage_items(cfg, planned, root, plan=plan, uri=uri))
    if any(item.record is None for item in items):
        return None
    summary = new_summary(config, cfg, root, uri, plan)
    for item in items:
        summary[item.stage].append({**cached(item.record or {}), **item.extra})
    if "train" in plan:
        finish_train(summary)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["all_cached"] = True
    summary["orchestrator"] = "none: every stage cached (read from the stage records; no Prefect flow started)"
    write_last(root, summary)
    return summary
