"""Corpus exploration: counts, durations, rejects by reason, plots written."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from ser_pipeline.explore import corpus_summary, mean_logmel_by_class, write_exploration


def manifest() -> pd.DataFrame:
    rows = []
    for i in range(12):
        rows.append({"utterance_id": f"c/u{i}", "speaker": f"c/s{i % 3}", "emotion": ["anger", "sadness"][i % 2],
                     "duration_s": 1.0 + i, "sample_rate": 16000 if i < 10 else 44100, "channels": 1 if i else 2})
    return pd.DataFrame(rows)


REJECTS = pd.DataFrame({"path": ["a.wav", "b.wav", "c.wav"],
                        "reason": ["too short: 0.004 s < 0.25 s", "too short: 0.1 s < 0.25 s",
                                   "truncated audio: header says 100 frames, file holds 3"]})


def test_summary_counts_durations_rates_and_rejects():
    s = corpus_summary(manifest(), REJECTS)
    assert s["utterances"] == 12 and s["speakers"] == 3
    assert s["classes"] == {"anger": 6, "sadness": 6}
    assert s["per_speaker"]["c/s0"] == {"anger": 2, "sadness": 2}
    assert s["duration_s"]["anger"]["mean"] == pytest.approx(np.mean([1, 3, 5, 7, 9, 11]))
    assert s["duration_s"]["sadness"]["max"] == 12.0
    assert s["sample_rates"] == {"16000": 10, "44100": 2} and s["channels"] == {"1": 11, "2": 1}
    assert s["rejected"] == 3 and s["rejects_by_reason"] == {"too short": 2, "truncated audio": 1}


def test_mean_logmel_per_class():
    feats = {"a": np.ones((3, 4, 5)), "b": 3 * np.ones((3, 4, 7)), "c": np.full((3, 4, 2), 10.0)}
    profiles = mean_logmel_by_class(feats, {"a": "x", "b": "x", "c": "y"})
    np.testing.assert_allclose(profiles["x"], np.full(4, 2.0))
    np.testing.assert_allclose(profiles["y"], np.full(4, 10.0))


def test_writes_json_and_plots(tmp_path):
    frame = manifest()
    feats = {u: np.random.default_rng(i).normal(size=(3, 8, 20)) for i, u in enumerate(frame.utterance_id)}
    summary = write_exploration(frame, tmp_path / "out", rejects=REJECTS, features=feats, title="c")
    for name in summary["files"]:
        assert (tmp_path / "out" / name).stat().st_size > 1000 or name == "explore.json"
    assert "mean_logmel_by_class.png" in summary["files"]
    on_disk = json.loads((tmp_path / "out" / "explore.json").read_text())
    assert on_disk["classes"] == {"anger": 6, "sadness": 6} and len(on_disk["mean_logmel_by_class"]["anger"]) == 8
