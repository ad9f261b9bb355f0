"""Stage records: ``<root>/runs/<stage>/<key>.json``, the one "already done?" check of the pipeline.

A record is written atomically after the stage's outputs are committed; a stage whose record
exists and whose outputs are still present is done. Prefect's cache key is built from it
(``flows/common.py``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def record_path(root: str | os.PathLike[str], stage: str, key: str) -> Path:
    return Path(root) / "runs" / stage / f"{key}.json"


def read_record(root: str | os.PathLike[str], stage: str, key: str) -> dict[str, Any] | None:
    """The stage record for ``key``, or None when absent or unreadable (a torn write never counts)."""
    try:
        return json.loads(record_path(root, stage, key).read_text())
    except (OSError, ValueError):
        return None


def write_record(root: str | os.PathLike[str], stage: str, key: str, record: dict[str, Any]) -> Path:
    """Write the record atomically (temp file, fsync, rename)."""
    path = record_path(root, stage, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def done_record(root: str | os.PathLike[str], stage: str, key: str) -> dict[str, Any] | None:
    """The record when the stage is done (record present and every output it names on disk)."""
    record = read_record(root, stage, key)
    if record is None or not all(Path(p).exists() for p in record.get("outputs", [])):
        return None
    return record


def is_done(root: str | os.PathLike[str], stage: str, key: str) -> bool:
    return done_record(root, stage, key) is not None


def cached(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "status": "cached", "seconds": 0.0}
