"""The feature store: feature sets keyed by FeatureSpec digest, derived sets, and their catalog.

See :mod:`feature_store.layout` for the folders and the commit protocol. Reading never needs a lock:
the index of a set is the union of its committed batches (latest batch wins for a repeated key).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import importlib.metadata
import platform
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import zarr

from feature_store.layout import (
    BATCHES,
    DERIVED,
    MANIFESTS,
    META,
    SETS,
    check_writable,
    create_if_absent,
    dir_bytes,
    group_meta,
    read_json,
)
from feature_store.writer import FaultHook, write_derived_batch, write_feature_batch
from ser_pipeline.errors import StoreError
from ser_pipeline.features import FeatureSpec

if TYPE_CHECKING:  # imported where used: keeps pandas out of Dask workers
    import pandas as pd

STORE_FORMAT = "1"
LIBRARIES = ("numpy", "scipy", "librosa", "soxr", "soundfile", "zarr", "numcodecs")
INDEX_COLUMNS = ["sha256", "variant", "utterance_id", "frames", "duration_s", "checksum", "batch", "offset"]


def library_versions() -> dict[str, str]:
    """Installed versions of the libraries that shape the stored numbers."""
    out = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def code_version() -> str:
    """``<package version>+features<FeatureSpec.CODE_VERSION>+store<STORE_FORMAT>``."""
    try:
        pkg = importlib.metadata.version("ser-pipeline")
    except importlib.metadata.PackageNotFoundError:
        pkg = "0"
    return f"{pkg}+features{FeatureSpec.CODE_VERSION}+store{STORE_FORMAT}"


def now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def batch_items(batch_dir: Path) -> list[dict[str, Any]]:
    """The ``items`` attribute of a committed batch (read straight from its ``zarr.json``)."""
    return read_json(batch_dir / META).get("attributes", {}).get("items", [])


def committed_batches(base: Path) -> list[Path]:
    """Committed batch folders under ``base/batches``, oldest first."""
    root = base / BATCHES
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


class _BatchedItems:
    """Shared reading logic of feature and derived sets: an index over committed batches."""

    key_fields: tuple[str, str] = ("sha256", "variant")

    def __init__(self, path: Path) -> None:
        self.path = path
        self._index: dict[tuple[str, str], dict[str, Any]] | None = None
        self._arrays: dict[str, Any] = {}

    def refresh(self) -> None:
        """Forget the cached index (pick up batches committed since)."""
        self._index = None
        self._arrays.clear()

    def _items(self) -> dict[tuple[str, str], dict[str, Any]]:
        if self._index is None:
            index: dict[tuple[str, str], dict[str, Any]] = {}
            for batch in committed_batches(self.path):
                for item in batch_items(batch):
                    index[(item[self.key_fields[0]], item[self.key_fields[1]])] = {**item, "batch": batch.name}
            self._index = index
        return self._index

    def keys(self) -> list[tuple[str, str]]:
        """Every committed key, e.g. ``(sha256, variant)``."""
        return list(self._items())

    def key_set(self) -> Any:
        """A set-like view of the committed keys (fast ``in``)."""
        return self._items().keys()

    def has(self, first: str, variant: str = "orig") -> bool:
        return (first, variant) in self._items()

    def __len__(self) -> int:
        return len(self._items())

    def _item(self, first: str, variant: str) -> dict[str, Any]:
        try:
            return self._items()[(first, variant)]
        except KeyError:
            raise StoreError(f"{self.path}: no item {self.key_fields[0]}={first!r} variant={variant!r}") from None

    def _array(self, batch: str) -> Any:
        if batch not in self._arrays:
            try:
                self._arrays[batch] = zarr.open_array(str(self.path / BATCHES / batch / "data"), mode="r")
            except Exception as exc:  # zarr raises several types for missing/garbled metadata
                raise StoreError(f"{self.path / BATCHES / batch}: unreadable batch ({exc})") from exc
        return self._arrays[batch]


class FeatureSet(_BatchedItems):
    """One feature set (one FeatureSpec digest). Items keyed by (utterance sha256, variant)."""

    def __init__(self, path: Path, spec: FeatureSpec) -> None:
        super().__init__(path)
        self.spec = spec
        self.digest = spec.digest()

    def index(self) -> pd.DataFrame:
        """One row per item: sha256, variant, utterance_id, frames, duration_s, checksum, batch, offset."""
        rows = list(self._items().values())
        import pandas as pd

        return pd.DataFrame(rows, columns=INDEX_COLUMNS) if rows else pd.DataFrame(columns=INDEX_COLUMNS)

    def read(self, sha256: str, variant: str = "orig") -> np.ndarray:
        """Features ``(C, F, T)`` float32 of one item; StoreError names a missing key."""
        item = self._item(sha256, variant)
        start, stop = item["offset"], item["offset"] + item["frames"]
        return np.asarray(self._array(item["batch"])[:, :, start:stop], dtype=np.float32)

    def read_many(self, keys: list[tuple[str, str]]) -> list[np.ndarray]:
        """Bulk read, in ``keys`` order: one contiguous read per batch. Each ``(C, F, T_i)`` float32."""
        items = [self._item(sha, variant) for sha, variant in keys]
        by_batch: dict[str, list[int]] = defaultdict(list)
        for pos, item in enumerate(items):
            by_batch[item["batch"]].append(pos)
        out: list[np.ndarray | None] = [None] * len(items)
        for batch, positions in by_batch.items():
            lo = min(items[p]["offset"] for p in positions)
            hi = max(items[p]["offset"] + items[p]["frames"] for p in positions)
            block = np.asarray(self._array(batch)[:, :, lo:hi], dtype=np.float32)
            for p in positions:
                start = items[p]["offset"] - lo
                out[p] = block[:, :, start : start + items[p]["frames"]].copy()
        return out  # type: ignore[return-value]

    def lineage(self) -> dict[str, Any]:
        """Set attributes (spec, code and library versions, created) plus the manifests served."""
        attrs = read_json(self.path / META).get("attributes", {})
        served = [read_json(p) for p in sorted((self.path / MANIFESTS).glob("*.json"))]
        return {**attrs, "manifests": served}

    def record_manifest(self, name: str, digest: str, variants: list[str]) -> None:
        """Remember that this set served manifest ``name`` at ``digest`` with ``variants``.

        One write-once file per (name, digest, variant list), so concurrent writers never clash and
        a later run asking for other variants of the same manifest adds its own record.
        """
        if not name:
            return
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in name)
        doc = {"name": name, "digest": digest, "variants": list(variants), "served_at": now_iso()}
        variants_key = hashlib.sha256("\n".join(sorted(variants)).encode()).hexdigest()[:8]
        create_if_absent(self.path / MANIFESTS / f"{safe}.{digest or 'nodigest'}.{variants_key}.json", doc)

    def write(self, entries: list[tuple[dict[str, Any], np.ndarray]], *, fault: FaultHook | None = None) -> str:
        """Commit ``(meta, features (C, F, T))`` entries as one batch (see :func:`write_feature_batch`)."""
        batch = write_feature_batch(self.path, entries, dtype=self.spec.dtype, fault=fault)
        self.refresh()
        return batch


class DerivedSet(_BatchedItems):
    """Model-produced arrays (e.g. segment embeddings ``(S, D)``) keyed by (utterance_id, variant)."""

    key_fields = ("utterance_id", "variant")

    def __init__(self, path: Path, feature_digest: str, checkpoint_digest: str) -> None:
        super().__init__(path)
        self.feature_digest = feature_digest
        self.checkpoint_digest = checkpoint_digest

    def write(self, items: dict[tuple[str, str], np.ndarray], *, fault: FaultHook | None = None) -> str:
        """Commit ``{(utterance_id, variant): array of any shape}`` as one batch; returns its id."""
        check_writable(self.path)
        create_if_absent(
            self.path / META,
            group_meta({"feature_digest": self.feature_digest, "checkpoint_digest": self.checkpoint_digest,
                        "created": now_iso(), "code_version": code_version()}),
        )
        entries = [({"utterance_id": uid, "variant": var}, arr) for (uid, var), arr in items.items()]
        batch = write_derived_batch(self.path, entries, fault=fault)
        self.refresh()
        return batch

    def read(self, utterance_id: str, variant: str = "orig") -> np.ndarray:
        """The stored array (its original shape), float32."""
        item = self._item(utterance_id, variant)
        flat = np.asarray(self._array(item["batch"])[item["offset"] : item["offset"] + item["size"]], dtype=np.float32)
        return flat.reshape(item["shape"])


class FeatureStore:
    """The store rooted at ``path`` (normally ``workspace.features``)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def sets_dir(self) -> Path:
        return self.path / SETS

    def set_path(self, digest: str) -> Path:
        return self.sets_dir / digest

    def ensure_writable(self) -> None:
        """StoreError before any work when the store folder cannot be written."""
        check_writable(self.path)
        create_if_absent(self.path / META, group_meta({"ser_store_format": STORE_FORMAT}))

    def open_set(self, spec: FeatureSpec, *, create: bool = False) -> FeatureSet:
        """The set for ``spec``; ``create=True`` makes it (with its lineage) when absent."""
        path = self.set_path(spec.digest())
        if not (path / META).exists():
            if not create:
                raise StoreError(
                    f"no feature set {spec.digest()} (preset {spec.preset}) under {self.sets_dir}; run `ser featurize`"
                )
            self.ensure_writable()
            attrs = {
                "digest": spec.digest(), "spec": spec.to_dict(), "spec_class": type(spec).__name__,
                "code_version": code_version(), "libraries": library_versions(), "created": now_iso(),
            }
            create_if_absent(path / META, group_meta(attrs))
        return FeatureSet(path, spec)

    def get_set(self, digest: str) -> FeatureSet:
        """The set with this digest, its spec read from the lineage; StoreError lists known digests."""
        path = self.set_path(digest)
        if not (path / META).exists():
            raise StoreError(f"no feature set {digest!r} under {self.sets_dir}; present: {self.digests() or 'none'}")
        attrs = read_json(path / META)["attributes"]
        return FeatureSet(path, FeatureSpec.from_dict(attrs["spec"]))

    def digests(self) -> list[str]:
        if not self.sets_dir.is_dir():
            return []
        return sorted(p.name for p in self.sets_dir.iterdir() if (p / META).exists())

    def list_sets(self) -> list[dict[str, Any]]:
        """One dict per feature set: digest, preset, items, utterances, variants, frames, bytes, lineage."""
        out = []
        for digest in self.digests():
            fset = self.get_set(digest)
            lineage = fset.lineage()
            index = fset.index()
            out.append({
                "digest": digest,
                "preset": fset.spec.preset,
                "kind": fset.spec.kind,
                "dtype": fset.spec.dtype,
                "items": int(len(index)),
                "utterances": int(index["sha256"].nunique()) if len(index) else 0,
                "variants": sorted(index["variant"].unique().tolist()) if len(index) else [],
                "frames": int(index["frames"].sum()) if len(index) else 0,
                "batches": len(committed_batches(fset.path)),
                "bytes": dir_bytes(fset.path),
                "created": lineage.get("created"),
                "code_version": lineage.get("code_version"),
                "libraries": lineage.get("libraries"),
                "spec": lineage.get("spec"),
                "manifests": lineage.get("manifests", []),
            })
        return out

    def derived(self, feature_digest: str, checkpoint_digest: str) -> DerivedSet:
        """Derived items of a feature set produced by one checkpoint (created on first write)."""
        for name, value in (("feature_digest", feature_digest), ("checkpoint_digest", checkpoint_digest)):
            if not value or not all(c.isalnum() or c in "-_" for c in value):
                raise StoreError(f"derived set: {name}={value!r} must be a non-empty digest")
        return DerivedSet(self.path / DERIVED / feature_digest / checkpoint_digest, feature_digest, checkpoint_digest)

    def list_derived(self) -> list[dict[str, Any]]:
        root = self.path / DERIVED
        if not root.is_dir():
            return []
        out = []
        for meta in sorted(root.glob(f"*/*/{META}")):
            dset = DerivedSet(meta.parent, meta.parent.parent.name, meta.parent.name)
            out.append({"feature_digest": dset.feature_digest, "checkpoint_digest": dset.checkpoint_digest,
                        "items": len(dset), "bytes": dir_bytes(dset.path)})
        return out
