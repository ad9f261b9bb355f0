"""Where featurize spends its time: the store's own steps, timed one by one on one thread.

:func:`stage_profile` runs the path of :func:`feature_store.recordings.load_checked` and
:func:`ser_pipeline.features.extract` step by step on every file (one thread, BLAS limited to
one), then commits the items as the store does (:func:`write_feature_batch`, same task size),
and reports milliseconds of wall time per audio second for each step:

- ``read``: the file's bytes (page cache warm); ``hash``: sha256 of them (the manifest check);
- ``decode``: 16-bit PCM WAV from the bytes, or libsndfile, plus the signal checks and downmix;
- ``resample``: soxr to ``spec.sample_rate`` (zero when the file is at that rate already);
- ``stft``: pre-emphasis, framing, Hamming window, FFT and power (:func:`power_frames`);
- ``mel``: the filter-bank projection (:func:`project_bands`); ``log``: floor and log;
- ``deltas``: delta and delta-delta; ``cast``: to the stored dtype (float16 by default);
- ``write``: checksum, concatenation, Zarr encode and write, fsync and commit, per batch.

The sum is the single-thread cost of featurizing one audio second; the store runs it on several
workers or threads. Spectral kinds (logmel, spectrogram) only.
"""

from __future__ import annotations

import hashlib
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from feature_store.materialise import DEFAULT_BATCH_SIZE, task_size
from feature_store.recordings import decode_mono, read_into_buffer
from feature_store.writer import write_feature_batch
from ser_pipeline import audio
from ser_pipeline.errors import ConfigError
from ser_pipeline.features import (
    FeatureSpec,
    check_wave,
    deltas,
    load_compute_modules,
    mel_segments,
    power_frames,
    preemphasis,
    project_bands,
)

STAGES = ("read", "hash", "decode", "resample", "stft", "mel", "log", "deltas", "cast", "write")


class Laps:
    """``lap(stage)`` adds the seconds since the previous lap (or since creation) to ``clock[stage]``."""

    def __init__(self, clock: dict[str, float]) -> None:
        self.clock = clock
        self.last = time.perf_counter()

    def __call__(self, stage: str) -> None:
        now = time.perf_counter()
        self.clock[stage] += now - self.last
        self.last = now


def _features_timed(wave: np.ndarray, spec: FeatureSpec, clock: dict[str, float]) -> np.ndarray:
    """:func:`ser_pipeline.features.extract` of ``wave`` ``(n,)`` -> ``(C, F, T)`` float32, each step
    timed into ``clock``."""
    lap = Laps(clock)
    x = check_wave(wave)
    if spec.normalize_waveform:
        x = (x - x.mean()) / np.float32(x.std() + 1e-8)
    power = power_frames(preemphasis(x, coef=spec.preemphasis), spec)  # (T, bins)
    lap("stft")
    if spec.kind == "logmel":
        bands = project_bands(power, mel_segments(spec.sample_rate, spec.fft_size, spec.n_mels, spec.fmin, spec.fmax))
    else:
        bands = np.ascontiguousarray(power.T)
    lap("mel")
    np.maximum(bands, np.float32(spec.log_floor), out=bands)
    np.log(bands, out=bands)
    lap("log")
    out = np.empty((spec.channels, *bands.shape), dtype=np.float32)
    out[0] = bands
    if spec.deltas:
        deltas(out[0], width=spec.delta_width, out=out[1])
        deltas(out[1], width=spec.delta_width, out=out[2])
    lap("deltas")
    return out


def _wave_timed(path: str, spec: FeatureSpec, clock: dict[str, float]) -> np.ndarray:
    """The mono wave ``(n,)`` float32 at ``spec.sample_rate`` that ``load_checked`` returns, each step
    timed into ``clock``."""
    lap = Laps(clock)
    data = read_into_buffer(path)
    lap("read")
    hashlib.sha256(data).hexdigest()
    lap("hash")
    mono, rate = decode_mono(data, path)
    lap("decode")
    wave = audio.resample(mono, rate, spec.sample_rate, quality=spec.resample_quality)
    lap("resample")
    return wave


def stage_profile(frame: pd.DataFrame, spec: FeatureSpec, scratch: Path, *, workers: int = 1) -> dict[str, Any]:
    """Milliseconds per audio second of each featurize step over ``frame`` (``path`` column), one thread.

    Items are committed in batches of the store's task size for ``workers`` (so per-batch costs
    weigh as they do in ``ser featurize``) under ``scratch``, which is removed afterwards.
    Returns ``{"ms_per_audio_s": {stage: ms}, "share": {stage: fraction}, "total_ms_per_audio_s",
    "audio_seconds", "files"}``.
    """
    if spec.kind not in ("logmel", "spectrogram"):
        raise ConfigError(f"kind={spec.kind!r}: the stage profile covers spectral kinds (logmel, spectrogram)")
    if frame.empty:
        raise ConfigError("stage profile: no recordings to time")
    from threadpoolctl import threadpool_limits

    load_compute_modules()
    paths = frame["path"].tolist()
    clock = dict.fromkeys(STAGES, 0.0)
    batch = task_size(len(paths), DEFAULT_BATCH_SIZE, workers)
    folder = scratch / "stages"
    audio_s = 0.0
    try:
        with threadpool_limits(limits=1):
            for start in range(0, len(paths), batch):
                entries = []
                for i, path in enumerate(paths[start : start + batch], start=start):
                    wave = _wave_timed(path, spec, clock)
                    feats = _features_timed(wave, spec, clock)
                    lap = Laps(clock)
                    stored = feats.astype(spec.dtype)
                    lap("cast")
                    duration = wave.size / spec.sample_rate
                    audio_s += duration
                    entries.append(({"sha256": f"{i:064x}", "variant": "orig", "utterance_id": str(i),
                                     "duration_s": round(duration, 4)}, stored))
                lap = Laps(clock)
                write_feature_batch(folder, entries, dtype=spec.dtype)
                lap("write")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    total = sum(clock.values())
    return {
        "files": len(paths), "audio_seconds": round(audio_s, 2), "batch_items": batch,
        "ms_per_audio_s": {k: round(1000 * v / audio_s, 4) for k, v in clock.items()},
        "share": {k: round(v / total, 4) for k, v in clock.items()},
        "total_ms_per_audio_s": round(1000 * total / audio_s, 4),
    }
