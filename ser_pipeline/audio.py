"""Reading audio: any libsndfile format, downmix to mono, high-quality resampling (soxr).

Arrays are float32 in [-1, 1]; a mono signal has shape ``(n_samples,)``.

Every file is checked before use (:func:`recording_problem`, shared by ingest and prediction):
readable, not empty, finite, not silent, not truncated (the frames its header declares were all
decoded: libsndfile silently returns what a cut-off WAV still holds), and, where a minimum is
given, at least ``min_duration_s`` long.
"""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import soundfile as sf
import soxr

from ser_pipeline.errors import AudioError

SILENCE_PEAK = 1e-4  # a recording whose absolute peak stays below this is "all silent"
MIN_DURATION_S = 0.25  # default shortest utterance accepted at ingest (ser ingest --min-duration)
TRUNCATED = "truncated audio"
TOO_SHORT = "too short"


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


WAVE_FORMAT_PCM = 0x0001
WAVE_FORMAT_EXTENSIBLE = 0xFFFE
PCM16_SCALE = np.float32(1.0 / 32768.0)  # libsndfile's int16 -> float normalisation (exact: 2**-15)


def _pcm16_format(data: bytes | memoryview, body: int, size: int) -> tuple[int, int] | None:
    """``(channels, rate)`` of a ``fmt `` chunk at ``body`` when it is 16-bit integer PCM, else None."""
    if size < 16 or body + size > len(data):
        return None
    tag, channels, rate, _byte_rate, block_align, bits = struct.unpack_from("<HHIIHH", data, body)
    if tag == WAVE_FORMAT_EXTENSIBLE and size >= 40:
        tag = struct.unpack_from("<H", data, body + 24)[0]  # first two bytes of the sub-format GUID
    if tag != WAVE_FORMAT_PCM or bits != 16 or channels < 1 or block_align != 2 * channels or rate < 1:
        return None
    return channels, rate


