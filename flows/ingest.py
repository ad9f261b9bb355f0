"""Prefect flow ``ingest``: one cached task per corpus of the experiment config."""

from __future__ import annotations

from typing import Any

from prefect import flow, task

from flows.common import digest_cache_key, outcome
from ser_pipeline.pipeline import stages
from ser_pipeline.pipeline.config import PipelineConfig, load_config
from ser_pipeline.workspace import Workspace


@task(name="ingest-corpus", task_run_name="ingest-{entry[name]}", cache_key_fn=digest_cache_key("ingest"),
      persist_result=True)
def ingest_corpus(entry: dict[str, Any], root: str, key: str, force: bool = False) -> dict[str, Any]:
    """Ingest one corpus entry; returns the manifest digest and path (see :func:`stages.ingest_stage`)."""
    return stages.ingest_stage(entry, root, key=key, force=force)


def run_ingest(config: PipelineConfig, root: str, *, force: bool = False) -> list[dict[str, Any]]:
    """Run the ingest task for every corpus; a failing corpus raises its project error."""
    task_ = ingest_corpus.with_options(refresh_cache=True) if force else ingest_corpus
    results = []
    for corpus in config.corpora:
        entry = corpus.to_dict()
        state = task_(entry, root, stages.ingest_key(entry), force, return_state=True)
        results.append(outcome(state))
    return results


@flow(name="ingest", log_prints=True)
def ingest_flow(config: str, root: str | None = None, force: bool = False) -> list[dict[str, Any]]:
    """Ingest every corpus named in the YAML experiment config ``config``."""
    return run_ingest(load_config(config), str(Workspace.resolve(root).root), force=force)
