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
