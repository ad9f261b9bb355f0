"""The feature store: feature sets keyed by FeatureSpec digest, derived sets, and their catalog.

See :mod:`feature_store.layout` for the folders and the commit protocol. Reading never needs a lock:
the index of a set is the union of its committed batches (latest batch wins for a repeated key).

Every read is checked: each item's bytes (in the stored dtype) must match the ``crc32`` recorded
when it was written, and the batch's array must hold the recorded frames. A mismatch, an
undecodable chunk or a garbled array ``zarr.json`` raises :class:`StoreError` naming the set, the
batch and the item; no data is returned. A batch whose own ``zarr.json`` (the item list) cannot be
read is left out of the index and listed by :meth:`_BatchedItems.unreadable_batches`: its items
read as missing, so ``materialise`` recomputes them.
"""

from __future__ import annotations

import datetime as dt
import glob
import hashlib
import importlib.metadata
import platform
from collections import defaultdict
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

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
from feature_store.stamps import batch_stamp, is_settled, read_stamps, write_stamps
from feature_store.writer import FaultHook, checksum, write_derived_batch, write_feature_batch
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


FEATURE_ITEM_FIELDS = ("sha256", "variant", "offset", "frames", "checksum")
DERIVED_ITEM_FIELDS = ("utterance_id", "variant", "offset", "size", "shape", "checksum")


def valid_items(batch_dir: Path, fields: Sequence[str]) -> list[dict[str, Any]]:
    """The batch's item list; StoreError naming the batch when it is unreadable or an item lacks ``fields``."""
    items = batch_items(batch_dir)
    if not isinstance(items, list):
        raise StoreError(f"{batch_dir}: item list is {type(items).__name__}, not a list")
    for pos, item in enumerate(items):
        missing = [f for f in fields if not isinstance(item, dict) or f not in item]
        if missing:
            raise StoreError(f"{batch_dir}: item {pos} lacks {missing}")
    return items


