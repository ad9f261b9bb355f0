"""The per-step featurize profile times the store's own path: same waves, same features."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from benchmarks.stages import STAGES, _features_timed, _wave_timed, stage_profile
from feature_store.recordings import load_checked
from ser_pipeline.audio import file_sha256
from ser_pipeline.errors import ConfigError
from ser_pipeline.features import extract, feature_spec


def test_the_timed_steps_compute_what_the_store_computes(tmp_path: Path, write_wav) -> None:
    spec = feature_spec("logmel64")
    for rate, channels in ((16000, 1), (44100, 2)):
        path = write_wav(tmp_path / f"a{rate}.wav", 0.7, sample_rate=rate, channels=channels, seed=rate)
        clock = dict.fromkeys(STAGES, 0.0)
        wave = _wave_timed(str(path), spec, clock)
        assert np.array_equal(wave, load_checked(str(path), file_sha256(path), spec.sample_rate))
        assert np.array_equal(_features_timed(wave, spec, clock), extract(wave, spec))
        if rate == spec.sample_rate:  # nothing to resample: a no-op, far cheaper than the STFT
            assert clock["resample"] < clock["stft"]
        assert all(clock[k] > 0 for k in ("read", "hash", "decode", "stft", "mel", "log", "deltas"))


def test_profile_reports_every_step_per_audio_second(tmp_path: Path, write_wav) -> None:
    paths = [write_wav(tmp_path / "audio" / f"a{i}.wav", 0.5 + 0.1 * i, sample_rate=44100, seed=i) for i in range(5)]
    frame = pd.DataFrame({"path": [str(p) for p in paths]})
    out = stage_profile(frame, feature_spec("logmel64"), tmp_path, workers=2)
    assert out["files"] == 5 and out["audio_seconds"] == pytest.approx(0.5 * 5 + 0.1 * 10, abs=0.01)
    assert out["batch_items"] == 3  # the store's task size for 5 items on 2 workers: 2 batches
    ms = out["ms_per_audio_s"]
    assert list(ms) == list(STAGES) and all(v > 0 for v in ms.values())  # 44.1 kHz: resampling is timed
    assert sum(ms.values()) == pytest.approx(out["total_ms_per_audio_s"], rel=1e-3)
    assert sum(out["share"].values()) == pytest.approx(1.0, abs=1e-3)
    assert not (tmp_path / "stages").exists()  # the scratch batches are removed


def test_profile_refuses_kinds_it_does_not_cover(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="kind='functionals'"):
        stage_profile(pd.DataFrame({"path": []}), feature_spec("functionals"), tmp_path)


def test_a_bad_file_under_path_is_left_out_by_name_and_an_empty_profile_is_refused(tmp_path: Path, write_wav) -> None:
    from benchmarks.featurize import frame_from_dir

    write_wav(tmp_path / "audio" / "good.wav", 0.5)
    (tmp_path / "audio" / "bad.wav").write_bytes(b"RIFF\x04\x00\x00\x00WAVEjunk")
    with pytest.warns(UserWarning, match=r"bad\.wav: .*left out of the benchmark"):
        frame = frame_from_dir(tmp_path / "audio")
    assert frame["utterance_id"].tolist() == ["good.wav"] and frame["duration_s"].iloc[0] == pytest.approx(0.5)
    (tmp_path / "audio" / "good.wav").unlink()
    with pytest.warns(UserWarning), pytest.raises(ConfigError, match="none of the 1 audio files is usable"):
        frame_from_dir(tmp_path / "audio")
    with pytest.raises(ConfigError, match="no recordings to time"):
        stage_profile(pd.DataFrame({"path": []}), feature_spec("logmel64"), tmp_path)
