"""What ``ser predict`` reads: files, folders (recursively, any format libsndfile reads), glob
patterns and CSV files with a ``path`` column, expanded into one ordered list of paths.

An item that names nothing on disk is kept as given, so the prediction gets a per-file error
(``<path>: path does not exist``) instead of the whole command failing.
"""

from __future__ import annotations

import glob
from pathlib import Path

import pandas as pd

from ser_pipeline.errors import ConfigError


def audio_suffixes() -> frozenset[str]:
    """The file suffixes libsndfile reads here (``.wav``, ``.flac``, ``.ogg``, ...)."""
    import soundfile as sf

    names = {f".{ext.lower()}" for ext in sf.available_formats()}
    return frozenset(names | {".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3", ".opus"})


def csv_paths(path: Path) -> list[str]:
    """The ``path`` column of a CSV (relative paths are relative to the CSV's folder)."""
    frame = pd.read_csv(path)
    if "path" not in frame.columns:
        raise ConfigError(f"{path}: a CSV of inputs needs a 'path' column; columns: {', '.join(frame.columns)}")
    return [str(p if Path(p).is_absolute() else path.parent / p) for p in frame["path"].astype(str)]


def expand_inputs(items: list[str]) -> list[str]:
    """Files as given; folders -> every audio file below them (sorted); globs -> their matches
    (sorted); ``*.csv`` -> its ``path`` column. Order of first appearance, no duplicates."""
    suffixes = audio_suffixes()
    out: list[str] = []
    for item in items:
        path = Path(item)
        if path.is_dir():
            out += sorted(str(p) for p in path.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
        elif path.is_file() and path.suffix.lower() == ".csv":
            out += csv_paths(path)
        elif not path.exists() and glob.has_magic(item):
            out += sorted(p for p in glob.glob(item, recursive=True) if Path(p).is_file())
        else:
            out.append(item)
    return list(dict.fromkeys(out))