def decode_pcm16_wav(data: bytes | memoryview) -> tuple[np.ndarray, int] | None:
    """Decode an in-memory RIFF/WAVE file of 16-bit PCM: ``(samples (n, channels) float32, rate)``.

    The common case of speech corpora, decoded without a second read of the file. Returns None for
    anything else (other encodings, truncated or unusual files): the caller falls back to
    libsndfile (:func:`read_raw`). Samples equal libsndfile's float32 read bit for bit.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    fmt: tuple[int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        size = int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk_id == b"fmt ":
            fmt = _pcm16_format(data, body, size)
            if fmt is None:
                return None
        elif chunk_id == b"data":
            if fmt is None or body + size > len(data):
                return None
            channels, rate = fmt
            frames = size // (2 * channels)
            if frames == 0:
                return None
            ints = np.frombuffer(data, dtype="<i2", count=frames * channels, offset=body).reshape(frames, channels)
            return np.multiply(ints, PCM16_SCALE, dtype=np.float32), rate
        pos = body + size + (size & 1)  # chunks are padded to an even size
    return None


_UNKNOWN_SIZES = (0, 0xFFFFFFFF)  # data sizes streaming writers leave in the header


def _riff_declared_frames(fh: BinaryIO) -> int | None:
    """Frames a RIFF/WAVE header declares (data chunk size / block align), None when it cannot say."""
    head = fh.read(12)
    if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
        return None
    block_align = 0
    while True:
        chunk = fh.read(8)
        if len(chunk) < 8:
            return None
        chunk_id, size = chunk[:4], int.from_bytes(chunk[4:8], "little")
        if chunk_id == b"fmt ":
            body = fh.read(min(size, 64))
            if len(body) < 14:
                return None
            block_align = struct.unpack_from("<H", body, 12)[0]
            fh.seek(size - len(body) + (size & 1), 1)
        elif chunk_id == b"data":
            if block_align < 1 or size in _UNKNOWN_SIZES:
                return None
            return size // block_align
        else:
            fh.seek(size + (size & 1), 1)


def declared_frames(path: str | Path) -> int | None:
    """Frames the file's header declares, or None when the header does not say.

    RIFF/WAVE: the ``data`` chunk size over the block size, read straight from the header
    (libsndfile clips its own count to what the file holds, so it cannot tell a cut-off file).
    Other formats: libsndfile's count from the header (FLAC STREAMINFO, AIFF COMM, ...).
    """
    try:
        with open(path, "rb") as fh:
            riff = _riff_declared_frames(fh)
            fh.seek(0)
            is_riff = fh.read(4) == b"RIFF"
    except OSError:
        return None
    if is_riff:
        return riff
    try:
        frames = int(sf.info(str(path)).frames)
    except Exception:  # noqa: BLE001 - unreadable headers are reported by the decode itself
        return None
    return frames if 0 < frames < (1 << 62) else None


def truncation_problem(path: str | Path, decoded: int) -> str | None:
    """``"truncated audio: header says N frames, file holds M"`` when fewer frames decoded than declared."""
    declared = declared_frames(path)
    if declared is not None and decoded < declared:
        return f"{TRUNCATED}: header says {declared} frames, file holds {decoded}"
    return None


def duration_problem(frames: int, sample_rate: int, min_duration_s: float) -> str | None:
    """``"too short: 0.004 s < 0.25 s"`` when ``frames`` at ``sample_rate`` last under ``min_duration_s``."""
    seconds = frames / sample_rate if sample_rate else 0.0
    if seconds < min_duration_s:
        return f"{TOO_SHORT}: {seconds:.3f} s < {min_duration_s:g} s"
    return None


def signal_problem(samples: np.ndarray) -> str | None:
    """The reason a signal cannot be used, or None. ``samples``: any shape, float."""
    if samples.size == 0:
        return "zero-length audio"
    # Two reductions, no temporaries: max/min propagate NaN and carry any +-Inf.
    highest, lowest = float(np.max(samples)), float(np.min(samples))
    if not (math.isfinite(highest) and math.isfinite(lowest)):
        return "non-finite samples (NaN or Inf)"
    if max(highest, -lowest) < SILENCE_PEAK:
        return "all-silent audio"
    return None


def recording_problem(path: str | Path, samples: np.ndarray, sample_rate: int, *, min_duration_s: float = 0.0) -> str | None:
    """Why a decoded file cannot be used, or None: signal, truncation, then duration.

    ``samples``: ``(n_frames, channels)`` (or ``(n_frames,)``) as decoded from ``path``. The one
    check ingest and prediction share; ``min_duration_s=0`` skips the duration test.
    """
    frames = int(samples.shape[0])
    return (signal_problem(samples) or truncation_problem(path, frames)
            or (duration_problem(frames, sample_rate, min_duration_s) if min_duration_s > 0 else None))


def check_recording(path: str | Path, *, min_duration_s: float = MIN_DURATION_S) -> tuple[np.ndarray, int]:
    """Read ``path`` and check it (:func:`recording_problem`): ``(samples (n, channels) float32, rate)``.

    AudioError ``"<path>: <reason>"`` when unusable, e.g. ``truncated audio: header says 16000
    frames, file holds 78`` or ``too short: 0.004 s < 0.25 s``. For per-file checks in prediction.
    """
    data, rate = read_raw(path)
    problem = recording_problem(path, data, rate, min_duration_s=min_duration_s)
    if problem:
        raise AudioError(f"{path}: {problem}")
    return data, rate


def inspect_file(path: str | Path, *, min_duration_s: float = 0.0) -> AudioInfo:
    """Read the whole file and check it is usable (:func:`check_recording`); AudioError with the reason otherwise."""
    data, rate = check_recording(path, min_duration_s=min_duration_s)
    return AudioInfo(sample_rate=rate, channels=int(data.shape[1]), frames=int(data.shape[0]))


def to_mono(data: np.ndarray) -> np.ndarray:
    """``(n, channels)`` or ``(n,)`` -> ``(n,)`` by averaging channels."""
    return data if data.ndim == 1 else data.mean(axis=1, dtype=np.float32)


def resample(wave: np.ndarray, orig_sr: int, target_sr: int, *, quality: str = "VHQ") -> np.ndarray:
    """soxr resampling of a mono ``(n,)`` signal (``quality``: a soxr quality, e.g. ``VHQ``, ``HQ``)."""
    if orig_sr == target_sr:
        return wave.astype(np.float32, copy=False)
    return soxr.resample(wave, orig_sr, target_sr, quality=quality).astype(np.float32, copy=False)


def load(path: str | Path, *, sample_rate: int | None = None) -> tuple[np.ndarray, int]:
    """Read, check (no minimum duration), downmix and optionally resample. Returns ``(wave (n,), rate)``.

    AudioError on bad input, truncated files included.
    """
    data, rate = check_recording(path, min_duration_s=0.0)
    wave = to_mono(data)
    if sample_rate is not None and sample_rate != rate:
        wave, rate = resample(wave, rate, sample_rate), sample_rate
    return wave, rate
