"""Feature extraction: shapes, the delta formula, pre-emphasis, the Mel bank, determinism, validation."""

from __future__ import annotations

import numpy as np
import pytest

from ser_pipeline.errors import ConfigError
from ser_pipeline.features import (
    PADDED_BUFFER_FRAMES,
    PRESETS,
    FeatureSpec,
    deltas,
    extract,
    feature_spec,
    mel_filterbank,
    mel_segments,
    power_frames,
    preemphasis,
    project_bands,
    static_features,
)
from tests.conftest import make_tone

# ssl: tests/test_ssl_features.py; functionals: tests/models/test_baselines.py
SPECTRAL_PRESETS = [p for p in PRESETS.names() if PRESETS.get(p).get("kind") not in ("ssl", "functionals")]


def test_extract_refuses_kinds_it_does_not_compute():
    with pytest.raises(ConfigError, match="functionals.*extract_many"):
        extract(make_tone(0.5), feature_spec("functionals"))


@pytest.mark.parametrize("preset", SPECTRAL_PRESETS)
def test_every_preset_gives_c_f_t(preset):
    spec = feature_spec(preset)
    wave = make_tone(0.5)
    out = extract(wave, spec)
    expected_t = 1 + (wave.size - 400) // 160
    bands = {"logmel64": 64, "logmel64_norm": 64, "logmel60": 60, "spectrogram": 257}[preset]
    assert out.shape == (3, bands, expected_t) == (3, spec.bands, spec.frames_for(wave.size))
    assert out.dtype == np.float32 and np.all(np.isfinite(out))


def test_defaults_follow_the_papers():
    spec = feature_spec("logmel64")
    assert (spec.win_length, spec.hop_length, spec.fft_size) == (400, 160, 512)
    assert (spec.n_mels, spec.fmin, spec.fmax, spec.preemphasis, spec.dtype) == (64, 20.0, 8000.0, 0.97, "float16")
    assert feature_spec("logmel64_norm").normalize_waveform is True


def test_no_deltas_gives_one_channel_and_short_wave_one_frame():
    spec = feature_spec("logmel64", deltas=False)
    assert extract(make_tone(0.5), spec).shape[0] == 1
    assert extract(make_tone(0.01), spec).shape == (1, 64, 1)  # 160 samples < one window


def test_delta_formula_matches_hand_computed_case():
    c = np.array([0.0, 1.0, 4.0, 9.0, 16.0])
    # d_t = (1*(c[t+1]-c[t-1]) + 2*(c[t+2]-c[t-2])) / 10, edges replicated
    assert np.allclose(deltas(c, width=2), [0.9, 2.2, 4.0, 4.2, 3.1])
    assert np.allclose(deltas(c, width=1), [0.5, 2.0, 4.0, 6.0, 3.5])
    two_d = np.stack([c, 2 * c])
    assert np.allclose(deltas(two_d)[1], 2 * deltas(c))
    with pytest.raises(ConfigError, match="width"):
        deltas(c, width=0)


def test_delta_delta_channel_is_delta_of_delta():
    spec = feature_spec("logmel64")
    out = extract(make_tone(0.4), spec)
    assert np.allclose(out[1], deltas(out[0]), atol=1e-5)
    assert np.allclose(out[2], deltas(out[1]), atol=1e-5)


def test_preemphasis():
    assert np.allclose(preemphasis(np.array([1.0, 2.0, 3.0]), coef=0.97), [1.0, 2.0 - 0.97, 3.0 - 1.94])
    assert np.allclose(preemphasis(np.array([1.0, 2.0]), coef=0.0), [1.0, 2.0])


@pytest.mark.parametrize("args", [(16000, 512, 64, 20.0, 8000.0), (16000, 512, 60, 0.0, 8000.0), (8000, 256, 40, 100.0, 3800.0)])
def test_mel_bank_equals_librosa(args):
    librosa = pytest.importorskip("librosa")
    sr, n_fft, n_mels, fmin, fmax = args
    ref = librosa.filters.mel(sr=sr, n_fft=n_fft, n_mels=n_mels, fmin=fmin, fmax=fmax)
    assert np.allclose(mel_filterbank(*args), ref, atol=1e-7)


