"""Corpus exploration for ``ser explore`` and for the dataset artifacts ``ser run`` logs:
:func:`ser_pipeline.explore.write_exploration` on an ingested manifest, its rejects and the mean
log-Mel of a few utterances per class (computed from the audio under ``logmel64``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ser_pipeline.audio import load
from ser_pipeline.errors import SerError
from ser_pipeline.explore import write_exploration
from ser_pipeline.features import extract, feature_spec
from ser_pipeline.manifest import manifest_digest, read_manifest
from ser_pipeline.workspace import Workspace


def class_features(manifest: pd.DataFrame, *, per_class: int, preset: str = "logmel64") -> dict[str, np.ndarray]:
    """``{utterance_id: (C, F, T)}`` for the first ``per_class`` readable utterances of each class."""
    spec = feature_spec(preset)
    out: dict[str, np.ndarray] = {}
    for _, rows in manifest.sort_values("utterance_id").groupby("emotion"):
        for row in rows.head(per_class).itertuples():
            try:
                wave, _ = load(row.path, sample_rate=spec.sample_rate)
                out[str(row.utterance_id)] = extract(wave, spec)
            except SerError:
                continue
    return out


def explore_corpus(name: str, ws: Workspace, out_dir: str | Path | None = None, *, per_class: int = 20) -> dict[str, Any]:
    """Write the exploration of manifest ``name`` into ``out_dir`` (default
    ``<root>/explore/<name>-<manifest digest 8>``, reused when already there)."""
    manifest = read_manifest(name, ws)
    folder = Path(out_dir) if out_dir else ws.root / "explore" / f"{name}-{manifest_digest(manifest)[:8]}"
    rejects_path = ws.manifests / f"{name}.rejects.parquet"
    rejects = pd.read_parquet(rejects_path) if rejects_path.is_file() else None
    features = class_features(manifest, per_class=per_class) if per_class > 0 else None
    summary = write_exploration(manifest, folder, rejects=rejects, features=features, title=name)
    return {**summary, "folder": str(folder)}


def exploration_folder(name: str, ws: Workspace, *, per_class: int = 5) -> Path:
    """The exploration folder of manifest ``name`` for a run's dataset artifacts (written once per digest)."""
    manifest = read_manifest(name, ws)
    folder = ws.root / "explore" / f"{name}-{manifest_digest(manifest)[:8]}"
    if not (folder / "explore.json").is_file():
        explore_corpus(name, ws, folder, per_class=per_class)
    return folder
