"""Store maintenance: ``verify`` (checksums and shapes of every committed item) and ``gc``."""

from __future__ import annotations

import os
import shutil
from collections import Counter
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from feature_store.layout import BATCHES, DERIVED, META, SETS, TMP, dir_bytes, new_batch_id, read_json, tmp_is_abandoned
from feature_store.store import FeatureStore, batch_items, committed_batches
from feature_store.writer import checksum, write_derived_batch, write_feature_batch
from ser_pipeline.errors import SerError
from ser_pipeline.features import FeatureSpec


def _set_dirs(store: FeatureStore) -> list[Path]:
    root = store.path / SETS
    return sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []


def _derived_dirs(store: FeatureStore) -> list[Path]:
    root = store.path / DERIVED
    return sorted(p for p in root.glob("*/*") if p.is_dir()) if root.is_dir() else []


def _check_feature_batch(batch: Path, channels: int, bands: int, dtype: str) -> Iterator[tuple[str, str]]:
    """Yield ``(key, reason)`` for each problem in one committed feature batch."""
    items = batch_items(batch)
    data = zarr.open_array(str(batch / "data"), mode="r")
    total = sum(int(i["frames"]) for i in items)
    if data.shape != (channels, bands, total):
        yield "*", f"array shape {data.shape} != expected {(channels, bands, total)}"
        return
    if str(data.dtype) != dtype:
        yield "*", f"array dtype {data.dtype} != spec dtype {dtype}"
    block = data[...]
    for item in items:
        key = f"{item['sha256']}/{item['variant']}"
        part = block[:, :, item["offset"] : item["offset"] + item["frames"]]
        if part.shape[2] != item["frames"] or item["frames"] < 1:
            yield key, f"frames {part.shape[2]} != recorded {item['frames']}"
        elif checksum(part) != item["checksum"]:
            yield key, f"checksum mismatch ({checksum(part)} != recorded {item['checksum']})"


def _check_derived_batch(batch: Path) -> Iterator[tuple[str, str]]:
    items = batch_items(batch)
    block = zarr.open_array(str(batch / "data"), mode="r")[...]
    for item in items:
        key = f"{item['utterance_id']}/{item['variant']}"
        part = block[item["offset"] : item["offset"] + item["size"]]
        if part.size != item["size"] or int(np.prod(item["shape"])) != item["size"]:
            yield key, f"size {part.size} != recorded {item['size']} / shape {item['shape']}"
        elif checksum(part.astype(np.float32)) != item["checksum"]:
            yield key, "checksum mismatch"


def _guard(batch: Path, check: Callable[[], Iterator[tuple[str, str]]]) -> tuple[int, list[dict[str, str]]]:
    """Run one batch check; any exception while reading is itself a corruption report."""
    problems = []
    try:
        n_items = len(batch_items(batch))
        for key, reason in check():
            problems.append({"path": str(batch), "key": key, "reason": reason})
    except (SerError, OSError, ValueError, KeyError, TypeError, RuntimeError) as exc:
        return 0, [{"path": str(batch), "key": "*", "reason": f"unreadable batch: {type(exc).__name__}: {exc}"}]
    return n_items, problems


def _uncommitted(base: Path) -> list[str]:
    root = base / TMP
    return [str(p) for p in sorted(root.iterdir())] if root.is_dir() else []


def verify(store: FeatureStore) -> dict[str, Any]:
    """Check every committed item against its recorded checksum and shape.

    Returns ``{"ok", "sets", "derived", "batches", "items_checked", "corrupt": [{path, key, reason}],
    "uncommitted": [temp batch paths]}``. ``ok`` is False when anything committed is corrupt;
    uncommitted temp batches are invisible to readers and only listed (``gc`` removes them).
    """
    report: dict[str, Any] = {"store": str(store.path), "sets": 0, "derived": 0, "batches": 0,
                              "items_checked": 0, "corrupt": [], "uncommitted": []}
    for set_dir in _set_dirs(store):
        report["sets"] += 1
        report["uncommitted"] += _uncommitted(set_dir)
        try:
            attrs = read_json(set_dir / META)["attributes"]
            spec = FeatureSpec.from_dict(attrs["spec"])
            if set_dir.name not in (spec.digest(), spec.legacy_digest()):  # legacy: written before spec v2
                raise SerError(f"spec digest {spec.digest()} != folder name")
        except (SerError, KeyError, TypeError) as exc:
            report["corrupt"].append({"path": str(set_dir), "key": "*", "reason": f"set metadata: {exc}"})
            continue
        for batch in committed_batches(set_dir):
            report["batches"] += 1
            n, problems = _guard(batch, lambda b=batch, s=spec: _check_feature_batch(b, s.channels, s.bands, s.dtype))
            report["items_checked"] += n
            report["corrupt"] += problems
    for dset in _derived_dirs(store):
        report["derived"] += 1
        report["uncommitted"] += _uncommitted(dset)
        for batch in committed_batches(dset):
            report["batches"] += 1
            n, problems = _guard(batch, lambda b=batch: _check_derived_batch(b))
            report["items_checked"] += n
            report["corrupt"] += problems
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
            items = batch_items(batch)
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


def _compact(plan: BatchPlan) -> str:
    """Rewrite the live items of ``plan.path`` as a new batch (same bytes and checksums), then
    remove the old batch. Returns the new batch id."""
    base = plan.path.parent.parent
    block = zarr.open_array(str(plan.path / "data"), mode="r")[...]
    if block.ndim == 3:
        entries = [({k: v for k, v in item.items() if k not in ("offset", "frames", "checksum")},
                    block[:, :, item["offset"] : item["offset"] + item["frames"]]) for item in plan.keep]
        new_id = write_feature_batch(base, entries, dtype=str(block.dtype))
    else:
        entries = [({k: v for k, v in item.items() if k not in ("offset", "size", "shape", "checksum")},
                    block[item["offset"] : item["offset"] + item["size"]].reshape(item["shape"])) for item in plan.keep]
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
    "items_removed", "bytes"}`` (``bytes``: removed paths, before compaction).
    """
    paths, plans = gc_candidates(store, keep_digests, referenced_items)
    removed = [{"path": str(p), "reason": why, "bytes": dir_bytes(p)} for p, why in paths]
    removed += [{"path": str(b.path), "reason": b.reason, "bytes": dir_bytes(b.path)} for b in plans if b.action == "remove"]
    compacted = [{"path": str(b.path), "reason": b.reason, "items_kept": len(b.keep), "items_dropped": b.dropped}
                 for b in plans if b.action == "compact"]
    if not dry_run:
        for path, _ in paths:
            _discard(path)
        for plan in plans:
            if plan.action == "remove":
                _discard(plan.path)
            else:
                _compact(plan)
    return {"dry_run": dry_run, "removed": removed, "compacted": compacted,
            "items_removed": sum(b.dropped for b in plans), "bytes": sum(r["bytes"] for r in removed)}
