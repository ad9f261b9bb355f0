"""Store maintenance: ``verify`` (checksums and shapes of every committed item) and ``gc``."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable, Container
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from feature_store.layout import (
    BATCHES,
    DERIVED,
    META,
    QUARANTINE,
    SETS,
    TMP,
    dir_bytes,
    new_batch_id,
    read_json,
    tmp_is_abandoned,
)
from feature_store.store import (
    DERIVED_ITEM_FIELDS,
    FEATURE_ITEM_FIELDS,
    DerivedSet,
    FeatureSet,
    FeatureStore,
    _BatchedItems,
    committed_batches,
    valid_items,
)
from feature_store.writer import write_derived_batch, write_feature_batch
from ser_pipeline.errors import SerError, StoreError
from ser_pipeline.features import FeatureSpec

if TYPE_CHECKING:
    import pandas as pd


def _set_dirs(store: FeatureStore) -> list[Path]:
    root = store.path / SETS
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _derived_dirs(store: FeatureStore) -> list[Path]:
    root = store.path / DERIVED
    return sorted(p for p in root.glob("*/*") if p.is_dir()) if root.is_dir() else []


def _array_problems(batch: Path, expected: tuple[int, ...], dtype: str | None) -> list[tuple[str, str]]:
    """Batch-level problems of the ``data`` array: shape (from the item list) and dtype."""
    try:
        import zarr  # only when a batch's arrays are checked

        data = zarr.open_array(str(batch / "data"), mode="r")
    except Exception:  # noqa: BLE001 - reported per item by checked_parts, with the reason
        return []
    problems = []
    if tuple(data.shape) != expected:
        problems.append(("*", f"array shape {tuple(data.shape)} != expected {expected}"))
    if dtype is not None and str(data.dtype) != dtype:
        problems.append(("*", f"array dtype {data.dtype} != spec dtype {dtype}"))
    return problems


def _check_batches(reader: _BatchedItems, report: dict[str, Any], expected_shape: Callable[[list[dict[str, Any]]], tuple[int, ...]],
                   dtype: str | None) -> None:
    """Check every committed batch of ``reader``'s set into ``report`` (corrupt, superseded, counts).

    A damaged item that the index no longer serves (a later batch holds its key, e.g. after a
    repair) is listed under ``superseded``: never read, removed by ``gc``, not a failure.
    """
    served = reader._items()
    fields = reader.item_fields
    for batch in committed_batches(reader.path):
        report["batches"] += 1
        try:
            items = valid_items(batch, fields)
        except SerError as exc:
            report["corrupt"].append({"path": str(batch), "key": "*", "reason": f"unreadable batch: {exc}"})
            continue
        for key, reason in _array_problems(batch, expected_shape(items), dtype):
            report["corrupt"].append({"path": str(batch), "key": key, "reason": reason})
        for pos, part in reader.checked_parts(batch.name, items):
            report["items_checked"] += 1
            if not isinstance(part, StoreError):
                continue
            item = items[pos]
            key = (item[reader.key_fields[0]], item[reader.key_fields[1]])
            entry = {"path": str(batch), "key": f"{key[0]}/{key[1]}", "reason": str(part)}
            live = served.get(key, {}).get("batch") == batch.name
            report["corrupt" if live else "superseded"].append(entry)


def _uncommitted(base: Path) -> list[str]:
    root = base / TMP
    return [str(p) for p in sorted(root.iterdir())] if root.is_dir() else []


def _quarantined(base: Path) -> list[str]:
    root = base / QUARANTINE
    return [str(p) for p in sorted(root.iterdir())] if root.is_dir() else []


def verify(store: FeatureStore) -> dict[str, Any]:
    """Check every committed item against its recorded checksum and shape.

    Returns ``{"ok", "sets", "derived", "batches", "items_checked", "corrupt": [{path, key, reason}],
    "superseded": [...], "uncommitted": [temp batch paths], "quarantined": [paths]}``. ``ok`` is
    False when anything served is corrupt. Damaged items a later batch replaced (``superseded``),
    uncommitted temp batches and quarantined batches are never read and only listed (``gc``
    removes them).
    """
    report: dict[str, Any] = {"store": str(store.path), "sets": 0, "derived": 0, "batches": 0,
                              "items_checked": 0, "corrupt": [], "superseded": [], "uncommitted": [],
                              "quarantined": []}
    for set_dir in _set_dirs(store):
        report["sets"] += 1
        report["uncommitted"] += _uncommitted(set_dir)
        report["quarantined"] += _quarantined(set_dir)
        try:
            attrs = read_json(set_dir / META)["attributes"]
            spec = FeatureSpec.from_dict(attrs["spec"])
            if set_dir.name not in (spec.digest(), spec.legacy_digest()):  # legacy: written before spec v2
                raise SerError(f"spec digest {spec.digest()} != folder name")
        except (SerError, KeyError, TypeError) as exc:
            report["corrupt"].append({"path": str(set_dir), "key": "*", "reason": f"set metadata: {exc}"})
            continue
        shape = lambda items, s=spec: (s.channels, s.bands, sum(int(i["frames"]) for i in items))  # noqa: E731
        _check_batches(FeatureSet(set_dir, spec), report, shape, spec.dtype)
    for dset in _derived_dirs(store):
        report["derived"] += 1
        report["uncommitted"] += _uncommitted(dset)
        report["quarantined"] += _quarantined(dset)
        _check_batches(DerivedSet(dset, dset.parent.name, dset.name), report,
                       lambda items: (sum(int(i["size"]) for i in items),), None)
    report["ok"] = not report["corrupt"]
    return report


Key = tuple[str, str]
SUPERSEDED = "superseded by a later batch"
UNREFERENCED = "in no manifest the set serves"


@dataclass(frozen=True)
class BatchPlan:
    """What ``gc`` does to one committed batch: ``remove`` it, or ``compact`` it to ``keep``."""

    path: Path
    action: str
    reason: str
    keep: tuple[dict[str, Any], ...]
    dropped: int


def _dead_reason(key: Key, later: set[Key], referenced: Container[Key] | None) -> str | None:
    if key in later:
        return SUPERSEDED
    if referenced is not None and key not in referenced:
        return UNREFERENCED
    return None


def plan_batches(base: Path, key_fields: tuple[str, str], referenced: Container[Key] | None = None) -> list[BatchPlan]:
    """Batches holding dead items, newest first.

    An item is dead when a later batch holds its key (latest wins on read) or, with
    ``referenced``, when its key is not in it. A batch of only dead items is removed; a batch with
    some is compacted (its live items rewritten as a new batch, then the old one removed).
    Unreadable batches are left alone (``verify`` reports them).
    """
    later: set[Key] = set()
    plans = []
    for batch in reversed(committed_batches(base)):
        try:
            items = valid_items(batch, FEATURE_ITEM_FIELDS if key_fields[0] == "sha256" else DERIVED_ITEM_FIELDS)
        except SerError:
            continue
        keep, reasons = [], Counter[str]()
        for item in items:
            key = (item[key_fields[0]], item[key_fields[1]])
            why = _dead_reason(key, later, referenced)
            if why is None:
                keep.append(item)
            else:
                reasons[why] += 1
        later |= {(i[key_fields[0]], i[key_fields[1]]) for i in items}
        if not reasons:
            continue
        reason = "; ".join(f"{n} item(s) {why}" for why, n in sorted(reasons.items()))
        action = "compact" if keep else "remove"
        plans.append(BatchPlan(batch, action, reason, tuple(keep), len(items) - len(keep)))
    return plans


def gc_candidates(
    store: FeatureStore, keep_digests: set[str] | None, referenced_items: dict[str, Container[Key]] | None = None
) -> tuple[list[tuple[Path, str]], list[BatchPlan]]:
    """``(paths to remove with reasons, batch plans)`` of what ``gc`` would do."""
    out: list[tuple[Path, str]] = []
    for set_dir in _set_dirs(store):
        if keep_digests is not None and set_dir.name not in keep_digests:
            out.append((set_dir, "feature set not referenced"))
    for dset in _derived_dirs(store):
        if keep_digests is not None and dset.parent.name not in keep_digests:
            out.append((dset, "derived set of an unreferenced feature set"))
    removed = {p for p, _ in out}
    plans: list[BatchPlan] = []
    referenced_items = referenced_items or {}
    bases = [(d, ("sha256", "variant"), referenced_items.get(d.name)) for d in _set_dirs(store)]
    bases += [(d, ("utterance_id", "variant"), None) for d in _derived_dirs(store)]
    for base, key_fields, referenced in bases:
        if base in removed:
            continue
        tmp_root = base / TMP
        if tmp_root.is_dir():
            out += [(t, "abandoned temp batch") for t in sorted(tmp_root.iterdir()) if tmp_is_abandoned(t)]
        out += [(Path(q), "quarantined unreadable batch") for q in _quarantined(base)]
        plans += plan_batches(base, key_fields, referenced)
    return out, plans


def _discard(path: Path) -> None:
    """Delete a committed batch or set: first renamed into ``tmp/`` (atomic, so readers never see
    a half-deleted batch), then removed. A crash in between leaves an abandoned temp batch."""
    if path.parent.name == BATCHES:
        hidden = path.parent.parent / TMP / new_batch_id()
        hidden.parent.mkdir(parents=True, exist_ok=True)
        os.rename(path, hidden)
        path = hidden
    shutil.rmtree(path, ignore_errors=True)


def batch_reader(base: Path) -> _BatchedItems:
    """The reader of the set folder ``base`` (a feature set under ``sets/`` or a derived set)."""
    if base.parent.name == SETS:
        return FeatureStore(base.parent.parent).get_set(base.name)
    return DerivedSet(base, base.parent.name, base.name)


def _compact(plan: BatchPlan) -> str:
    """Rewrite the live items of ``plan.path`` as a new batch (same bytes, checksums checked first),
    then remove the old batch. Returns the new batch id; StoreError (nothing changed) when a live
    item is damaged: its data is never copied under a fresh checksum."""
    base = plan.path.parent.parent
    reader = batch_reader(base)
    parts: list[Any] = [None] * len(plan.keep)
    for pos, part in reader.checked_parts(plan.path.name, plan.keep):
        if isinstance(part, StoreError):
            raise part
        parts[pos] = part
    if isinstance(reader, FeatureSet):
        entries = [({k: v for k, v in item.items() if k not in ("offset", "frames", "checksum")}, part)
                   for item, part in zip(plan.keep, parts, strict=True)]
        new_id = write_feature_batch(base, entries, dtype=str(parts[0].dtype))
    else:
        entries = [({k: v for k, v in item.items() if k not in ("offset", "size", "shape", "checksum")},
                    part.reshape(item["shape"])) for item, part in zip(plan.keep, parts, strict=True)]
        new_id = write_derived_batch(base, entries)
    _discard(plan.path)
    return new_id


def gc(
    store: FeatureStore, keep_digests: set[str] | None = None, dry_run: bool = True,
    referenced_items: dict[str, Container[Key]] | None = None,
) -> dict[str, Any]:
    """Collect garbage; ``dry_run`` (default) only reports.

    Removes feature sets not in ``keep_digests`` (None keeps every set) with their derived sets,
    abandoned temp batches, and dead items: superseded by a later batch, or (for a set digest in
    ``referenced_items``) keys ``(sha256, variant)`` not in ``referenced_items[digest]``. A batch of
    only dead items is removed; a mixed batch is compacted. Returns ``{"dry_run", "removed":
    [{path, reason, bytes}], "compacted": [{path, reason, items_kept, items_dropped}],
    "items_removed", "bytes", "skipped": [{path, reason}]}`` (``bytes``: removed paths, before
    compaction; ``skipped``: batches not compacted because a live item is damaged).
    """
    paths, plans = gc_candidates(store, keep_digests, referenced_items)
    removed = [{"path": str(p), "reason": why, "bytes": dir_bytes(p)} for p, why in paths]
    removed += [{"path": str(b.path), "reason": b.reason, "bytes": dir_bytes(b.path)} for b in plans if b.action == "remove"]
    compacted = [{"path": str(b.path), "reason": b.reason, "items_kept": len(b.keep), "items_dropped": b.dropped}
                 for b in plans if b.action == "compact"]
    skipped: list[dict[str, str]] = []
    if not dry_run:
        for path, _ in paths:
            _discard(path)
        for plan in plans:
            if plan.action == "remove":
                _discard(plan.path)
                continue
            try:
                _compact(plan)
            except StoreError as exc:
                skipped.append({"path": str(plan.path), "reason": f"not compacted: {exc}"})
    return {"dry_run": dry_run, "removed": removed, "compacted": compacted, "skipped": skipped,
            "items_removed": sum(b.dropped for b in plans), "bytes": sum(r["bytes"] for r in removed)}


def quarantine_unreadable(base: Path) -> list[str]:
    """Move committed batches of ``base`` whose item list is unreadable to ``base/quarantine/``.

    One atomic rename each; nothing is deleted (``gc --apply`` removes quarantined batches).
    Returns the new paths.
    """
    moved = []
    fields = FEATURE_ITEM_FIELDS if base.parent.name == SETS else DERIVED_ITEM_FIELDS
    for batch in committed_batches(base):
        try:
            valid_items(batch, fields)
        except SerError:
            target = base / QUARANTINE / batch.name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.rename(batch, target)
            moved.append(str(target))
    return moved


def served_variants(fset: FeatureSet) -> dict[str, list[str]]:
    """``{manifest name: variants ever requested}`` from the set's lineage."""
    out: dict[str, set[str]] = {}
    for record in fset.lineage().get("manifests", []):
        out.setdefault(record["name"], set()).update(record.get("variants") or ["orig"])
    return {name: sorted(v) for name, v in sorted(out.items())}


