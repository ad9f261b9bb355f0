"""Tiny manifests of generated recordings for the feature-store tests."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest

from ser_pipeline.audio import file_sha256
from ser_pipeline.manifest import to_frame


def manifest_of(paths: list[Path], corpus: str = "tiny") -> pd.DataFrame:
    """A valid manifest frame (``manifest.to_frame``) for generated files."""
    rows = [
        {"utterance_id": f"{corpus}/{p.stem}", "corpus": corpus, "path": str(p), "speaker": f"{corpus}/s{i % 2}",
         "emotion": ("anger", "sadness")[i % 2], "duration_s": 0.3, "sample_rate": 16000, "channels": 1,
         "sha256": file_sha256(p)}
        for i, p in enumerate(paths)
    ]
    return to_frame(rows)


@pytest.fixture
def make_corpus(tmp_path: Path, write_wav: Callable[..., Path]) -> Callable[..., pd.DataFrame]:
    """``make_corpus(n, name="tiny", start=0, seconds=0.3)`` -> manifest frame of n generated WAVs."""

    def _make(n: int, name: str = "tiny", *, start: int = 0, seconds: float = 0.3) -> pd.DataFrame:
        paths = [
            write_wav(tmp_path / name / f"u{i:03d}.wav", seconds + 0.01 * i, freq=150.0 + 20 * i, seed=i)
            for i in range(start, start + n)
        ]
        return manifest_of(paths, name)

    return _make
