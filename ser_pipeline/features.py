"""Log-Mel / spectrogram features with deltas: arrays in, arrays out, no I/O.

Pipeline of :func:`extract` for a mono wave ``(n,)`` at ``spec.sample_rate``:

1. optional waveform normalisation (zero mean, unit variance; ``normalize_waveform``);
2. pre-emphasis ``y[t] = x[t] - a * x[t-1]`` (``y[0] = x[0]``);
3. framing without centring: ``win = round(win_ms * sr / 1000)`` samples, hop likewise; a signal
   shorter than one window is zero-padded to one frame; ``T = 1 + (n - win) // hop``;
4. periodic Hamming window, FFT of size ``n_fft`` (default: next power of two of ``win``), power;
5. ``logmel``: librosa Mel filter bank (Slaney, ``fmin``..``fmax``) then ``log(max(mel, floor))``;
   ``spectrogram``: ``log(max(power, floor))`` over the ``n_fft // 2 + 1`` linear bins;
6. deltas (regression formula, edges replicated) and delta-deltas stacked as channels.

Output: ``(C, F, T)`` float32 with ``C = 3`` (static, delta, delta-delta) when ``deltas`` else 1.
The store casts to ``spec.dtype`` (float16 by default).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import threading
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from ser_pipeline.config import Spec, canonical_json, check_fields, require, stable_digest
from ser_pipeline.errors import ConfigError
from ser_pipeline.functionals import FUNCTIONAL_SETS
from ser_pipeline.registry import Registry

FEATURE_KINDS = ("logmel", "spectrogram", "ssl", "functionals")
# The fields each family of kinds reads; a kind's digest leaves out the other families' fields.
SSL_FIELDS = ("checkpoint", "layers", "window_s", "context_s")
SPECTRAL_FIELDS = ("n_mels", "fmin", "fmax", "win_ms", "hop_ms", "n_fft", "preemphasis", "log_floor", "deltas",
                   "delta_width", "normalize_waveform")
FUNCTIONAL_FIELDS = ("functional_set",)
KIND_FIELDS: dict[str, tuple[str, ...]] = {"logmel": SPECTRAL_FIELDS, "spectrogram": SPECTRAL_FIELDS,
                                           "ssl": SSL_FIELDS, "functionals": FUNCTIONAL_FIELDS}
FEATURE_DTYPES = ("float16", "float32")
RESAMPLE_QUALITIES = ("VHQ", "HQ")  # soxr qualities of the resampling to ``sample_rate``

# Preset name -> FeatureSpec field overrides (the rest keeps the dataclass defaults).
PRESETS: Registry[dict[str, Any]] = Registry("feature preset")
PRESETS.add("logmel64", {"kind": "logmel", "n_mels": 64})
PRESETS.add("logmel60", {"kind": "logmel", "n_mels": 60})
PRESETS.add("logmel64_norm", {"kind": "logmel", "n_mels": 64, "normalize_waveform": True})
PRESETS.add("spectrogram", {"kind": "spectrogram"})
# Self-supervised hidden states (set ``checkpoint`` to a local Hugging Face folder; see README).
PRESETS.add("ssl", {"kind": "ssl", "dtype": "float16"})
# openSMILE utterance functionals (model ``svm``): ``(1, D, 1)`` float32 per recording.
PRESETS.add("functionals", {"kind": "functionals", "dtype": "float32"})


@dataclass(frozen=True)
class FeatureSpec(Spec):
    """Everything that determines a feature tensor; its digest keys the feature set in the store.

    ``preset`` is a label (shown to users with :func:`feature_label`), not part of the digest:
    two specs with equal parameters store and find the same arrays under the same key.
    """

    CODE_VERSION: ClassVar[str] = "1"
    LATER_FIELDS: ClassVar[dict[str, Any]] = {"resample_quality": "VHQ"}  # stop 24: older digests stay valid

    preset: str = "logmel64"
    kind: str = "logmel"
    sample_rate: int = 16000
    n_mels: int = 64
    fmin: float = 20.0
    fmax: float = 8000.0
    win_ms: float = 25.0
    hop_ms: float = 10.0
    n_fft: int | None = None
    preemphasis: float = 0.97
    log_floor: float = 1e-10
    deltas: bool = True
    delta_width: int = 2
    normalize_waveform: bool = False
    dtype: str = "float16"
    # kind="ssl" only: checkpoint folder (or a hub id in the local cache), hidden layers kept (None =
    # all, 0 = the front end's output), and the window/context of long recordings in seconds.
    checkpoint: str = ""
    layers: tuple[int, ...] | None = None
    window_s: float = 20.0
    context_s: float = 2.0
    # kind="functionals" only: the openSMILE set (:data:`ser_pipeline.functionals.FUNCTIONAL_SETS`).
    functional_set: str = "eGeMAPSv02"
    # soxr quality of the resampling to ``sample_rate`` (recordings at another rate): "VHQ" or "HQ"
    # (stop 24; about half the cost, within a stated tolerance). A LATER_FIELDS entry.
    resample_quality: str = "VHQ"

    def validate(self) -> None:
        require(self.preset in PRESETS, "preset", self.preset, f"unknown preset; valid: {PRESETS.names()}")
        require(self.kind in FEATURE_KINDS, "kind", self.kind, f"must be one of {FEATURE_KINDS}")
        require(isinstance(self.sample_rate, int) and self.sample_rate > 0, "sample_rate", self.sample_rate, "must be a positive integer")
        require(isinstance(self.n_mels, int) and self.n_mels > 0, "n_mels", self.n_mels, "must be a positive integer")
        require(self.fmin >= 0, "fmin", self.fmin, "must be >= 0")
        nyquist = self.sample_rate / 2
        require(self.fmax <= nyquist, "fmax", self.fmax, f"above the Nyquist frequency {nyquist:g} Hz")
        require(self.fmax > self.fmin, "fmax", self.fmax, f"must be above fmin={self.fmin}")
        require(self.win_ms > 0, "win_ms", self.win_ms, "must be positive")
        require(self.hop_ms > 0, "hop_ms", self.hop_ms, "must be positive")
        require(self.hop_ms <= self.win_ms, "hop_ms", self.hop_ms, f"hop longer than the window win_ms={self.win_ms}")
        require(self.win_length >= 2, "win_ms", self.win_ms, "window shorter than 2 samples")
        if self.n_fft is not None:
            require(isinstance(self.n_fft, int) and self.n_fft >= self.win_length, "n_fft", self.n_fft,
                    f"must be an integer >= the window length {self.win_length} samples")
        require(0.0 <= self.preemphasis < 1.0, "preemphasis", self.preemphasis, "must be in [0, 1)")
        require(self.log_floor > 0, "log_floor", self.log_floor, "must be positive")
        require(isinstance(self.delta_width, int) and self.delta_width >= 1, "delta_width", self.delta_width, "must be an integer >= 1")
        require(self.dtype in FEATURE_DTYPES, "dtype", self.dtype, f"must be one of {FEATURE_DTYPES}")
        require(self.resample_quality in RESAMPLE_QUALITIES, "resample_quality", self.resample_quality,
                f"must be one of {RESAMPLE_QUALITIES}")
        if self.kind == "ssl":
            require(bool(self.checkpoint), "checkpoint", self.checkpoint,
                    "kind='ssl' needs a checkpoint: a local Hugging Face folder (see README)")
            require(self.layers is None or (len(self.layers) > 0 and all(isinstance(i, int) and i >= 0 for i in self.layers)),
                    "layers", self.layers, "None (all) or a non-empty list of layer indices >= 0")
            require(self.window_s > 0 and self.context_s >= 0 and self.window_s > 2 * self.context_s, "window_s",
                    self.window_s, f"must be positive and more than twice context_s={self.context_s}")
        if self.kind == "functionals":
            require(self.functional_set in FUNCTIONAL_SETS, "functional_set", self.functional_set,
                    f"valid sets: {list(FUNCTIONAL_SETS)}")
            require(self.dtype == "float32", "dtype", self.dtype, "functionals are stored as float32 "
                    "(float16 would round values in the thousands to whole numbers)")

    def _params(self) -> dict[str, Any]:
        """The fields that determine this kind's arrays (no ``preset``; the other kind's fields dropped)."""
        own = KIND_FIELDS[self.kind]
        drop = {"preset", *(f for fields in KIND_FIELDS.values() for f in fields if f not in own)}
        return {k: v for k, v in self.identity().items() if k not in drop}

    def digest(self) -> str:
        """sha256 of the parameters that determine the arrays (not ``preset``). For ``ssl`` the
        checkpoint enters by the content hash of its weight and config files, not its path: a
        changed checkpoint is a new set, the same checkpoint elsewhere the same set."""
        params = self._params()
        if self.kind == "ssl":
            from ser_pipeline.ssl_features import checkpoint_digest, resolve_checkpoint  # ssl kind only

            params["checkpoint"] = checkpoint_digest(resolve_checkpoint(self.checkpoint))
        return stable_digest(params, version=f"{type(self).__name__}:{self.CODE_VERSION}:params")

    def legacy_digest(self) -> str:
        """The key stores used before the preset left the digest (preset name included): such sets stay
        readable and ``ser store gc`` reports them as superseded by :meth:`digest`."""
        old = {k: v for k, v in self.identity().items() if k not in (*SSL_FIELDS, *FUNCTIONAL_FIELDS)}
        return stable_digest(old, version=f"{type(self).__name__}:{self.CODE_VERSION}")

    @property
    def win_length(self) -> int:
        """Window length in samples."""
        return int(round(self.win_ms * self.sample_rate / 1000))

    @property
    def hop_length(self) -> int:
        """Hop in samples."""
        return max(1, int(round(self.hop_ms * self.sample_rate / 1000)))

    @property
    def fft_size(self) -> int:
        """``n_fft`` or the next power of two of the window length."""
        return self.n_fft if self.n_fft is not None else 1 << (self.win_length - 1).bit_length()

    @property
    def channels(self) -> int:
        """C of the output: 3 with deltas, else 1; for ``ssl`` the layers kept (from the checkpoint's config); 1 for ``functionals``."""
        if self.kind == "ssl":
            from ser_pipeline.ssl_features import checkpoint_shape  # ssl kind only

            return len(self.layers) if self.layers else checkpoint_shape(self.checkpoint)[0]
        if self.kind == "functionals":
            return 1
        return 3 if self.deltas else 1

    @property
    def bands(self) -> int:
        """F of the output: Mel bands, linear FFT bins for ``spectrogram``, the hidden size for ``ssl``, the set's D for ``functionals``."""
        if self.kind == "ssl":
            from ser_pipeline.ssl_features import checkpoint_shape  # ssl kind only

            return checkpoint_shape(self.checkpoint)[1]
        if self.kind == "functionals":
            return FUNCTIONAL_SETS[self.functional_set]
        return self.n_mels if self.kind == "logmel" else self.fft_size // 2 + 1

    def frames_for(self, n_samples: int) -> int:
        """T of the output for a wave of ``n_samples`` (at least 1); 50 Hz for ``ssl``; 1 for ``functionals``."""
        if self.kind == "ssl":
            from ser_pipeline.ssl_features import ssl_frames  # ssl kind only

            return ssl_frames(self.checkpoint, n_samples)
        if self.kind == "functionals":
            return 1
        return 1 + max(0, n_samples - self.win_length) // self.hop_length


def feature_spec(preset: str = "logmel64", *, where: str = "", **overrides: Any) -> FeatureSpec:
    """The preset's spec with ``overrides`` applied; ConfigError names an unknown preset or field
    (with the valid names) under the field path ``where``."""
    if preset not in PRESETS:
        raise ConfigError(f"{where + '.' if where else ''}preset={preset!r}: unknown preset; "
                          f"valid: {', '.join(PRESETS.names())}")
    valid = sorted({f.name for f in dataclasses.fields(FeatureSpec)} - {"preset"})  # no ClassVars
    check_fields(f"{where}.overrides" if where else "FeatureSpec", overrides, valid)
    return FeatureSpec.from_dict({**PRESETS.get(preset), **overrides, "preset": preset}, where=where)


def feature_label(spec: FeatureSpec) -> str:
    """What users see for a spec: the preset and the fields that differ from it, e.g.
    ``logmel64 n_mels=48`` (the preset alone when nothing differs)."""
    defaults = {f.name: f.default for f in dataclasses.fields(FeatureSpec)}
    base = json.loads(canonical_json({**defaults, **PRESETS.get(spec.preset)}))
    changed = [f"{k}={v}" for k, v in sorted(spec._params().items()) if base.get(k) != v]
    return " ".join([spec.preset, *changed])


@functools.lru_cache(maxsize=32)
def _window(win_length: int) -> np.ndarray:
    """Periodic Hamming window ``(win_length,)`` (as ``scipy.signal.get_window("hamming", n)``)."""
    n = np.arange(win_length)
    return (0.54 - 0.46 * np.cos(2 * np.pi * n / win_length)).astype(np.float32)


def hz_to_mel(freq: np.ndarray | float) -> np.ndarray:
    """Slaney Mel scale (librosa ``htk=False``): linear below 1 kHz, logarithmic above."""
    f = np.asarray(freq, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    mels = f / f_sp
    return np.where(f >= min_log_hz, min_log_hz / f_sp + np.log(np.maximum(f, 1e-12) / min_log_hz) / logstep, mels)


def mel_to_hz(mels: np.ndarray | float) -> np.ndarray:
    """Inverse of :func:`hz_to_mel`."""
    m = np.asarray(mels, dtype=np.float64)
    f_sp, min_log_hz, logstep = 200.0 / 3, 1000.0, np.log(6.4) / 27.0
    min_log_mel = min_log_hz / f_sp
    return np.where(m >= min_log_mel, min_log_hz * np.exp(logstep * (m - min_log_mel)), f_sp * m)


@functools.lru_cache(maxsize=32)
def mel_filterbank(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """Slaney-normalised triangular Mel filter bank ``(n_mels, n_fft // 2 + 1)`` float32 (cached).

    Same construction as ``librosa.filters.mel`` (``htk=False, norm="slaney"``; the tests check
    equality), written out here so worker processes need not import librosa.
    """
    fft_freqs = np.fft.rfftfreq(n_fft, d=1.0 / sample_rate)
    mel_f = mel_to_hz(np.linspace(hz_to_mel(fmin), hz_to_mel(fmax), n_mels + 2))
    fdiff = np.diff(mel_f)
    ramps = np.subtract.outer(mel_f, fft_freqs)
    lower = -ramps[:n_mels] / fdiff[:n_mels, None]
    upper = ramps[2:] / fdiff[1:, None]
    weights = np.maximum(0.0, np.minimum(lower, upper))
    weights *= (2.0 / (mel_f[2 : n_mels + 2] - mel_f[:n_mels]))[:, None]
    return np.ascontiguousarray(weights, dtype=np.float32)


@dataclass(frozen=True)
class BandGroup:
    """Bands of similar width, padded to the widest: ``bands`` ``(G,)`` their rows in the output,
    ``bins`` ``(L, G)`` int (the j-th non-zero bin of each band), ``weights`` ``(L, G, 1)`` float32
    (0 on padding, so a padded term adds exactly zero)."""

    bands: np.ndarray
    bins: np.ndarray
    weights: np.ndarray


@dataclass(frozen=True)
class BandSegments:
    """A filter bank's non-zeros, grouped by band width for :func:`project_bands`; ``n_bands`` the
    bank's band count, ``complete`` whether every band has a non-zero."""

    groups: tuple[BandGroup, ...]
    n_bands: int
    complete: bool


BAND_GROUP_GROWTH = 1.5  # a group's widest band is at most 1.5x its narrowest: padding stays under a third


def _band_groups(nonzero: list[np.ndarray], bank: np.ndarray) -> tuple[BandGroup, ...]:
    """Non-empty bands sorted by width, cut into groups whose widths differ by at most the growth."""
    order = sorted((nz.size, b) for b, nz in enumerate(nonzero) if nz.size)
    runs: list[list[int]] = []
    for width, band in order:
        if not runs or width > BAND_GROUP_GROWTH * nonzero[runs[-1][0]].size:
            runs.append([])
        runs[-1].append(band)
    groups = []
    for run in runs:
        widest = max(nonzero[b].size for b in run)
        bins = np.zeros((widest, len(run)), dtype=np.intp)
        weights = np.zeros((widest, len(run), 1), dtype=np.float32)
        for g, band in enumerate(run):
            bins[: nonzero[band].size, g] = nonzero[band]
            weights[: nonzero[band].size, g, 0] = bank[band, nonzero[band]]
        groups.append(BandGroup(np.array(run, dtype=np.intp), bins, weights))
    return tuple(groups)


@functools.lru_cache(maxsize=32)
def mel_segments(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> BandSegments:
    """The Mel bank of :func:`mel_filterbank` as :class:`BandSegments` (cached)."""
    bank = mel_filterbank(sample_rate, n_fft, n_mels, fmin, fmax)
    nonzero = [np.flatnonzero(row) for row in bank]
    return BandSegments(_band_groups(nonzero, bank), n_mels, all(nz.size for nz in nonzero))


def project_bands(power: np.ndarray, segments: BandSegments) -> np.ndarray:
    """Filter-bank energies ``(B, T)`` float32 of a power spectrum ``(T, bins)``.

    Computed with numpy element-wise ufuncs only, never BLAS: a BLAS matrix product splits its work
    by thread count, so its last bits depend on how many threads the process allows. This way the
    same wave gives the same bits in any process on one machine (stored items and :func:`extract`
    agree exactly). Per group of similar-width bands: one gather ``(L, G, T)``, one product, then
    the L terms added one after another by one ``add.reduce`` over the outer axis (a padded term
    adds exactly 0; the same bits as a Python loop of ``+=``, 17 us less per call). Measured 0.10 ms
    per 190 frames at 64 bands (``add.reduceat`` over each band: about twice that; ``power @
    bank.T`` on one BLAS thread: 0.08-0.1 ms per 300 frames).
    """
    columns = np.ascontiguousarray(power.T)  # (bins, T): each gathered row is contiguous
    alloc = np.empty if segments.complete else np.zeros
    out = alloc((segments.n_bands, power.shape[0]), dtype=np.float32)
    for group in segments.groups:
        terms = columns[group.bins]  # (L, G, T)
        terms *= group.weights
        out[group.bands] = np.add.reduce(terms, axis=0)  # row after row, as a loop of += (same bits)
    return out


def preemphasis(wave: np.ndarray, *, coef: float = 0.97) -> np.ndarray:
    """``y[t] = x[t] - coef * x[t-1]``, ``y[0] = x[0]``. ``wave`` ``(n,)`` -> ``(n,)`` float32."""
    x = np.asarray(wave, dtype=np.float32)
    if coef == 0.0 or x.size == 0:
        return x.copy()
    out = np.empty_like(x)
    out[0] = x[0]
    np.subtract(x[1:], np.float32(coef) * x[:-1], out=out[1:])
    return out


def frame_signal(wave: np.ndarray, *, win_length: int, hop_length: int) -> np.ndarray:
    """Frames without centring: ``(n,)`` -> ``(T, win_length)`` view (zero-padded when n < win)."""
    wave = np.ascontiguousarray(wave)
    if wave.size < win_length:
        wave = np.pad(wave, (0, win_length - wave.size))
    n_frames = 1 + (wave.size - win_length) // hop_length
    step = wave.strides[0]
    # A strided view made directly: sliding_window_view's argument checks cost ~0.1 ms per call,
    # as_strided's ~20 us.
    frames = np.ndarray((n_frames, win_length), dtype=wave.dtype, buffer=wave, strides=(hop_length * step, step))
    frames.flags.writeable = False
    return frames


def load_compute_modules() -> None:
    """Import what computing frames needs (scipy's FFT, which loads its own BLAS) at a chosen moment.

    Called before BLAS threads are limited: threadpoolctl limits (and restores) only the libraries
    loaded when the limit starts. Module level would cost a no-op ``ser featurize`` 0.25 s.
    """
    import scipy.fft  # noqa: F401


PADDED_BUFFER_FRAMES = 4096
"""Frames (41 s at a 10 ms hop) up to which :func:`power_frames` reuses its thread's zero-padded
work buffer instead of a fresh one: a fresh buffer costs a zero fill and, on a worker's first items,
its pages. Longer recordings get a buffer of their own."""

_WORK = threading.local()


def _padded_buffer(n_frames: int, win_length: int, n_fft: int) -> np.ndarray:
    """A ``(n_frames, n_fft)`` float32 buffer whose columns ``win_length:`` are zero, for the caller
    to fill columns ``:win_length`` and read before its next call on this thread."""
    if n_frames > PADDED_BUFFER_FRAMES:
        return np.zeros((n_frames, n_fft), dtype=np.float32)
    buffers = _WORK.__dict__.setdefault("padded", {})
    key = (win_length, n_fft)
    buffer = buffers.get(key)
    if buffer is None or buffer.shape[0] < n_frames:
        buffer = buffers[key] = np.zeros((min(PADDED_BUFFER_FRAMES, max(n_frames, 1024)), n_fft), dtype=np.float32)
    return buffer[:n_frames]


def power_frames(wave: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Hamming-windowed power spectrum ``(T, n_fft // 2 + 1)`` float32 of a pre-emphasised wave."""
    frames = frame_signal(wave, win_length=spec.win_length, hop_length=spec.hop_length)
    padded = _padded_buffer(frames.shape[0], spec.win_length, spec.fft_size)  # zero-padded to n_fft
    np.multiply(frames, _window(spec.win_length), out=padded[:, : spec.win_length])
    import scipy.fft  # here, not at module level: planning a no-op featurize never computes a frame

    spectrum = scipy.fft.rfft(padded, axis=1)  # (T, bins) complex64; padded left as it was (reused)
    parts = spectrum.view(np.float32)  # (T, 2 * bins): re, im interleaved
    parts *= parts
    return np.add(parts[:, 0::2], parts[:, 1::2])  # re^2 + im^2, 40% faster than abs()**2


def deltas(x: np.ndarray, *, width: int = 2, out: np.ndarray | None = None) -> np.ndarray:
    """Regression deltas along the last axis (time), edges replicated.

    ``d_t = sum_{n=1..N} n (c_{t+n} - c_{t-n}) / (2 sum_{n=1..N} n^2)`` with ``N = width``.
    ``x``: ``(..., T)`` -> ``(..., T)`` float32 (written into ``out`` when given).
    """
    if width < 1:
        raise ConfigError(f"delta width={width!r}: must be >= 1")
    x = np.asarray(x, dtype=np.float32)
    n_time = x.shape[-1]
    padded = np.concatenate([x[..., :1]] * width + [x] + [x[..., -1:]] * width, axis=-1)

    def shifted(n: int) -> np.ndarray:  # c_{t+n} for every t, edges replicated
        return padded[..., width + n : width + n + n_time]

    if out is None:
        out = np.empty_like(x)
    np.subtract(shifted(1), shifted(-1), out=out)
    if width > 1:
        term = np.empty_like(x)
        for n in range(2, width + 1):
            np.subtract(shifted(n), shifted(-n), out=term)
            term *= np.float32(n)
            out += term
    out *= np.float32(1.0 / (2 * sum(n * n for n in range(1, width + 1))))
    return out


def check_wave(wave: np.ndarray) -> np.ndarray:
    """A 1-D finite float32 wave, or ConfigError naming the problem."""
    x = np.asarray(wave, dtype=np.float32)
    if x.ndim != 1:
        raise ConfigError(f"wave shape={x.shape}: expected a mono (n,) signal")
    if x.size == 0:
        raise ConfigError("wave: zero-length signal")
    if not (math.isfinite(float(np.max(x))) and math.isfinite(float(np.min(x)))):  # NaN and Inf propagate
        raise ConfigError("wave: non-finite samples (NaN or Inf)")
    return x


def static_features(wave: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Log-Mel or log-power spectrogram ``(F, T)`` float32 of a mono wave ``(n,)``."""
    x = check_wave(wave)
    if spec.normalize_waveform:
        x = (x - x.mean()) / np.float32(x.std() + 1e-8)
    power = power_frames(preemphasis(x, coef=spec.preemphasis), spec)  # (T, bins)
    if spec.kind == "logmel":
        segments = mel_segments(spec.sample_rate, spec.fft_size, spec.n_mels, spec.fmin, spec.fmax)
        bands = project_bands(power, segments)  # (n_mels, T)
    else:
        bands = np.ascontiguousarray(power.T)  # (bins, T)
    np.maximum(bands, np.float32(spec.log_floor), out=bands)
    np.log(bands, out=bands)
    return bands


def extract(wave: np.ndarray, spec: FeatureSpec) -> np.ndarray:
    """Features of a mono wave ``(n,)`` at ``spec.sample_rate``: ``(C, F, T)`` float32.

    ``C = 3`` (static, delta, delta-delta) when ``spec.deltas`` else 1; ``F = spec.bands``;
    ``T = spec.frames_for(n)``. Spectral kinds only (``ssl`` and ``functionals`` are computed by
    :func:`ser_pipeline.extractors.extract_many`).
    """
    if KIND_FIELDS[spec.kind] is not SPECTRAL_FIELDS:
        raise ConfigError(f"kind={spec.kind!r}: features.extract computes logmel/spectrogram only; "
                          "use ser_pipeline.extractors.extract_many")
    static = static_features(wave, spec)
    out = np.empty((spec.channels, *static.shape), dtype=np.float32)
    out[0] = static
    if spec.deltas:
        deltas(out[0], width=spec.delta_width, out=out[1])
        deltas(out[1], width=spec.delta_width, out=out[2])
    return out
