"""Prefect flow ``train``: one task per model configuration (and seed), then one tracking task each.

Fan-out: with N visible GPUs, up to N training tasks run at once, each pinned to its own device
(``cuda:i``); on a CPU-only machine they run one after another. A model that fails does not stop
the others: its failure is collected, every other model is trained and tracked, and the flow then
ends failed with a :class:`TrainingError` naming the failed model(s).
Tracking retries transient failures (an MLflow server briefly unreachable) with exponential back-off.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.tasks import exponential_backoff

from flows.common import digest_cache_key, outcome, retry_on_tracking_error
from ser_pipeline.errors import TrainingError
from ser_pipeline.pipeline import stages
from ser_pipeline.pipeline.config import (
    PipelineConfig,
    PlannedExperiment,
    experiment_name,
    load_config,
    plan_experiments,
)
from ser_pipeline.pipeline.records import is_done, read_record
from ser_pipeline.tracking.uri import check_reachable, default_tracking_uri
from ser_pipeline.workspace import Workspace

TRACK_RETRIES = 3


@task(name="train-model", task_run_name="train-{exp[_label]}-{exp[corpus]}-s{exp[seed]}",
      cache_key_fn=digest_cache_key("train"), persist_result=True)
def train_model(exp: dict[str, Any], root: str, key: str, manifest_digest: str, device: str = "auto",
                force: bool = False) -> dict[str, Any]:
    """Train one experiment (every fold) on ``device``; returns paths, digests and summary metrics.
    Progress: one log line per fold and epoch (train/val loss, val UA)."""
    logger = get_run_logger()

    def progress(fold: str, epoch: int, metrics: dict[str, float]) -> None:
        shown = "  ".join(f"{k} {v:.3f}" for k, v in metrics.items() if isinstance(v, float))
        logger.info("%s %s epoch %d: %s", exp["_label"], fold, epoch, shown)

    return stages.train_stage(exp, root, key=key, manifest_digest=manifest_digest, device=device, force=force,
                              on_epoch_end=progress)


@task(name="track-model", task_run_name="track-{trained[label]}", cache_key_fn=digest_cache_key("track"),
      persist_result=True, retries=TRACK_RETRIES, retry_delay_seconds=exponential_backoff(backoff_factor=2),
      retry_condition_fn=retry_on_tracking_error)
def track_model(trained: dict[str, Any], root: str, key: str, experiment: str, uri: str, register: bool = True,
                force: bool = False) -> dict[str, Any]:
    """Log one experiment directory to MLflow (idempotent by config digest)."""
    return stages.track_stage(trained, root, key=key, experiment=experiment, uri=uri, register=register,
                              force=force)


def visible_devices(requested: str = "auto") -> list[str]:
    """``["cuda:0", ...]`` for each visible GPU with ``auto`` (``CUDA_VISIBLE_DEVICES`` applies),
    else ``[requested]`` (``cpu``, or one named device)."""
    if requested != "auto":
        return [requested]
    import torch  # only when something must train: a fully cached run never needs it

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    return [f"cuda:{i}" for i in range(count)] or ["cpu"]


def plan_jobs(config: PipelineConfig, manifests: dict[str, str],
              planned: list[PlannedExperiment] | None = None) -> list[dict[str, Any]]:
    """One job per (corpus, model configuration, seed): the experiment dict and its key."""
    planned = planned if planned is not None else plan_experiments(config)
    return [{"exp": p.exp, "manifest_digest": manifests[p.corpus], "key": stages.train_key(manifests[p.corpus], p),
             "experiment": experiment_name(config, p.corpus)} for p in planned if p.corpus in manifests]


def _train_all(jobs: list[dict[str, Any]], root: str, *, force: bool, devices: list[str]) -> list[dict[str, Any]]:
    task_ = train_model.with_options(refresh_cache=True) if force else train_model
    results: list[dict[str, Any]] = []
    width = len(devices)
    for start in range(0, len(jobs), width):
        batch = jobs[start:start + width]
        if width == 1:
            states = [task_(j["exp"], root, j["key"], j["manifest_digest"], devices[0], force,
                            return_state=True) for j in batch]
        else:
            futures = [task_.submit(j["exp"], root, j["key"], j["manifest_digest"], device, force)
                       for j, device in zip(batch, devices, strict=False)]
            for future in futures:
                future.wait()
            states = [future.state for future in futures]
        for job, state in zip(batch, states, strict=True):
            try:
                results.append({**outcome(state), "experiment": job["experiment"], "key": job["key"]})
            except Exception as exc:  # noqa: BLE001 - one failing model never sinks the others
                results.append({**stages.failure(job["exp"]["_label"], exc), "corpus": job["exp"]["corpus"],
                                "experiment": job["experiment"]})
    return results


def _track_all(trained: list[dict[str, Any]], root: str, *, uri: str, register: bool,
               force: bool) -> list[dict[str, Any]]:
    task_ = track_model.with_options(refresh_cache=True) if force else track_model
    results = []
    for row in trained:
        if row["status"] == "failed":
            continue
        key = stages.track_key(row["key"], uri, register)
        state = task_(row, root, key, row["experiment"], uri, register, force, return_state=True)
        try:
            results.append(outcome(state))
        except Exception as exc:  # noqa: BLE001 - keep every other result
            results.append({"stage": "track", "label": row.get("label"), "status": "failed", "error": str(exc)})
    return results


def needs_tracking(trained: list[dict[str, Any]], root: str, *, uri: str, register: bool) -> bool:
    """True when some trained model has no track record yet (then the store is checked before training)."""
    return any(row.get("status") != "failed" and read_record(root, "track", stages.track_key(row["key"], uri, register)) is None
               for row in trained)


def run_train(config: PipelineConfig, root: str, manifests: dict[str, str], *, force: bool = False,
              force_track: bool = False, uri: str | None = None, track: bool = True,
              planned: list[PlannedExperiment] | None = None) -> dict[str, Any]:
    """Train every job, then track every success. Returns ``{"train": [...], "track": [...], "failed": [...]}``.

    Before any training, an unreachable tracking store fails fast (unless everything is already
    tracked, which keeps a fully cached run free of the mlflow import).
    """
    uri = uri or default_tracking_uri()
    jobs = plan_jobs(config, manifests, planned)
    if track and (force or force_track or needs_tracking(
            [{"key": j["key"]} for j in jobs], root, uri=uri, register=config.register)):
        check_reachable(uri)
    pending = force or any(not is_done(root, "train", j["key"]) for j in jobs)
    trained = _train_all(jobs, root, force=force, devices=visible_devices(config.device) if pending else ["cpu"])
    tracked = _track_all(trained, root, uri=uri, register=config.register, force=force or force_track) if track else []
    failed = [r for r in trained + tracked if r["status"] == "failed"]
    return {"train": trained, "track": tracked, "failed": failed}


def raise_failures(result: dict[str, Any]) -> None:
    """End the flow failed, naming each failed model, after every other result was kept."""
    if result["failed"]:
        names = "; ".join(f"{r.get('label')} ({r.get('stage')}): {r.get('error')}" for r in result["failed"])
        raise TrainingError(f"{len(result['failed'])} model(s) failed: {names}")


@flow(name="train", log_prints=True)
def train_flow(config: str, root: str | None = None, force: bool = False,
               tracking_uri: str | None = None) -> dict[str, Any]:
    """Train and track every model of the experiment config on its already-featurized corpora."""
    from flows.featurize import manifests_on_disk

    cfg = load_config(config)
    root_ = str(Workspace.resolve(root).root)
    result = run_train(cfg, root_, manifests_on_disk(cfg, root_), force=force, uri=tracking_uri)
    raise_failures(result)
    return result
