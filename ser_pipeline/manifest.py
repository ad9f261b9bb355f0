"""Manifests: one row per utterance, written atomically to Parquet, with a content digest.

Columns (``MANIFEST_COLUMNS``):
    utterance_id  unique, stable, corpus-prefixed (``casia/liuchanhg/angry/201``)
    corpus        adapter name
    path          absolute path of the recording
    speaker       speaker id, corpus-prefixed so two corpora never share one
    gender        "m", "f" or "" when unknown
    session       session id or ""
    emotion       canonical emotion name (see :mod:`ser_pipeline.corpora.emotions`)
    raw_label     the corpus's own code
    text_id       sentence id or ""
    duration_s, sample_rate, channels   from the file
    sha256        of the file's bytes
    extra         JSON object with corpus-specific fields (e.g. RAVDESS intensity)

Rejects have columns ``path, reason``. Files on disk under ``<root>/manifests/``:
``<name>.parquet``, ``<name>.rejects.parquet`` and ``<name>.json`` (summary with the digest).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from ser_pipeline.config import canonical_json, stable_digest
from ser_pipeline.errors import ManifestError
from ser_pipeline.workspace import Workspace

MANIFEST_VERSION = "1"

MANIFEST_COLUMNS: dict[str, pa.DataType] = {
    "utterance_id": pa.string(),
    "corpus": pa.string(),
    "path": pa.string(),
    "speaker": pa.string(),
    "gender": pa.string(),
    "session": pa.string(),
    "emotion": pa.string(),
    "raw_label": pa.string(),
    "text_id": pa.string(),
    "duration_s": pa.float64(),
    "sample_rate": pa.int64(),
    "channels": pa.int64(),
    "sha256": pa.string(),
    "extra": pa.string(),
}
REJECT_COLUMNS: dict[str, pa.DataType] = {"path": pa.string(), "reason": pa.string()}
REQUIRED_FIELDS = ("utterance_id", "corpus", "path", "speaker", "emotion", "sha256")


@dataclass(frozen=True)
class Reject:
    """A file set aside during ingestion, with the reason."""

    path: str
    reason: str


def normalise_row(row: Mapping[str, Any]) -> dict[str, Any]:
    """Fill optional columns with defaults and serialise ``extra``; ManifestError names a missing field."""
    for field in REQUIRED_FIELDS:
        if not row.get(field):
            raise ManifestError(f"manifest row {row.get('path', '?')}: missing required field {field!r}")
    out: dict[str, Any] = {}
    for name, dtype in MANIFEST_COLUMNS.items():
        value = row.get(name)
        if name == "extra":
            value = canonical_json(value or {}) if not isinstance(value, str) else value
        elif value is None:
            value = "" if pa.types.is_string(dtype) else 0
        out[name] = value
    return out


def check_unique_ids(rows: Iterable[Mapping[str, Any]]) -> None:
    """ManifestError naming both paths when two rows share an utterance id."""
    seen: dict[str, str] = {}
    for row in rows:
        uid = row["utterance_id"]
        if uid in seen:
            raise ManifestError(f"duplicate utterance id {uid!r}: {seen[uid]} and {row['path']}")
        seen[uid] = row["path"]


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Normalised, id-sorted manifest frame from adapter rows."""
    rows = [normalise_row(r) for r in rows]
    check_unique_ids(rows)
    rows.sort(key=lambda r: r["utterance_id"])
    frame = pd.DataFrame(rows, columns=list(MANIFEST_COLUMNS))
    return frame.reset_index(drop=True)


def manifest_digest(frame: pd.DataFrame) -> str:
    """Content digest: the rows (all columns, id order) and the manifest version."""
    records = frame.sort_values("utterance_id").to_dict(orient="records")
    return stable_digest(records, version=MANIFEST_VERSION)


def _table(frame: pd.DataFrame, schema: Mapping[str, pa.DataType]) -> pa.Table:
    arrays = [pa.array(frame[name].tolist() if len(frame) else [], type=dtype) for name, dtype in schema.items()]
    return pa.Table.from_arrays(arrays, names=list(schema))


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temp file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, compression="zstd", write_statistics=False, store_schema=False)
    return sink.getvalue().to_pybytes()


def summarise(frame: pd.DataFrame, rejects: list[Reject]) -> dict[str, Any]:
    """Counts for the ingest summary: utterances, speakers, per-class counts, duration, rejects by reason."""
    by_reason: dict[str, int] = {}
    for rej in rejects:
        key = rej.reason.split(":")[0]
        by_reason[key] = by_reason.get(key, 0) + 1
    return {
        "utterances": int(len(frame)),
        "speakers": int(frame["speaker"].nunique()) if len(frame) else 0,
        "sessions": int(frame.loc[frame["session"] != "", "session"].nunique()) if len(frame) else 0,
        "classes": {k: int(v) for k, v in sorted(frame["emotion"].value_counts().items())},
        "total_duration_s": round(float(frame["duration_s"].sum()), 3),
        "rejected": len(rejects),
        "rejects_by_reason": dict(sorted(by_reason.items())),
    }


def write_manifest(
    frame: pd.DataFrame, rejects: list[Reject], name: str, workspace: Workspace, *, source: str = ""
) -> dict[str, Any]:
    """Write manifest, rejects and summary atomically; return the summary (with ``digest``)."""
    digest = manifest_digest(frame)
    summary = {"name": name, "digest": digest, "source": source, **summarise(frame, rejects)}
    reject_frame = pd.DataFrame([r.__dict__ for r in sorted(rejects, key=lambda r: r.path)], columns=list(REJECT_COLUMNS))
    atomic_write_bytes(workspace.manifest_path(name), _parquet_bytes(_table(frame, MANIFEST_COLUMNS)))
    atomic_write_bytes(workspace.manifests / f"{name}.rejects.parquet", _parquet_bytes(_table(reject_frame, REJECT_COLUMNS)))
    atomic_write_bytes(workspace.manifests / f"{name}.json", (json.dumps(summary, indent=2, sort_keys=True) + "\n").encode())
    return summary


def read_manifest(name: str, workspace: Workspace) -> pd.DataFrame:
    """The manifest frame; ManifestError lists the ingested names when ``name`` is unknown."""
    path = workspace.manifest_path(name)
    if not path.exists():
        known = sorted(p.stem for p in workspace.manifests.glob("*.parquet") if not p.stem.endswith(".rejects"))
        raise ManifestError(f"no manifest named {name!r} under {workspace.manifests}; ingested: {known or 'none'}")
    return pq.read_table(path).to_pandas()


def read_summary(name: str, workspace: Workspace) -> dict[str, Any]:
    path = workspace.manifests / f"{name}.json"
    if not path.exists():
        raise ManifestError(f"no manifest summary {path}")
    return json.loads(path.read_text())


def read_rejects(name: str, workspace: Workspace) -> pd.DataFrame:
    return pq.read_table(workspace.manifests / f"{name}.rejects.parquet").to_pandas()


def list_manifests(workspace: Workspace) -> list[str]:
    return sorted(p.stem for p in workspace.manifests.glob("*.json"))
