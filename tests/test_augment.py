"""Waveform augmentation: the registry, key syntax, seeding, and what each augmentation does."""

from __future__ import annotations

import numpy as np
import pytest

from ser_pipeline.augment import (
    AUGMENTATIONS,
    AugmentSpec,
    apply_variant,
    canonical_key,
    parse_augment,
    variant_seed,
)
from ser_pipeline.errors import ConfigError

SR = 16000


def tone(freq: float = 440.0, seconds: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * SR)) / SR
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def dominant_hz(wave: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(wave * np.hanning(wave.size)))
    return float(np.fft.rfftfreq(wave.size, 1 / SR)[np.argmax(spectrum)])


def test_parse_augment_syntax_and_canonical_keys():
    spec = parse_augment("speed=0.8,0.9,1.0,1.1,1.2;noise=20")
    assert spec.variants == ("orig", "speed=0.8", "speed=0.9", "speed=1.1", "speed=1.2", "noise=20")
    assert parse_augment("").variants == ("orig",) == parse_augment(None).variants
    assert parse_augment("pitch=-2.0; gain=6;speed=0.90").variants == ("orig", "pitch=-2", "gain=6", "speed=0.9")
    assert canonical_key("speed=1.0") == "orig" == canonical_key("gain=0") == canonical_key("pitch=0")
    assert parse_augment("speed=0.9").digest() == AugmentSpec.of(["speed=0.90"]).digest()
    assert parse_augment("speed=0.9").digest() != parse_augment("speed=1.1").digest()


@pytest.mark.parametrize(
    ("text", "token"),
    [("speed=abc", "abc"), ("warp=2", "warp"), ("speed", "speed"), ("speed=5", "speed=5"),
     ("noise=20,,10", "noise=20,,10"), ("pitch=", "pitch=")],
)
def test_bad_token_is_named(text, token):
    with pytest.raises(ConfigError) as info:
        parse_augment(text)
    assert token in str(info.value)


def test_spec_requires_canonical_keys_and_orig():
    with pytest.raises(ConfigError, match="orig"):
        AugmentSpec(variants=("speed=0.9",))
    with pytest.raises(ConfigError, match="speed=0.90"):
        AugmentSpec(variants=("orig", "speed=0.90"))


def test_variant_seed_is_stable_and_distinct():
    assert variant_seed("ab" * 32, "noise=20") == variant_seed("ab" * 32, "noise=20")
    assert variant_seed("ab" * 32, "noise=20") != variant_seed("ab" * 32, "noise=10")
    assert variant_seed("ab" * 32, "noise=20") != variant_seed("cd" * 32, "noise=20")
    assert 0 <= variant_seed("x", "orig") < 2**63


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_every_augmentation_is_seeded_and_finite(name):
    value = {"speed": 1.1, "tempo": 0.9, "pitch": 2, "noise": 15, "gain": -6}[name]
    key = f"{name}={value}"
    wave = tone()
    a = apply_variant(wave, SR, key, seed=7)
    b = apply_variant(wave, SR, key, seed=7)
    assert a.dtype == np.float32 and a.ndim == 1 and np.all(np.isfinite(a))
    assert np.array_equal(a, b)
    assert not np.array_equal(a[: min(a.size, wave.size)], wave[: min(a.size, wave.size)])


def test_orig_is_identity():
    wave = tone()
    assert np.array_equal(apply_variant(wave, SR, "orig", seed=0), wave)
    assert np.array_equal(apply_variant(wave, SR, "speed=1.0", seed=0), wave)


def test_speed_changes_duration_and_pitch_together():
    wave = tone(440.0, 1.0)
    fast = apply_variant(wave, SR, "speed=1.25", seed=0)
    assert abs(fast.size - wave.size / 1.25) <= 2
    assert abs(dominant_hz(fast) - 440.0 * 1.25) < 10


def test_tempo_changes_duration_at_constant_pitch():
    wave = tone(440.0, 1.0)
    slow = apply_variant(wave, SR, "tempo=0.8", seed=0)
    assert abs(slow.size - wave.size / 0.8) < 0.02 * wave.size
    assert abs(dominant_hz(slow) - 440.0) < 10


def test_pitch_keeps_duration_and_shifts_frequency():
    wave = tone(440.0, 1.0)
    up = apply_variant(wave, SR, "pitch=2", seed=0)
    assert up.size == wave.size
    assert abs(dominant_hz(up) - 440.0 * 2 ** (2 / 12)) < 10


def test_noise_reaches_the_requested_snr_and_depends_on_seed():
    wave = tone(440.0, 1.0)
    noisy = apply_variant(wave, SR, "noise=10", seed=1)
    snr = 10 * np.log10(np.mean(wave.astype(np.float64) ** 2) / np.mean((noisy - wave).astype(np.float64) ** 2))
    assert abs(snr - 10.0) < 0.3
    assert not np.array_equal(noisy, apply_variant(wave, SR, "noise=10", seed=2))


def test_gain_scales_by_decibels():
    wave = tone()
    assert np.allclose(apply_variant(wave, SR, "gain=6", seed=0), wave * 10 ** (6 / 20), atol=1e-6)


def test_bad_wave_names_the_key():
    with pytest.raises(ConfigError, match="noise=10"):
        apply_variant(np.zeros((4, 2), np.float32), SR, "noise=10", seed=0)