def test_log_mel_matches_librosa_reference():
    librosa = pytest.importorskip("librosa")
    spec = feature_spec("logmel64")
    wave = make_tone(0.5, freq=300.0)
    # librosa centres the 400-sample window in each 512-sample frame: 56 leading zeros align the grids
    mel = librosa.feature.melspectrogram(
        y=np.concatenate([np.zeros(56, np.float32), preemphasis(wave)]), sr=16000, n_fft=512, win_length=400, hop_length=160, window="hamming",
        center=False, n_mels=64, fmin=20.0, fmax=8000.0, power=2.0,
    )
    ours = static_features(wave, spec)
    assert ours.shape[1] - mel.shape[1] in (0, 1) and mel.shape[1] > 40
    assert np.allclose(ours[:, : mel.shape[1]], np.log(np.maximum(mel, 1e-10)), atol=1e-3)


def test_tone_energy_lands_in_its_band():
    spec = feature_spec("logmel64", deltas=False)
    freqs = np.fft.rfftfreq(512, 1 / 16000)
    for f0 in (500.0, 2000.0):
        t = np.arange(8000) / 16000
        out = extract((0.5 * np.sin(2 * np.pi * f0 * t)).astype(np.float32), spec)[0]
        peak_band = int(np.argmax(out.mean(axis=1)))
        bank = mel_filterbank(16000, 512, 64, 20.0, 8000.0)
        centre = freqs[int(np.argmax(bank[peak_band]))]
        assert abs(centre - f0) < 0.15 * f0


def test_deterministic_and_normalisation_is_scale_invariant():
    wave = make_tone(0.3, seed=3)
    spec = feature_spec("logmel64")
    assert np.array_equal(extract(wave, spec), extract(wave.copy(), spec))
    norm = feature_spec("logmel64_norm")
    assert np.allclose(extract(wave, norm), extract(3 * wave, norm), atol=1e-3)
    assert not np.allclose(extract(wave, spec), extract(3 * wave, spec), atol=1e-3)


def test_digest_stable_and_sensitive():
    a, b = feature_spec("logmel64"), feature_spec("logmel64")
    assert a.digest() == b.digest() and len(a.digest()) == 16
    assert a.digest() != feature_spec("logmel64", n_mels=40).digest()
    assert a.digest() != feature_spec("logmel64", dtype="float32").digest()
    assert FeatureSpec.from_dict(a.to_dict()) == a


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"fmax": 9000.0}, "fmax"),
        ({"n_mels": 0}, "n_mels"),
        ({"n_mels": -3}, "n_mels"),
        ({"hop_ms": 30.0}, "hop_ms"),
        ({"fmin": 9000.0, "fmax": 8000.0}, "fmax"),
        ({"dtype": "int8"}, "dtype"),
        ({"kind": "mfcc"}, "kind"),
        ({"n_fft": 256}, "n_fft"),
        ({"preemphasis": 1.5}, "preemphasis"),
        ({"log_floor": 0.0}, "log_floor"),
        ({"sample_rate": 8000}, "fmax"),
    ],
)
def test_invalid_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=rf"^{field}="):
        feature_spec("logmel64", **overrides)


def test_unknown_preset_and_field():
    with pytest.raises(ConfigError, match="logmel99"):
        feature_spec("logmel99")
    with pytest.raises(ConfigError, match="preset"):
        FeatureSpec(preset="nope")
    with pytest.raises(ConfigError, match="n_bands") as refused:
        feature_spec("logmel64", n_bands=3)
    # the valid names listed are the fields, not the class constants
    assert "n_mels" in str(refused.value) and "CODE_VERSION" not in str(refused.value)
    with pytest.raises(ConfigError, match="CODE_VERSION"):
        feature_spec("logmel64", CODE_VERSION="2")


@pytest.mark.parametrize("bad", [np.zeros((10, 2), np.float32), np.array([], np.float32), np.array([0.1, np.nan] * 300)])
def test_bad_wave_is_rejected(bad):
    with pytest.raises(ConfigError, match="wave"):
        extract(bad, feature_spec("logmel64"))


