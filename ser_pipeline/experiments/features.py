"""Featurizing for experiments: the one featurize call used by ``ser featurize``, the pipeline's
featurize stage and the runner (one rule for when to start Dask).

``feature_store`` is a peer library (it imports only ``ser_pipeline``'s features, audio and
augmentation modules), so importing it here makes no cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from feature_store.materialise import DEFAULT_BATCH_SIZE, MaterialiseReport, dask_client, materialise, plan, variant_list
from feature_store.store import FeatureSet, FeatureStore
from ser_pipeline.augment import AugmentSpec, parse_augment
from ser_pipeline.errors import StoreError
from ser_pipeline.features import FeatureSpec


def needs_cluster(todo: int, *, workers: int | None, dask_address: str | None, batch_size: int) -> bool:
    """Start (or join) a Dask cluster only when there is more than one task's work and either an
    address is given or more than one worker is allowed (None: one per CPU)."""
    if dask_address:
        return todo > 0
    return todo > batch_size and workers != 1


def featurize(manifest: pd.DataFrame, spec: FeatureSpec, augment: AugmentSpec, store: FeatureStore, *,
              manifest_name: str, manifest_digest: str, workers: int | None = 1, dask_address: str | None = None,
              batch_size: int = DEFAULT_BATCH_SIZE, force: bool = False, progress: bool = False
              ) -> tuple[MaterialiseReport, str]:
    """Materialise every missing item of ``manifest`` x ``augment`` under ``spec``.

    Returns the report and the executor used (``in-process`` or the cluster's description).
    """
    store.ensure_writable()
    fset = store.open_set(spec, create=True)
    work, _ = plan(manifest, variant_list(augment), fset.key_set(), force=force)
    todo = sum(len(w.variants) for w in work)
    options = {"manifest_name": manifest_name, "manifest_digest": manifest_digest, "batch_size": batch_size,
               "force": force, "progress": progress}
    if not needs_cluster(todo, workers=workers, dask_address=dask_address, batch_size=batch_size):
        return materialise(manifest, spec, augment, store, **options), "in-process"
    with dask_client(workers, dask_address) as client:
        report = materialise(manifest, spec, augment, store, client=client, **options)
    return report, dask_address or f"LocalCluster({workers or 'auto'})"


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
