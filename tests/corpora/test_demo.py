"""The synthetic demo corpus: layout, determinism, prosody and learnability across speakers."""

from __future__ import annotations

import csv

import librosa
import numpy as np
import pytest
import soundfile as sf
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from ser_pipeline.corpora import ingest
from ser_pipeline.corpora.demo import PROFILES, Voice, generate_demo_corpus, make_voice, synthesize
from ser_pipeline.errors import ConfigError

CLASSES = ("anger", "happiness", "neutral", "sadness")


@pytest.fixture(scope="module")
def small_demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    csv_path = generate_demo_corpus(out, seed=3, per_class=6)
    with open(csv_path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    return out, csv_path, rows


def test_layout_and_csv(small_demo):
    out, csv_path, rows = small_demo
    assert csv_path == out / "demo.csv"
    assert list(rows[0]) == ["path", "emotion", "speaker", "gender", "text_id"]
    assert len(rows) == 4 * 4 * 6
    assert rows[0]["path"] == "wav/spk01/spk01_anger_00.wav"
    assert {r["speaker"] for r in rows} == {"spk01", "spk02", "spk03", "spk04"}
    assert {r["gender"] for r in rows} == {"m", "f"}
    for r in rows[:: 17]:
        info = sf.info(str(out / r["path"]))
        assert info.samplerate == 16000 and info.channels == 1
        assert 0.7 <= info.duration <= 2.8


def test_deterministic_for_a_seed(small_demo, tmp_path):
    out, _, rows = small_demo
    other = generate_demo_corpus(tmp_path / "again", seed=3, per_class=6).parent
    for r in rows[::9]:
        assert (other / r["path"]).read_bytes() == (out / r["path"]).read_bytes()
    third = generate_demo_corpus(tmp_path / "seed4", seed=4, per_class=1).parent
    assert (third / rows[0]["path"]).read_bytes() != (out / rows[0]["path"]).read_bytes()


def test_prosody_orders_f0_energy_and_tempo():
    voice = make_voice(0)
    stats = {}
    for emotion in CLASSES:
        f0s, rms, durs = [], [], []
        for n in range(3):
            wave = synthesize(voice, PROFILES[emotion], (0, 3, 1, 4), sample_rate=16000,
                              rng=np.random.default_rng([7, n]))
            f0 = librosa.yin(wave, fmin=60, fmax=500, sr=16000, frame_length=1024)
            loud = librosa.feature.rms(y=wave, frame_length=1024, hop_length=256)[0] > 0.3 * np.sqrt(np.mean(wave**2))
            f0s.append(np.median(f0[loud[: f0.size]]))
            rms.append(np.sqrt(np.mean(wave**2)))
            durs.append(wave.size / 16000)
        stats[emotion] = (np.mean(f0s), np.mean(rms), np.mean(durs))
    f0 = {e: s[0] for e, s in stats.items()}
    energy = {e: s[1] for e, s in stats.items()}
    duration = {e: s[2] for e, s in stats.items()}
    assert f0["sadness"] < f0["neutral"] < f0["anger"]
    assert f0["neutral"] < f0["happiness"]
    assert energy["sadness"] < energy["neutral"] < energy["anger"]
    assert duration["anger"] < duration["neutral"] < duration["sadness"]


def test_speakers_differ_in_pitch_and_timbre():
    voices = [make_voice(i) for i in range(4)]
    assert len({v.f0 for v in voices}) == 4
    assert len({v.formant_scale for v in voices}) >= 2
    assert all(isinstance(v, Voice) for v in voices)


def mean_log_mel(path):
    wave, sr = sf.read(str(path), dtype="float32")
    mel = librosa.feature.melspectrogram(y=wave, sr=sr, n_fft=512, hop_length=160, n_mels=40)
    return np.log(mel + 1e-8).mean(axis=1)


def test_classes_are_learnable_across_speakers(small_demo):
    out, _, rows = small_demo
    x = np.stack([mean_log_mel(out / r["path"]) for r in rows])
    y = np.array([r["emotion"] for r in rows])
    speakers = np.array([r["speaker"] for r in rows])
    uas = []
    for held in sorted(set(speakers)):
        train = speakers != held
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000)).fit(x[train], y[train])
        uas.append(balanced_accuracy_score(y[~train], clf.predict(x[~train])))
    assert np.mean(uas) > 0.6, uas  # chance is 0.25
    assert min(uas) > 0.4, uas


def test_ingests_through_the_csv_adapter(small_demo, workspace):
    _, csv_path, _ = small_demo
    summary = ingest("csv", csv_path, "demo", workspace)
    assert summary["utterances"] == 96 and summary["speakers"] == 4 and summary["rejected"] == 0
    assert summary["classes"] == {c: 24 for c in CLASSES}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"n_speakers": 0}, "n_speakers"), ({"per_class": 0}, "per_class"), ({"classes": ("joy",)}, "classes"),
     ({"sample_rate": 100}, "sample_rate")],
)
def test_bad_arguments_name_the_field(tmp_path, kwargs, field):
    with pytest.raises(ConfigError, match=field):
        generate_demo_corpus(tmp_path, **kwargs)
    assert not (tmp_path / "demo.csv").exists()
