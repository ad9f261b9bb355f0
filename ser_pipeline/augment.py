"""Waveform augmentation: seeded, pure functions registered by name; variants are stable string keys.

Variant keys are ``"orig"`` or ``"<name>=<value>"`` with the value written canonically (``%g``):
``speed=0.9``, ``tempo=1.1``, ``pitch=-2``, ``noise=20``, ``gain=6``. An identity value
(``speed=1``, ``tempo=1``, ``pitch=0``, ``gain=0``) canonicalises to ``"orig"``.

Augment syntax (``ser featurize --augment``, :func:`parse_augment`)::

    GROUP[;GROUP...]      GROUP = NAME=V1[,V2...]   or  "orig"

e.g. ``"speed=0.8,0.9,1.0,1.1,1.2;noise=20"`` -> ``orig, speed=0.8, speed=0.9, speed=1.1,
speed=1.2, noise=20``. An empty text means no augmentation (``orig`` only).

Augmentation applies to training data only. The feature store computes whatever variants it is
asked for; the training engine asks augmented variants only for the training utterances of a fold
(splits are made before augmentation), so no augmented copy of a test utterance reaches training.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import soxr

from ser_pipeline.config import Spec, require
from ser_pipeline.errors import ConfigError
from ser_pipeline.registry import Registry

ORIG = "orig"

# fn(wave (n,) float32, sample_rate, value, rng) -> wave (m,) float32
AugmentFn = Callable[[np.ndarray, int, float, np.random.Generator], np.ndarray]


@dataclass(frozen=True)
class Augmentation:
    """A registered waveform augmentation: its function, identity value and valid range."""

    name: str
    fn: AugmentFn
    identity: float | None
    low: float
    high: float
    unit: str

    def check(self, value: float, token: str) -> None:
        """ConfigError naming ``token`` unless ``low <= value <= high`` and finite."""
        if not (math.isfinite(value) and self.low <= value <= self.high):
            raise ConfigError(f"augmentation {token!r}: {self.name} must be in [{self.low:g}, {self.high:g}] {self.unit}")


AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")


def register_augmentation(
    name: str, *, identity: float | None, low: float, high: float, unit: str = ""
) -> Callable[[AugmentFn], AugmentFn]:
    """Register ``fn(wave, sample_rate, value, rng) -> wave`` under ``name``."""

    def decorator(fn: AugmentFn) -> AugmentFn:
        AUGMENTATIONS.add(name, Augmentation(name, fn, identity, low, high, unit))
        return fn

    return decorator


@register_augmentation("speed", identity=1.0, low=0.5, high=2.0, unit="(factor)")
def speed(wave: np.ndarray, sample_rate: int, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Resampling speed change: ``(n,)`` -> ``(~n / factor,)``; duration and pitch change together."""
    return soxr.resample(wave, sample_rate * factor, sample_rate, quality="HQ").astype(np.float32)


PV_FFT, PV_HOP = 512, 128  # phase-vocoder STFT: 32 ms Hann window, 8 ms hop at 16 kHz


