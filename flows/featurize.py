"""Prefect flow ``featurize``: one cached task per corpus, keyed by manifest + feature + augment digests."""

from __future__ import annotations

import logging
from typing import Any

from prefect import flow, task

from flows.common import digest_cache_key, outcome
from ser_pipeline.pipeline import stages
from ser_pipeline.pipeline.config import PipelineConfig, PlannedExperiment, load_config, plan_experiments
from ser_pipeline.workspace import Workspace


@task(name="featurize-corpus", task_run_name="featurize-{corpus}-{setting[label]}",
      cache_key_fn=digest_cache_key("featurize"), persist_result=True)
def featurize_corpus(corpus: str, root: str, key: str, manifest_digest: str, setting: dict[str, Any],
                     workers: int = 1, force: bool = False) -> dict[str, Any]:
    """Materialise one corpus's feature set (see :func:`stages.featurize_stage`)."""
    for name in ("distributed", "distributed.scheduler", "distributed.nanny", "distributed.core"):
        logging.getLogger(name).setLevel(logging.WARNING)  # Prefect's handler would print Dask's INFO chatter
    return stages.featurize_stage(corpus, root, setting=setting, key=key, manifest_digest=manifest_digest,
                                  workers=workers, force=force)


def manifests_on_disk(config: PipelineConfig, root: str) -> dict[str, str]:
    """``{corpus: manifest digest}`` of already-ingested corpora (``--from featurize``)."""
    return {c.name: stages.manifest_state(c.name, root)["manifest_digest"] for c in config.corpora}


def run_featurize(config: PipelineConfig, root: str, manifests: dict[str, str], *, force: bool = False,
                  planned: list[PlannedExperiment] | None = None) -> list[dict[str, Any]]:
    """Featurize every corpus in ``manifests`` (``{corpus: manifest digest}``) with every feature
    set its models read (the config's preset, or each model's own with ``preset: auto``)."""
    planned = planned if planned is not None else plan_experiments(config)
    task_ = featurize_corpus.with_options(refresh_cache=True) if force else featurize_corpus
    results = []
    for corpus, manifest_digest in manifests.items():
        for setting in stages.feature_settings(planned, corpus):
            key = stages.featurize_key(manifest_digest, setting)
            state = task_(corpus, root, key, manifest_digest, setting, config.workers, force, return_state=True)
            results.append(outcome(state))
    return results


@flow(name="featurize", log_prints=True)
def featurize_flow(config: str, root: str | None = None, force: bool = False) -> list[dict[str, Any]]:
    """Featurize every ingested corpus of the experiment config ``config``."""
    cfg = load_config(config)
    root_ = str(Workspace.resolve(root).root)
    return run_featurize(cfg, root_, manifests_on_disk(cfg, root_), force=force)
