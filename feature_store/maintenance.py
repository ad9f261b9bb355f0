"""Store maintenance: ``verify`` (checksums and shapes of every committed item) and ``gc``."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from feature_store.layout import DERIVED, META, SETS, TMP, dir_bytes, read_json, tmp_is_abandoned
from feature_store.store import FeatureStore, batch_items, committed_batches
from feature_store.writer import checksum
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
            if spec.digest() != set_dir.name:
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


def _shadowed_batches(base: Path) -> list[Path]:
    """Batches every key of which is also held by a later batch (latest wins on read)."""
    later: set[tuple[str, str]] = set()
    out = []
    for batch in reversed(committed_batches(base)):
        try:
            items = batch_items(batch)
        except SerError:
            continue
        keys = {(i.get("sha256", i.get("utterance_id")), i["variant"]) for i in items}
        if keys and keys <= later:
            out.append(batch)
        later |= keys
    return out


def gc_candidates(store: FeatureStore, keep_digests: set[str] | None) -> list[tuple[Path, str]]:
    """``(path, reason)`` of everything ``gc`` would remove."""
    out: list[tuple[Path, str]] = []
    bases = _set_dirs(store) + _derived_dirs(store)
    for set_dir in _set_dirs(store):
        if keep_digests is not None and set_dir.name not in keep_digests:
            out.append((set_dir, "feature set not referenced"))
    for dset in _derived_dirs(store):
        if keep_digests is not None and dset.parent.name not in keep_digests:
            out.append((dset, "derived set of an unreferenced feature set"))
    removed = {p for p, _ in out}
    for base in bases:
        if base in removed:
            continue
        tmp_root = base / TMP
        if tmp_root.is_dir():
            out += [(t, "abandoned temp batch") for t in sorted(tmp_root.iterdir()) if tmp_is_abandoned(t)]
        out += [(b, "batch superseded by later batches") for b in _shadowed_batches(base)]
    return out


def gc(store: FeatureStore, keep_digests: set[str] | None = None, dry_run: bool = True) -> dict[str, Any]:
    """Remove unreferenced sets (not in ``keep_digests``; None keeps every set), abandoned temp
    batches and superseded batches. ``dry_run`` (default) only reports."""
    candidates = gc_candidates(store, keep_digests)
    removed = [{"path": str(p), "reason": why, "bytes": dir_bytes(p)} for p, why in candidates]
    if not dry_run:
        for path, _ in candidates:
            shutil.rmtree(path, ignore_errors=True)
    return {"dry_run": dry_run, "removed": removed, "bytes": sum(r["bytes"] for r in removed)}