def _stft(wave: np.ndarray, n_fft: int = PV_FFT, hop: int = PV_HOP) -> np.ndarray:
    """Centred Hann STFT: ``(n,)`` -> ``(n_fft // 2 + 1, T)`` complex."""
    padded = np.pad(wave, n_fft // 2, mode="reflect" if wave.size > n_fft // 2 else "constant")
    if padded.size < n_fft:
        padded = np.pad(padded, (0, n_fft - padded.size))
    frames = np.lib.stride_tricks.sliding_window_view(padded, n_fft)[::hop]
    return np.fft.rfft(frames * np.hanning(n_fft + 1)[:-1], axis=1).T


def _istft(spec: np.ndarray, length: int, n_fft: int = PV_FFT, hop: int = PV_HOP) -> np.ndarray:
    """Weighted overlap-add inverse of :func:`_stft`: ``(F, T)`` -> ``(length,)`` float32."""
    window = np.hanning(n_fft + 1)[:-1]
    frames = np.fft.irfft(spec.T, n=n_fft, axis=1) * window
    total = n_fft + hop * (frames.shape[0] - 1)
    out, norm = np.zeros(total), np.zeros(total)
    for i, frame in enumerate(frames):
        out[i * hop : i * hop + n_fft] += frame
        norm[i * hop : i * hop + n_fft] += window**2
    out = out / np.where(norm > 1e-8, norm, 1.0)
    out = out[n_fft // 2 :][:length]
    return np.pad(out, (0, length - out.size)).astype(np.float32)


def phase_vocoder(spec: np.ndarray, rate: float, hop: int = PV_HOP, n_fft: int = PV_FFT) -> np.ndarray:
    """Time-scale an STFT ``(F, T)`` by ``rate`` (>1 faster): ``(F, ceil(T / rate))``.

    Magnitudes are interpolated between neighbouring frames; phases advance by each bin's
    measured instantaneous frequency (as ``librosa.phase_vocoder``), vectorised over time.
    """
    steps = np.arange(0, spec.shape[1], rate)
    padded = np.pad(spec, [(0, 0), (0, 2)])
    idx = steps.astype(int)
    alpha = (steps - idx)[None, :]
    left, right = padded[:, idx], padded[:, idx + 1]
    mag = (1 - alpha) * np.abs(left) + alpha * np.abs(right)
    expected = 2 * np.pi * hop * np.arange(spec.shape[0])[:, None] / n_fft
    dphase = np.angle(right) - np.angle(left) - expected
    dphase -= 2 * np.pi * np.round(dphase / (2 * np.pi))
    advance = expected + dphase
    phase = np.angle(spec[:, :1]) + np.concatenate([np.zeros((spec.shape[0], 1)), np.cumsum(advance[:, :-1], axis=1)], axis=1)
    return mag * np.exp(1j * phase)


def time_stretch(wave: np.ndarray, rate: float) -> np.ndarray:
    """Phase-vocoder time stretch: ``(n,)`` -> ``(round(n / rate),)`` at constant pitch."""
    stretched = phase_vocoder(_stft(wave), rate)
    return _istft(stretched, int(round(wave.size / rate)))


@register_augmentation("tempo", identity=1.0, low=0.5, high=2.0, unit="(factor)")
def tempo(wave: np.ndarray, sample_rate: int, factor: float, rng: np.random.Generator) -> np.ndarray:
    """Phase-vocoder time stretch: ``(n,)`` -> ``(round(n / factor),)`` at constant pitch."""
    return time_stretch(wave, factor)


@register_augmentation("pitch", identity=0.0, low=-12.0, high=12.0, unit="semitones")
def pitch(wave: np.ndarray, sample_rate: int, semitones: float, rng: np.random.Generator) -> np.ndarray:
    """Pitch shift by ``semitones`` at constant duration: stretch by ``2**(-s/12)``, then resample.

    ``(n,)`` -> ``(n,)``.
    """
    rate = 2.0 ** (-semitones / 12)
    stretched = time_stretch(wave, rate)
    shifted = soxr.resample(stretched, sample_rate / rate, sample_rate, quality="HQ")
    return np.pad(shifted[: wave.size], (0, max(0, wave.size - shifted.size))).astype(np.float32)


@register_augmentation("noise", identity=None, low=-20.0, high=100.0, unit="dB SNR")
def noise(wave: np.ndarray, sample_rate: int, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Additive white Gaussian noise at ``snr_db`` relative to the signal power: ``(n,)`` -> ``(n,)``."""
    power = float(np.mean(np.square(wave, dtype=np.float64)))
    scale = math.sqrt(power / 10 ** (snr_db / 10))
    return (wave + scale * rng.standard_normal(wave.size)).astype(np.float32)


@register_augmentation("gain", identity=0.0, low=-40.0, high=40.0, unit="dB")
def gain(wave: np.ndarray, sample_rate: int, db: float, rng: np.random.Generator) -> np.ndarray:
    """Multiply by ``10 ** (db / 20)`` (no clipping; features are computed in floating point)."""
    return (wave * np.float32(10 ** (db / 20))).astype(np.float32)


def parse_key(key: str) -> tuple[str, float | None]:
    """``"speed=0.9"`` -> ``("speed", 0.9)``; ``"orig"`` -> ``("orig", None)``. ConfigError names the key."""
    key = key.strip()
    if key == ORIG:
        return ORIG, None
    name, sep, raw = key.partition("=")
    if not sep:
        raise ConfigError(f"augmentation {key!r}: expected NAME=VALUE or 'orig'")
    name = name.strip()
    aug = AUGMENTATIONS.get(name) if name in AUGMENTATIONS else None
    if aug is None:
        raise ConfigError(f"augmentation {key!r}: unknown name {name!r}; valid: {AUGMENTATIONS.names()}")
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"augmentation {key!r}: value {raw.strip()!r} is not a number") from None
    aug.check(value, key)
    return name, value


def canonical_key(key: str) -> str:
    """The stable form of a variant key (``"speed=1.0"`` -> ``"orig"``, ``"pitch=-2.0"`` -> ``"pitch=-2"``)."""
    name, value = parse_key(key)
    if name == ORIG or value is None:
        return ORIG
    if AUGMENTATIONS.get(name).identity == value:
        return ORIG
    return f"{name}={value:g}"


@dataclass(frozen=True)
class AugmentSpec(Spec):
    """The variants to compute per utterance; always includes ``"orig"`` first."""

    CODE_VERSION: ClassVar[str] = "1"

    variants: tuple[str, ...] = (ORIG,)

    def validate(self) -> None:
        require(isinstance(self.variants, tuple), "variants", self.variants, "must be a tuple of keys")
        require(ORIG in self.variants, "variants", self.variants, "must include 'orig'")
        for key in self.variants:
            require(canonical_key(key) == key, "variants", key, f"not canonical; write {canonical_key(key)!r}")
        require(len(set(self.variants)) == len(self.variants), "variants", self.variants, "duplicate keys")

    @classmethod
    def of(cls, keys: list[str] | tuple[str, ...]) -> AugmentSpec:
        """Canonicalise, de-duplicate (order kept) and prepend ``orig``."""
        out = [ORIG]
        for key in keys:
            canon = canonical_key(key)
            if canon not in out:
                out.append(canon)
        return cls(variants=tuple(out))


def parse_augment(text: str | None) -> AugmentSpec:
    """Parse ``"speed=0.8,0.9,1.0;noise=20"`` into an :class:`AugmentSpec` (see module docstring)."""
    keys: list[str] = []
    for group in (text or "").split(";"):
        group = group.strip()
        if not group:
            continue
        if group == ORIG:
            keys.append(ORIG)
            continue
        name, sep, values = group.partition("=")
        if not sep or not values.strip():
            raise ConfigError(f"augment group {group!r}: expected NAME=V1[,V2...] (e.g. speed=0.9,1.1)")
        for raw in values.split(","):
            if not raw.strip():
                raise ConfigError(f"augment group {group!r}: empty value")
            keys.append(f"{name.strip()}={raw.strip()}")
    return AugmentSpec.of(keys)


def variant_seed(sha256: str, key: str) -> int:
    """Deterministic 63-bit seed for one (utterance bytes, variant) pair."""
    return int.from_bytes(hashlib.sha256(f"{sha256}:{key}".encode()).digest()[:8], "big") >> 1


def apply_variant(wave: np.ndarray, sample_rate: int, key: str, *, seed: int) -> np.ndarray:
    """The variant ``key`` of a mono wave ``(n,)``: ``(m,)`` float32 (``m = n`` unless speed/tempo)."""
    name, value = parse_key(key)
    x = np.asarray(wave, dtype=np.float32)
    if name == ORIG or value is None or AUGMENTATIONS.get(name).identity == value:
        return x
    if x.ndim != 1 or x.size == 0:
        raise ConfigError(f"augmentation {key!r}: wave shape={x.shape}, expected a non-empty (n,) signal")
    rng = np.random.default_rng(seed)
    return AUGMENTATIONS.get(name).fn(x, sample_rate, value, rng)
