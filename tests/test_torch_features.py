"""The batched torch feature path against the numpy path: same shapes, values within 1e-3."""

from __future__ import annotations

import numpy as np
import pytest

from ser_pipeline.errors import ConfigError
from ser_pipeline.features import extract, feature_spec
from ser_pipeline.torch_features import extract_batch
from tests.conftest import make_tone

TOLERANCE = 1e-3  # max abs difference of log values (float32 rounding of two FFT implementations)


@pytest.mark.parametrize("preset", ["logmel64", "logmel64_norm", "spectrogram"])
def test_batch_of_unequal_lengths_matches_numpy_per_item(preset, torch_one_thread):
    spec = feature_spec(preset)
    waves = [make_tone(d, seed=i) for i, d in enumerate((0.3, 1.27, 0.02, 0.8))]  # 0.02 s: shorter than a window
    got = extract_batch(waves, spec, device="cpu")
    for wave, feats in zip(waves, got, strict=True):
        want = extract(wave, spec)
        assert feats.shape == want.shape and feats.dtype == np.float32
        assert float(np.abs(feats - want).max()) < TOLERANCE


def test_other_parameters_and_no_deltas(torch_one_thread):
    spec = feature_spec("logmel64", n_mels=40, hop_ms=12.5, delta_width=3, preemphasis=0.0, n_fft=1024)
    waves = [make_tone(0.6, seed=1), make_tone(0.45, seed=2)]
    for wave, feats in zip(waves, extract_batch(waves, spec, device="cpu"), strict=True):
        assert float(np.abs(feats - extract(wave, spec)).max()) < TOLERANCE
    flat = feature_spec("logmel64", deltas=False)
    (only,) = extract_batch([waves[0]], flat, device="cpu")
    assert only.shape[0] == 1 and float(np.abs(only - extract(waves[0], flat)).max()) < TOLERANCE


def test_padding_does_not_change_an_item(torch_one_thread):
    spec = feature_spec("logmel64")
    short = make_tone(0.4, seed=3)
    alone = extract_batch([short], spec, device="cpu")[0]
    beside_long = extract_batch([short, make_tone(2.0, seed=4)], spec, device="cpu")[0]
    np.testing.assert_allclose(alone, beside_long, atol=1e-5)


def test_bad_waves_are_refused():
    spec = feature_spec("logmel64")
    with pytest.raises(ConfigError, match="empty batch"):
        extract_batch([], spec, device="cpu")
    with pytest.raises(ConfigError, match="non-finite"):
        extract_batch([np.array([0.1, np.nan] * 400, dtype=np.float32)], spec, device="cpu")