class _BatchedItems:
    """Shared reading logic of feature and derived sets: an index over committed batches.

    Subclasses define ``key_fields``, ``item_fields``, :meth:`_span` (the element range of an item
    in the batch array) and :meth:`_slice` (an item's part of a block read over a span).
    """

    key_fields: tuple[str, str] = ("sha256", "variant")
    item_fields: tuple[str, ...] = FEATURE_ITEM_FIELDS

    def __init__(self, path: Path) -> None:
        self.path = path
        self._index: dict[tuple[str, str], dict[str, Any]] | None = None
        self._unreadable: dict[str, str] = {}
        self._arrays: dict[str, Any] = {}

    @property
    def label(self) -> str:
        """How errors name this set: ``feature set <digest>`` or ``derived set <feature>/<checkpoint>``."""
        return f"feature set {self.path.name}"

    def refresh(self) -> None:
        """Forget the cached index (pick up batches committed since)."""
        self._index = None
        self._unreadable = {}
        self._arrays.clear()

    def _items(self) -> dict[tuple[str, str], dict[str, Any]]:
        if self._index is None:
            index: dict[tuple[str, str], dict[str, Any]] = {}
            unreadable: dict[str, str] = {}
            for batch in committed_batches(self.path):
                try:
                    items = valid_items(batch, self.item_fields)
                except StoreError as exc:
                    unreadable[batch.name] = str(exc)
                    continue
                for item in items:
                    index[(item[self.key_fields[0]], item[self.key_fields[1]])] = {**item, "batch": batch.name}
            self._index, self._unreadable = index, unreadable
        return self._index

    def unreadable_batches(self) -> dict[str, str]:
        """``{batch id: reason}`` of committed batches whose item list cannot be read (left out of the index)."""
        self._items()
        return dict(self._unreadable)

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
            hint = f" ({len(self._unreadable)} unreadable batch(es) set aside: {sorted(self._unreadable)})" if self._unreadable else ""
            raise StoreError(f"{self.path}: no item {self.key_fields[0]}={first!r} variant={variant!r}{hint}") from None

    def _name(self, item: dict[str, Any]) -> str:
        return f"{item[self.key_fields[0]]}/{item[self.key_fields[1]]}"

    def _array(self, batch: str) -> Any:
        if batch not in self._arrays:
            import zarr  # only when arrays are read: planning (a no-op featurize) reads item lists

            try:
                self._arrays[batch] = zarr.open_array(str(self.path / BATCHES / batch / "data"), mode="r")
            except Exception as exc:  # zarr raises several types for missing/garbled metadata
                raise StoreError(f"{self.label} batch {batch}: unreadable batch array ({type(exc).__name__}: {exc})") from exc
        return self._arrays[batch]

    def _span(self, item: dict[str, Any]) -> tuple[int, int]:
        raise NotImplementedError

    def _read_span(self, array: Any, lo: int, hi: int) -> np.ndarray:
        raise NotImplementedError

    def _slice(self, block: np.ndarray, item: dict[str, Any], lo: int) -> np.ndarray:
        raise NotImplementedError

    def checked_parts(self, batch: str, items: Sequence[dict[str, Any]]) -> Iterator[tuple[int, np.ndarray | StoreError]]:
        """Read ``items`` (all of ``batch``) in one span; yield ``(position, stored-dtype array or StoreError)``.

        An item's array is yielded only when its bytes match the recorded checksum. A batch that
        cannot be opened or decoded yields a StoreError for every item, naming set, batch and item.
        """
        if not items:
            return
        lo = min(self._span(i)[0] for i in items)
        hi = max(self._span(i)[1] for i in items)
        try:
            block = self._read_span(self._array(batch), lo, hi)
        except Exception as exc:  # noqa: BLE001 - zarr/blosc raise many types for damaged chunks
            reason = str(exc) if isinstance(exc, StoreError) else f"{self.label} batch {batch}: unreadable batch data ({type(exc).__name__}: {exc})"
            for pos, item in enumerate(items):
                yield pos, StoreError(f"{reason}; item {self._name(item)}")
            return
        for pos, item in enumerate(items):
            start, stop = self._span(item)
            part = np.ascontiguousarray(self._slice(block, item, lo))
            if start < 0 or stop - start < 1 or _extent(part) != stop - start:
                yield pos, StoreError(
                    f"{self.label} batch {batch} item {self._name(item)}: array holds {_extent(part)} of the "
                    f"{stop - start} recorded element(s) along its item axis"
                )
                continue
            actual = checksum(part)
            if actual != item["checksum"]:
                yield pos, StoreError(
                    f"{self.label} batch {batch} item {self._name(item)}: checksum mismatch "
                    f"(stored {actual} != recorded {item['checksum']})"
                )
                continue
            yield pos, part

    def _read_checked(self, items: Sequence[dict[str, Any]], dtype: Any = None) -> list[np.ndarray]:
        """Arrays of ``items`` (index entries), in order, each checked then cast to ``dtype`` (None: as
        stored) before the next is read; StoreError on the first bad one."""
        by_batch: dict[str, list[int]] = defaultdict(list)
        for pos, item in enumerate(items):
            by_batch[item["batch"]].append(pos)
        out: list[np.ndarray | None] = [None] * len(items)
        for batch, positions in by_batch.items():
            for local, part in self.checked_parts(batch, [items[p] for p in positions]):
                if isinstance(part, StoreError):
                    raise part
                out[positions[local]] = part if dtype is None else part.astype(dtype)
        return out  # type: ignore[return-value]

    def check(self, keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
        """``{key: reason}`` for each of ``keys`` (all committed) whose stored item fails its checks.

        Used before reusing stored items. A batch holding any of ``keys`` is read and checksummed in
        full (one span over every item of its list, superseded ones too), unless its files carry the
        stamps recorded when it was last found wholly clean (:mod:`feature_store.stamps`).
        """
        index = self._items()
        wanted = {tuple(key): self._item(*key)["batch"] for key in keys}
        stamps = read_stamps(self.path)
        kept = {b: s for b, s in stamps.items() if (self.path / BATCHES / b).is_dir()}
        bad: dict[tuple[str, str], str] = {}
        for batch in sorted(set(wanted.values())):
            stamp = batch_stamp(self.path / BATCHES / batch)
            if stamp is not None and kept.get(batch) == stamp:
                continue
            kept.pop(batch, None)
            items = valid_items(self.path / BATCHES / batch, self.item_fields)
            found = {self._key(items[pos]): str(part) for pos, part in self.checked_parts(batch, items)
                     if isinstance(part, StoreError)}
            bad.update({key: why for key, why in found.items() if wanted.get(key) == batch and key in index})
            if not found and stamp is not None and is_settled(stamp):
                kept[batch] = stamp
        if kept != stamps:
            write_stamps(self.path, kept)
        return bad

    def _key(self, item: dict[str, Any]) -> tuple[str, str]:
        return item[self.key_fields[0]], item[self.key_fields[1]]


def _extent(part: np.ndarray) -> int:
    """Length of an item's part along the batch's item axis (time for ``(C, F, T)``, else flat)."""
    return int(part.shape[2]) if part.ndim == 3 else int(part.size)


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

    def _span(self, item: dict[str, Any]) -> tuple[int, int]:
        return int(item["offset"]), int(item["offset"]) + int(item["frames"])

    def _read_span(self, array: Any, lo: int, hi: int) -> np.ndarray:
        return np.asarray(array[:, :, lo:hi])

    def _slice(self, block: np.ndarray, item: dict[str, Any], lo: int) -> np.ndarray:
        start = int(item["offset"]) - lo
        return block[:, :, start : start + int(item["frames"])]

    def read(self, sha256: str, variant: str = "orig") -> np.ndarray:
        """Features ``(C, F, T)`` float32 of one item, checked; StoreError names a missing or damaged item."""
        (part,) = self._read_checked([self._item(sha256, variant)], np.float32)
        return part

    def read_many(self, keys: list[tuple[str, str]], *, as_stored: bool = False) -> list[np.ndarray]:
        """Bulk read, in ``keys`` order: one contiguous read per batch. Each ``(C, F, T_i)`` float32,
        or in the stored dtype (float16 for most sets) with ``as_stored``, for a caller that converts
        while it copies anyway (the training tables: no float32 copy of every item in between).

        Every item is checked against its recorded checksum; StoreError names the first bad one.
        """
        return self._read_checked([self._item(sha, variant) for sha, variant in keys],
                                  None if as_stored else np.float32)

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
        safe = manifest_record_stem(name)
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
    item_fields = DERIVED_ITEM_FIELDS

    def __init__(self, path: Path, feature_digest: str, checkpoint_digest: str) -> None:
        super().__init__(path)
        self.feature_digest = feature_digest
        self.checkpoint_digest = checkpoint_digest

    @property
    def label(self) -> str:
        return f"derived set {self.feature_digest}/{self.checkpoint_digest}"

    def _span(self, item: dict[str, Any]) -> tuple[int, int]:
        return int(item["offset"]), int(item["offset"]) + int(item["size"])

    def _read_span(self, array: Any, lo: int, hi: int) -> np.ndarray:
        return np.asarray(array[lo:hi])

    def _slice(self, block: np.ndarray, item: dict[str, Any], lo: int) -> np.ndarray:
        start = int(item["offset"]) - lo
        return block[start : start + int(item["size"])]

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
        """The stored array (its original shape), float32, checked; StoreError names a damaged item."""
        item = self._item(utterance_id, variant)
        (flat,) = self._read_checked([item])
        if int(np.prod(item["shape"])) != flat.size:
            raise StoreError(f"{self.label} batch {item['batch']} item {self._name(item)}: recorded shape {item['shape']} "
                             f"does not hold {flat.size} element(s)")
        return flat.astype(np.float32).reshape(item["shape"])


def manifest_record_stem(name: str) -> str:
    """A manifest name as the stem of its served-manifest records (no dots: ``<stem>.<digest>...``)."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in name)


class FeatureStore:
    """The store rooted at ``path`` (normally ``workspace.features``)."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def sets_dir(self) -> Path:
        return self.path / SETS

    def set_path(self, digest: str) -> Path:
        return self.sets_dir / digest

    def has_served(self, spec: FeatureSpec, manifest_name: str) -> bool:
        """Whether the set for ``spec`` records serving manifest ``manifest_name`` (at any digest):
        read before the manifest itself, a hint that featurizing it again computes little."""
        folder = self.set_path(spec.digest()) / MANIFESTS
        return folder.is_dir() and any(folder.glob(f"{glob.escape(manifest_record_stem(manifest_name))}.*.json"))

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
            if spec.kind == "ssl":
                from ser_pipeline.ssl_features import checkpoint_lineage  # ssl kind only

                attrs["checkpoint"] = checkpoint_lineage(spec.checkpoint)
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
