"""Reading audio: any libsndfile format, downmix to mono, high-quality resampling (soxr).

Arrays are float32 in [-1, 1]; a mono signal has shape ``(n_samples,)``.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

from ser_pipeline.errors import AudioError

SILENCE_PEAK = 1e-4  # a recording whose absolute peak stays below this is "all silent"


@dataclass(frozen=True)
class AudioInfo:
    """What the header and a full read say about one file."""

    sample_rate: int
    channels: int
    frames: int

    @property
    def duration_s(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def file_sha256(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of the file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk_size):
            digest.update(block)
    return digest.hexdigest()


def read_raw(path: str | Path) -> tuple[np.ndarray, int]:
    """Read a file as float32 ``(n_samples, n_channels)`` and its rate; AudioError names the file."""
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except Exception as exc:  # libsndfile raises several types; all mean "unreadable"
        raise AudioError(f"{path}: unreadable audio ({type(exc).__name__}: {exc})") from exc
    return data, int(rate)


def signal_problem(samples: np.ndarray) -> str | None:
    """The reason a signal cannot be used, or None. ``samples``: any shape, float."""
    if samples.size == 0:
        return "zero-length audio"
    if not np.all(np.isfinite(samples)):
        return "non-finite samples (NaN or Inf)"
    if float(np.max(np.abs(samples))) < SILENCE_PEAK:
        return "all-silent audio"
    return None


def inspect_file(path: str | Path) -> AudioInfo:
    """Read the whole file and check it is usable; raise AudioError with the reason otherwise."""
    data, rate = read_raw(path)
    problem = signal_problem(data)
    if problem:
        raise AudioError(f"{path}: {problem}")
    return AudioInfo(sample_rate=rate, channels=int(data.shape[1]), frames=int(data.shape[0]))


def to_mono(data: np.ndarray) -> np.ndarray:
    """``(n, channels)`` or ``(n,)`` -> ``(n,)`` by averaging channels."""
    return data if data.ndim == 1 else data.mean(axis=1, dtype=np.float32)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int) -> np.ndarray:
    """High-quality (soxr VHQ) resampling of a mono ``(n,)`` signal."""
    if orig_sr == target_sr:
        return wave.astype(np.float32, copy=False)
    return soxr.resample(wave, orig_sr, target_sr, quality="VHQ").astype(np.float32, copy=False)


def load(path: str | Path, *, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read, downmix and optionally resample. Returns ``(wave (n,), rate)``; AudioError on bad input."""
    data, rate = read_raw(path)
    problem = signal_problem(data)
    if problem:
        raise AudioError(f"{path}: {problem}")
    wave = to_mono(data)
    if sample_rate is not None and sample_rate != rate:
        wave, rate = resample(wave, rate, sample_rate), sample_rate
    return wave, rate
