"""Core modules: specs and digests, registry, audio reading, manifests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf

from ser_pipeline import audio
from ser_pipeline.config import Spec, require, stable_digest
from ser_pipeline.errors import AudioError, ConfigError, ManifestError
from ser_pipeline.manifest import (
    Reject,
    manifest_digest,
    read_manifest,
    read_rejects,
    read_summary,
    to_frame,
    write_manifest,
)
from ser_pipeline.registry import Registry


@dataclasses.dataclass(frozen=True)
class _Toy(Spec):
    CODE_VERSION = "7"
    rate: int = 16000
    bands: tuple[int, ...] = (1, 2)

    def validate(self) -> None:
        require(self.rate > 0, "rate", self.rate, "must be positive")


def test_spec_digest_is_stable_and_sensitive():
    a, b = _Toy(), _Toy()
    assert a.digest() == b.digest()
    assert a.digest() != _Toy(rate=8000).digest()
    assert _Toy.from_dict(a.to_dict()) == a
    assert a.to_dict() == {"rate": 16000, "bands": [1, 2]}


def test_spec_validation_names_the_field():
    with pytest.raises(ConfigError, match="rate=-1"):
        _Toy(rate=-1)
    with pytest.raises(ConfigError, match="unknown field.*'bogus'"):
        _Toy.from_dict({"bogus": 1})


def test_stable_digest_depends_on_version():
    assert stable_digest({"a": 1}, version="1") != stable_digest({"a": 1}, version="2")
    assert stable_digest({"a": 1, "b": 2}) == stable_digest({"b": 2, "a": 1})


def test_registry_lists_valid_names_on_unknown():
    reg: Registry[int] = Registry("widget")
    reg.add("b", 2)
    reg.add("a", 1)
    assert reg.get("a") == 1 and reg.names() == ["a", "b"]
    with pytest.raises(ConfigError, match="unknown widget 'c'; valid names: a, b"):
        reg.get("c")
    with pytest.raises(ConfigError, match="registered twice"):
        reg.add("a", 3)


def test_audio_load_downmixes_and_resamples(tmp_path, write_wav):
    path = write_wav(tmp_path / "st.wav", 1.0, sample_rate=48000, channels=2)
    wave, rate = audio.load(path, sample_rate=16000)
    assert rate == 16000 and wave.ndim == 1 and wave.dtype == np.float32
    assert abs(wave.size - 16000) <= 1
    info = audio.inspect_file(path)
    assert (info.sample_rate, info.channels, info.frames) == (48000, 2, 48000)
    assert info.duration_s == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (np.zeros(1600, dtype=np.float32), "all-silent"),
        (np.zeros(0, dtype=np.float32), "zero-length"),
    ],
)
def test_audio_problems_name_the_file(tmp_path, content, reason):
    path = tmp_path / "bad.wav"
    sf.write(str(path), content, 16000)
    with pytest.raises(AudioError, match=rf"bad\.wav: {reason}"):
        audio.inspect_file(path)


def test_non_finite_and_corrupt_audio(tmp_path):
    nan = np.full(800, np.nan, dtype=np.float32)
    assert audio.signal_problem(nan) == "non-finite samples (NaN or Inf)"
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF\x00\x00\x00\x00WAVEjunk")
    with pytest.raises(AudioError, match="corrupt.wav: unreadable audio"):
        audio.load(corrupt)


@pytest.mark.parametrize(
    ("channels", "kwargs"),
    [(1, {}), (2, {}), (1, {"subtype": "PCM_16", "format": "WAVEX"}), (3, {"subtype": "PCM_16", "format": "WAVEX"})],
)
def test_pcm16_wav_decoder_matches_libsndfile_bit_for_bit(tmp_path, channels, kwargs):
    rng = np.random.default_rng(channels)
    samples = rng.integers(-32768, 32767, size=(4001, channels), dtype=np.int16)
    samples[:3] = [[-32768] * channels, [32767] * channels, [0] * channels]
    path = tmp_path / "x.wav"
    sf.write(str(path), samples, 22050, **kwargs)
    assert (path.read_bytes()[20:22] == b"\xfe\xff") == (kwargs.get("format") == "WAVEX")  # format tag
    decoded, rate = audio.decode_pcm16_wav(path.read_bytes())
    expected, expected_rate = audio.read_raw(path)
    assert rate == expected_rate == 22050
    assert decoded.dtype == np.float32 and decoded.shape == expected.shape == (4001, channels)
    assert np.array_equal(decoded, expected)
    assert decoded[0, 0] == -1.0 and decoded[1, 0] == np.float32(32767 / 32768)


def test_pcm16_wav_decoder_skips_unknown_chunks_and_odd_sizes(tmp_path):
    path = tmp_path / "plain.wav"
    sf.write(str(path), np.arange(-50, 51, dtype=np.int16)[:, None], 16000, subtype="PCM_16")
    raw = path.read_bytes()
    fmt_end = raw.index(b"data")
    junk = b"LIST" + (3).to_bytes(4, "little") + b"abc" + b"\x00"  # odd size, padded to even
    with_junk = raw[:12] + raw[12:fmt_end] + junk + raw[fmt_end:]
    with_junk = with_junk[:4] + (len(with_junk) - 8).to_bytes(4, "little") + with_junk[8:]
    decoded, _ = audio.decode_pcm16_wav(with_junk)
    assert np.array_equal(decoded[:, 0] * 32768, np.arange(-50, 51))


@pytest.mark.parametrize("subtype", ["PCM_24", "FLOAT", "PCM_U8", "FLAC"])
def test_pcm16_wav_decoder_declines_other_encodings(tmp_path, subtype):
    fmt = "FLAC" if subtype == "FLAC" else "WAV"
    path = tmp_path / f"x.{fmt.lower()}"
    sf.write(str(path), np.linspace(-0.5, 0.5, 800), 16000, subtype="PCM_16" if subtype == "FLAC" else subtype, format=fmt)
    assert audio.decode_pcm16_wav(path.read_bytes()) is None


def test_pcm16_wav_decoder_declines_truncated_or_foreign_bytes(tmp_path):
    path = tmp_path / "x.wav"
    sf.write(str(path), np.linspace(-0.5, 0.5, 800), 16000, subtype="PCM_16")
    raw = path.read_bytes()
    assert audio.decode_pcm16_wav(raw[:-10]) is None  # data chunk claims more than the file holds
    assert audio.decode_pcm16_wav(raw[:30]) is None
    assert audio.decode_pcm16_wav(b"RIFF\x00\x00\x00\x00WAVEjunk") is None
    assert audio.decode_pcm16_wav(b"") is None


def _rows(tmp_path: Path, n: int = 3) -> list[dict]:
    return [
        {
            "utterance_id": f"toy/s{i % 2}/{i}",
            "corpus": "toy",
            "path": str(tmp_path / f"{i}.wav"),
            "speaker": f"toy/s{i % 2}",
            "emotion": "anger" if i % 2 else "neutral",
            "sha256": f"{i:064x}",
            "duration_s": 1.5,
            "sample_rate": 16000,
            "channels": 1,
            "extra": {"k": i},
        }
        for i in range(n)
    ]


def test_manifest_roundtrip_is_byte_identical(tmp_path, workspace):
    frame = to_frame(_rows(tmp_path))
    s1 = write_manifest(frame, [Reject("x.wav", "all-silent audio")], "toy", workspace)
    bytes1 = workspace.manifest_path("toy").read_bytes()
    s2 = write_manifest(to_frame(list(reversed(_rows(tmp_path)))), [Reject("x.wav", "all-silent audio")], "toy", workspace)
    assert workspace.manifest_path("toy").read_bytes() == bytes1
    assert s1["digest"] == s2["digest"] == read_summary("toy", workspace)["digest"]
    back = read_manifest("toy", workspace)
    pd.testing.assert_frame_equal(back, frame)
    assert s1["utterances"] == 3 and s1["speakers"] == 2 and s1["classes"] == {"anger": 1, "neutral": 2}
    assert s1["rejects_by_reason"] == {"all-silent audio": 1}
    assert read_rejects("toy", workspace)["reason"].tolist() == ["all-silent audio"]
    assert not list(workspace.manifests.glob(".*tmp")), "temporary files left behind"


def test_manifest_digest_changes_with_content(tmp_path):
    rows = _rows(tmp_path)
    base = manifest_digest(to_frame(rows))
    rows[0]["sha256"] = "f" * 64
    assert manifest_digest(to_frame(rows)) != base
    assert manifest_digest(to_frame(_rows(tmp_path, 4))) != base


def test_manifest_rejects_duplicates_and_missing_fields(tmp_path, workspace):
    rows = _rows(tmp_path, 2)
    rows[1]["utterance_id"] = rows[0]["utterance_id"]
    with pytest.raises(ManifestError, match=r"duplicate utterance id 'toy/s0/0': .*0\.wav and .*1\.wav"):
        to_frame(rows)
    bad = _rows(tmp_path, 1)
    bad[0]["speaker"] = ""
    with pytest.raises(ManifestError, match="missing required field 'speaker'"):
        to_frame(bad)
    with pytest.raises(ManifestError, match="no manifest named 'nope'"):
        read_manifest("nope", workspace)