@pytest.mark.parametrize(("n_mels", "n_fft"), [(64, 512), (128, 256)])  # 128 bands on 129 bins: empty bands
def test_band_projection_equals_the_dense_bank_product(n_mels, n_fft):
    bank = mel_filterbank(16000, n_fft, n_mels, 0.0, 8000.0)
    power = np.random.default_rng(0).random((37, n_fft // 2 + 1), dtype=np.float32)
    got = project_bands(power, mel_segments(16000, n_fft, n_mels, 0.0, 8000.0))
    assert got.shape == (n_mels, 37) and got.dtype == np.float32
    np.testing.assert_allclose(got, (power.astype(np.float64) @ bank.T.astype(np.float64)).T, rtol=1e-5, atol=1e-7)


def test_band_projection_adds_each_band_s_terms_in_bin_order():
    """The bits of stored items: every band is its weighted bins added one after another, lowest
    bin first, in float32 (items stored by earlier versions were computed this way)."""
    bank = mel_filterbank(16000, 512, 64, 0.0, 8000.0)
    power = (np.random.default_rng(1).random((53, 257), dtype=np.float32) * 1e3) ** 2
    got = project_bands(power, mel_segments(16000, 512, 64, 0.0, 8000.0))
    want = np.zeros((64, 53), dtype=np.float32)
    for band, row in enumerate(bank):
        for b in np.flatnonzero(row):
            want[band] += power[:, b] * np.float32(row[b])  # 0 + x is x exactly
    assert np.array_equal(got, want)


def test_power_frames_reuse_no_stale_samples_across_window_lengths_and_lengths():
    """The thread's zero-padded FFT buffer is reused between calls: a call after a longer wave, or
    after another window length on the same FFT size, must not see the earlier call's samples."""
    import scipy.fft

    rng = np.random.default_rng(4)
    specs = [FeatureSpec(win_ms=25.0, n_fft=512), FeatureSpec(win_ms=20.0, n_fft=512)]  # 400 and 320 samples
    lengths = [48000, 1600, 16000 * 45, 400, 33000, 48000]  # one longer than the reused buffer
    assert 1 + (16000 * 45 - 400) // 160 > PADDED_BUFFER_FRAMES
    for n in lengths:
        for spec in specs:
            wave = rng.standard_normal(n).astype(np.float32)
            win = spec.win_length
            frames = np.lib.stride_tricks.sliding_window_view(wave, win)[:: spec.hop_length]
            window = (0.54 - 0.46 * np.cos(2 * np.pi * np.arange(win) / win)).astype(np.float32)
            padded = np.pad(frames * window, ((0, 0), (0, spec.fft_size - win)))
            spectrum = scipy.fft.rfft(padded, axis=1)
            want = spectrum.real**2 + spectrum.imag**2
            assert np.array_equal(power_frames(wave, spec), want), (n, win)


def test_same_bits_whatever_the_blas_thread_count():
    """Stored items are computed with BLAS limited to one thread; direct calls use every core."""
    threadpoolctl = pytest.importorskip("threadpoolctl")
    wave = make_tone(2.0, seed=5)
    spec = feature_spec("logmel64")
    outs = []
    for threads in (1, 4):
        with threadpoolctl.threadpool_limits(limits=threads):
            outs.append(extract(wave, spec))
    assert np.array_equal(outs[0], outs[1])


def test_resample_quality_hq_is_opt_in_and_within_its_stated_tolerance(tmp_path) -> None:
    """``resample_quality``: VHQ (the default) keeps every digest of before stop 24; HQ is a set of
    its own; an unknown quality is a ConfigError naming it. On a 44.1 kHz recording, HQ's static
    log-Mel stays within 0.05 (natural log) of VHQ's in every band but the top one (centre 7.6 kHz,
    where HQ's anti-aliasing filter starts earlier: within 0.3), 0.005 on average."""
    import soundfile as sf

    from feature_store.recordings import load_checked
    from ser_pipeline.features import extract

    assert feature_spec("logmel64").digest() == "24f517291fa2e6f7"  # as before the field existed
    assert feature_spec("logmel64").legacy_digest() == "d2bddb9141625a00"  # sets keyed the oldest way still found
    assert feature_spec("logmel64", resample_quality="VHQ").digest() == "24f517291fa2e6f7"
    assert feature_spec("logmel64", resample_quality="HQ").digest() != "24f517291fa2e6f7"
    with pytest.raises(ConfigError, match="resample_quality"):
        feature_spec("logmel64", resample_quality="fast")
    rng = np.random.default_rng(0)
    t = np.arange(int(44100 * 1.5)) / 44100
    wave = 0.1 * rng.standard_normal(t.size) + 0.3 * np.sin(2 * np.pi * 220 * t) + 0.1 * np.sin(2 * np.pi * 7400 * t)
    path = tmp_path / "a.wav"
    sf.write(path, (wave / np.abs(wave).max() * 0.9).astype(np.float32), 44100, subtype="PCM_16")
    spec = feature_spec("logmel64")
    vhq = extract(load_checked(str(path), "", 16000, quality="VHQ"), spec)[0]
    hq = extract(load_checked(str(path), "", 16000, quality="HQ"), spec)[0]
    diff = np.abs(vhq - hq)
    assert diff[:-1].max() < 0.05 and diff[-1].max() < 0.3 and diff.mean() < 0.005
    assert diff.max() > 0  # they are different resamplers
