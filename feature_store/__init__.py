"""The offline feature store: Zarr v3 feature sets keyed by FeatureSpec digest, computed with Dask.

Public API::

    FeatureStore(path)                      .open_set(spec, create=False) / .get_set(digest) / .list_sets()
                                            .derived(feature_digest, checkpoint_digest)
    FeatureSet                              .read(sha256, variant) -> (C, F, T) float32, .read_many(keys),
                                            .has(sha256, variant), .index(), .spec, .digest, .lineage()
    DerivedSet                              .write({(utterance_id, variant): array}), .read(...), .has(...)
    materialise(manifest, spec, augment, store, *, client=None, ...) -> MaterialiseReport
    dask_client(workers, address)           context manager
    verify(store) -> dict, gc(store, keep_digests=None, dry_run=True) -> dict
"""

from feature_store.maintenance import gc, verify
from feature_store.materialise import MaterialiseReport, dask_client, materialise
from feature_store.store import DerivedSet, FeatureSet, FeatureStore

__all__ = [
    "DerivedSet",
    "FeatureSet",
    "FeatureStore",
    "MaterialiseReport",
    "dask_client",
    "gc",
    "materialise",
    "verify",
]
