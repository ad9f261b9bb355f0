"""Truncated and too-short recordings: real cut-off files made from generated audio.

A WAV cut to 200 bytes or to half its length still decodes with libsndfile (it returns the frames
the file holds), so ingest compares the frames the header declares with the frames decoded.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from ser_pipeline.audio import check_recording, declared_frames, load
from ser_pipeline.cli import app
from ser_pipeline.corpora import ingest, prepare
from ser_pipeline.errors import AudioError
from tests.conftest import make_tone

runner = CliRunner()
CASIA_DIR = ("wangzhe", "angry")


def cut(path: Path, n_bytes: int) -> Path:
    path.write_bytes(path.read_bytes()[:n_bytes])
    return path


@pytest.fixture
def corpus(tmp_path, write_wav):
    """A CASIA-layout folder: 201 whole (1 s), 202 cut to 200 bytes, 203 cut halfway, 204 lasting 10 ms."""
    folder = tmp_path / "c" / Path(*CASIA_DIR)
    write_wav(folder / "201.wav", 1.0)
    cut(write_wav(folder / "202.wav", 1.0), 200)
    half = write_wav(folder / "203.wav", 1.0)
    cut(half, half.stat().st_size // 2)
    write_wav(folder / "204.wav", 0.01)
    return tmp_path / "c"


def reasons(rejects) -> dict[str, str]:
    return {Path(r.path).name: r.reason for r in rejects}


def test_ingest_rejects_truncated_and_short_files_with_the_figures(corpus):
    rows, rejects = prepare("casia", corpus, workers=1)
    assert [Path(r["path"]).name for r in rows] == ["201.wav"]
    half_frames = ((corpus / Path(*CASIA_DIR) / "203.wav").stat().st_size - 44) // 2
    assert reasons(rejects) == {
        "202.wav": "truncated audio: header says 16000 frames, file holds 78",
        "203.wav": f"truncated audio: header says 16000 frames, file holds {half_frames}",
        "204.wav": "too short: 0.010 s < 0.25 s",
    }


def test_min_duration_is_an_adapter_option_and_a_flag(corpus, workspace):
    rows, rejects = prepare("casia", corpus, workers=1, min_duration="0.005")
    assert sorted(Path(r["path"]).name for r in rows) == ["201.wav", "204.wav"]
    assert sorted(reasons(rejects)) == ["202.wav", "203.wav"]
    rows, rejects = prepare("casia", corpus, workers=1, min_duration=1.5)
    assert rows == [] and reasons(rejects)["201.wav"] == "too short: 1.000 s < 1.5 s"
    summary = ingest("casia", corpus, "c", workspace)
    assert summary["options"] == {} and summary["rejects_by_reason"] == {"too short": 1, "truncated audio": 2}
    out = runner.invoke(app, ["ingest", "casia", str(corpus), "--root", str(workspace.root), "--min-duration", "0.005", "--json"])
    assert out.exit_code == 0, out.output
    doc = json.loads(out.stdout)
    assert (doc["utterances"], doc["options"]) == (2, {"min_duration": 0.005})


@pytest.mark.parametrize("value", ["abc", "-1"])
def test_bad_min_duration_exits_2_with_one_error_line(corpus, workspace, value):
    from ser_pipeline.cli import main

    with pytest.raises(SystemExit) as code:
        main(["ingest", "casia", str(corpus), "--root", str(workspace.root), "-o", f"min_duration={value}"])
    assert code.value.code == 2


def test_check_recording_is_the_per_file_check_for_prediction(corpus):
    folder = corpus / Path(*CASIA_DIR)
    samples, rate = check_recording(folder / "201.wav")
    assert samples.shape == (16000, 1) and rate == 16000
    with pytest.raises(AudioError, match=r"202\.wav: truncated audio: header says 16000 frames, file holds 78$"):
        check_recording(folder / "202.wav")
    with pytest.raises(AudioError, match=r"204\.wav: too short: 0\.010 s < 0\.25 s$"):
        check_recording(folder / "204.wav")
    with pytest.raises(AudioError, match="truncated audio"):
        load(folder / "203.wav", sample_rate=16000)  # load checks truncation too (no minimum duration)
    assert load(folder / "204.wav")[0].shape == (160,)


def test_cut_flac_is_rejected(tmp_path):
    path = tmp_path / "c" / Path(*CASIA_DIR) / "201.flac"
    path.parent.mkdir(parents=True)
    sf.write(str(path), make_tone(1.0), 16000)
    cut(path, path.stat().st_size // 2)
    _rows, rejects = prepare("casia", tmp_path / "c", workers=1)
    assert reasons(rejects)["201.flac"].split(":")[0] in {"unreadable audio", "truncated audio"}


def with_chunks(path: Path, before: bytes = b"", after: bytes = b"") -> Path:
    """Rewrite a WAV with extra chunks before and after ``data`` (RIFF size updated)."""
    raw = path.read_bytes()
    pos = raw.index(b"data")
    body = raw[12:pos] + before + raw[pos:] + after
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)
    return path


@pytest.mark.parametrize("subtype,channels", [("PCM_16", 1), ("PCM_24", 1), ("FLOAT", 1), ("PCM_16", 2)])
def test_whole_files_of_other_encodings_and_layouts_are_accepted(tmp_path, subtype, channels):
    folder = tmp_path / "c" / Path(*CASIA_DIR)
    folder.mkdir(parents=True)
    for i, name in enumerate(("201.wav", "202.wav", "203.flac")):
        if name.endswith(".flac") and subtype == "FLOAT":
            continue
        sf.write(str(folder / name), make_tone(0.5, channels=channels, seed=i), 16000, subtype=subtype)
    odd = b"LIST" + struct.pack("<I", 5) + b"INFOx" + b"\0"  # odd size: padded
    with_chunks(folder / "202.wav", before=odd, after=b"junk" + struct.pack("<I", 4) + b"abcd")
    assert declared_frames(folder / "202.wav") == 8000
    rows, rejects = prepare("casia", tmp_path / "c", workers=1)
    assert rejects == [] and all(r["duration_s"] == 0.5 and r["channels"] == channels for r in rows)


def test_streaming_wav_with_unknown_data_size_is_not_called_truncated(tmp_path):
    path = tmp_path / "s.wav"
    sf.write(str(path), make_tone(0.5), 16000)
    raw = bytearray(path.read_bytes())
    pos = raw.index(b"data")
    raw[pos + 4 : pos + 8] = struct.pack("<I", 0xFFFFFFFF)
    path.write_bytes(bytes(raw))
    assert declared_frames(path) is None
    samples, _ = check_recording(path)
    assert samples.shape[0] == 8000 and np.isfinite(samples).all()
