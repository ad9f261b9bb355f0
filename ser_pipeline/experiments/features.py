"""Featurizing for experiments: the one featurize call used by ``ser featurize``, the pipeline's
featurize stage and the runner (one rule for when to start Dask).

``feature_store`` is a peer library (it imports only ``ser_pipeline``'s features, audio and
augmentation modules), so importing it here makes no cycle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import pandas as pd

from feature_store.materialise import (
    DEFAULT_BATCH_SIZE,
    MaterialiseReport,
    dask_client,
    materialise,
    plan,
    variant_list,
)
from feature_store.store import FeatureSet, FeatureStore
from ser_pipeline.augment import AugmentSpec, parse_augment
from ser_pipeline.errors import StoreError
from ser_pipeline.extractors import resolve_backend
from ser_pipeline.features import FeatureSpec

SMALL_JOB_ITEMS = 4000  # below this, local worker processes beat starting a Dask cluster (~1.7-5 s)


@dataclass(frozen=True)
class Executor:
    """Where featurize computes: ``kind`` is ``in-process`` (one thread), ``processes`` (``processes``
    local worker processes forked from a fork server) or ``cluster`` (Dask)."""

    kind: str
    processes: int = 1

    def describe(self, workers: int | None, dask_address: str | None) -> str:
        if self.kind == "cluster":
            return dask_address or f"LocalCluster({workers or 'auto'})"
        return "in-process" if self.kind == "in-process" else f"{self.processes} local processes"


def choose_executor(todo: int, *, workers: int | None, dask_address: str | None, batch_size: int,
                    backend: str = "numpy") -> Executor:
    """One rule for where to compute ``todo`` items.

    - an address (``--dask-address`` / ``SER_DASK_ADDRESS``): that cluster;
    - the torch backend, one worker, or at most one task's work: this process, one thread (torch
      parallelises inside its own ops; one task cannot be split);
    - up to :data:`SMALL_JOB_ITEMS` items: local worker processes (``workers``, else one per CPU)
      forked from a fork server: no cluster start-up, which costs more than the job on small
      corpora (threads in this process were tried until stop 24: on 2 cores two ran no faster than
      one, the GIL);
    - more: a local Dask cluster with ``workers`` workers.
    """
    if dask_address:
        return Executor("cluster") if todo > 0 else Executor("in-process")
    if backend == "torch" or workers == 1 or todo <= batch_size:
        return Executor("in-process")
    processes = workers or os.cpu_count() or 1
    if processes == 1:
        return Executor("in-process")
    if todo <= SMALL_JOB_ITEMS:
        return Executor("processes", processes)
    return Executor("cluster")


def featurize(manifest: pd.DataFrame, spec: FeatureSpec, augment: AugmentSpec, store: FeatureStore, *,
              manifest_name: str, manifest_digest: str, workers: int | None = 1, dask_address: str | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE, force: bool = False, progress: bool = False,
              backend: str = "numpy") -> tuple[MaterialiseReport, str]:
    """Materialise every missing item of ``manifest`` x ``augment`` under ``spec``.

    Returns the report and the executor used (``in-process``, ``N local processes`` or the cluster's
    description).
    """
    store.ensure_writable()
    backend = resolve_backend(backend)
    fset = store.open_set(spec, create=True)
    work, _ = plan(manifest, variant_list(augment), fset.key_set(), force=force)
    todo = sum(len(w.variants) for w in work)
    options = {"manifest_name": manifest_name, "manifest_digest": manifest_digest, "batch_size": batch_size,
               "force": force, "progress": progress, "backend": backend}
    executor = choose_executor(todo, workers=workers, dask_address=dask_address, batch_size=batch_size, backend=backend)
    if executor.kind != "cluster":
        report = materialise(manifest, spec, augment, store, processes=executor.processes, **options)
        return report, executor.describe(workers, dask_address)
    with dask_client(workers, dask_address) as client:
        report = materialise(manifest, spec, augment, store, client=client, **options)
    return report, executor.describe(workers, dask_address)


def failures(report: MaterialiseReport) -> dict[str, str]:
    """``{utterance_id: "<variant>: <reason>"}`` of a report's failed items."""
    return {u: f"{v}: {r}" for u, v, r in report.failed}


@dataclass
class ExperimentFeatures:
    """The feature set an experiment reads, and the utterances left out (with reasons)."""

    store: FeatureStore
    feature_set: FeatureSet
    spec: FeatureSpec
    variants: tuple[str, ...]
    failed: dict[str, str] = field(default_factory=dict)


def ensure_features(manifest: pd.DataFrame, spec: FeatureSpec, augment: str, store: FeatureStore,
                    train_ids: set[str], *, manifest_name: str, manifest_digest: str) -> ExperimentFeatures:
    """Materialise ``orig`` for every utterance and the augmentation variants for training
    utterances only (in process; the pipeline's featurize stage has usually done it already)."""
    variants = parse_augment(augment).variants
    report, _ = featurize(manifest, spec, parse_augment("orig"), store, manifest_name=manifest_name,
                          manifest_digest=manifest_digest)
    failed = failures(report)
    if any(v != "orig" for v in variants):
        sub = manifest[manifest["utterance_id"].isin(train_ids) & ~manifest["utterance_id"].isin(failed)]
        more, _ = featurize(sub, spec, parse_augment(augment), store, manifest_name=manifest_name,
                            manifest_digest=manifest_digest)
        failed.update(failures(more))
    if len(failed) == len(manifest):
        raise StoreError(f"manifest {manifest_name}: no utterance has features; first failures: "
                         f"{sorted(failed.items())[:3]}")
    return ExperimentFeatures(store, store.open_set(spec), spec, tuple(variants), failed)