def repair(store: FeatureStore, manifest: Callable[[str], pd.DataFrame | None]) -> dict[str, Any]:
    """Recompute damaged and missing items of every feature set from the manifests it served.

    For each set and each manifest name in its lineage that ``manifest(name)`` still returns,
    :func:`~feature_store.materialise.materialise` (in process) with the variants requested under
    that name: damaged items fail their checks and are recomputed into new batches that supersede
    them. Then batches whose item list is unreadable are quarantined. Derived sets cannot be
    recomputed here (they need their model) and are only verified.

    Returns ``{"sets": [{digest, manifest, computed, repaired, failed}], "quarantined": [paths],
    "unavailable": [{digest, manifest}]}`` (manifests no longer in the workspace).
    """
    from feature_store.materialise import materialise

    out: dict[str, Any] = {"sets": [], "quarantined": [], "unavailable": []}
    for set_dir in _set_dirs(store):
        try:
            fset = store.get_set(set_dir.name)
        except (SerError, KeyError, TypeError):
            continue  # unreadable set metadata: verify reports it; nothing to recompute from
        for name, variants in served_variants(fset).items():
            frame = manifest(name)
            if frame is None:
                out["unavailable"].append({"digest": fset.digest, "manifest": name})
                continue
            rep = materialise(frame, fset.spec, variants, store)
            out["sets"].append({"digest": fset.digest, "manifest": name, "computed": rep.computed,
                                "repaired": rep.repaired, "failed": len(rep.failed)})
        out["quarantined"] += quarantine_unreadable(set_dir)
    return out
