"""A small synthetic emotional-speech corpus, made with numpy and scipy only (no network).

Each utterance is a few synthetic syllables: a glottal pulse train (with jitter and shimmer) shaped
by a spectral-tilt filter, plus aspiration noise (breathiness), passed through a cascade of formant
resonators per vowel, with short noise bursts as consonant onsets. Speakers differ in f0 and
formant scale (timbre); emotions differ in prosody and voice quality:

============  ==========  ==============  =====  ======  ====================================
emotion       f0 level    f0 range (st)   tempo  energy  voice quality
============  ==========  ==============  =====  ======  ====================================
anger         high        medium          fast   loud    tense (flat tilt), little breath
happiness     high        wide            brisk  raised  moderate tilt
neutral       normal      narrow          normal normal  normal
sadness       low         very narrow     slow   soft    breathy, steep tilt, more jitter
============  ==========  ==============  =====  ======  ====================================

(fear, boredom, surprise, disgust and calm have profiles too.) Files are written as
``<out>/wav/<speaker>/<speaker>_<emotion>_<nn>.wav`` (16-bit PCM) with a CSV ``<out>/demo.csv``
(``path,emotion,speaker,gender,text_id``) for the ``csv`` adapter. Every utterance has its own
generator seeded by ``(seed, speaker, emotion, n)``, so the output is byte-identical for a seed.
"""

from __future__ import annotations

import io
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ser_pipeline.config import require
from ser_pipeline.manifest import atomic_write_bytes

CSV_NAME = "demo.csv"
LEAD_S = 0.08  # silence before and after the utterance


@dataclass(frozen=True)
class Voice:
    """A synthetic speaker: name, gender, f0 in Hz, formant scale (timbre) and tilt offset."""

    name: str
    gender: str
    f0: float
    formant_scale: float
    tilt_offset: float


@dataclass(frozen=True)
class Prosody:
    """How an emotion shapes an utterance (multipliers relative to neutral)."""

    f0_scale: float  # f0 level
    range_st: float  # pitch-accent excursion in semitones
    rate: float  # syllable rate
    gain_db: float  # energy
    tilt: float  # one-pole glottal low-pass coefficient: higher = steeper tilt, softer voice
    breath: float  # aspiration noise relative to voicing
    jitter: float  # period perturbation (relative std)


PROFILES: dict[str, Prosody] = {
    "anger": Prosody(f0_scale=1.25, range_st=5.0, rate=1.30, gain_db=6.0, tilt=0.50, breath=0.02, jitter=0.010),
    "happiness": Prosody(f0_scale=1.30, range_st=8.0, rate=1.15, gain_db=2.5, tilt=0.72, breath=0.05, jitter=0.006),
    "neutral": Prosody(f0_scale=1.00, range_st=2.0, rate=1.00, gain_db=0.0, tilt=0.82, breath=0.05, jitter=0.006),
    "sadness": Prosody(f0_scale=0.86, range_st=0.8, rate=0.72, gain_db=-7.0, tilt=0.93, breath=0.30, jitter=0.025),
    "fear": Prosody(f0_scale=1.45, range_st=4.0, rate=1.35, gain_db=-1.0, tilt=0.80, breath=0.20, jitter=0.035),
    "boredom": Prosody(f0_scale=0.90, range_st=0.6, rate=0.78, gain_db=-4.0, tilt=0.90, breath=0.10, jitter=0.008),
    "surprise": Prosody(f0_scale=1.40, range_st=10.0, rate=1.10, gain_db=2.0, tilt=0.68, breath=0.05, jitter=0.006),
    "disgust": Prosody(f0_scale=0.95, range_st=3.0, rate=0.82, gain_db=0.0, tilt=0.80, breath=0.15, jitter=0.018),
    "calm": Prosody(f0_scale=0.95, range_st=1.5, rate=0.90, gain_db=-3.0, tilt=0.86, breath=0.08, jitter=0.005),
}

# Vowel formants (F1, F2, F3) in Hz for an adult male tract; scaled per speaker.
VOWELS: tuple[tuple[float, float, float], ...] = (
    (730.0, 1090.0, 2440.0),  # a
    (270.0, 2290.0, 3010.0),  # i
    (300.0, 870.0, 2240.0),  # u
    (530.0, 1840.0, 2480.0),  # e
    (570.0, 840.0, 2410.0),  # o
)
BANDWIDTHS = (80.0, 100.0, 150.0)
# "Sentences": vowel sequences (4-7 syllables); every speaker says each text in every emotion.
TEXTS: tuple[tuple[int, ...], ...] = (
    (0, 3, 1, 4),
    (2, 0, 4, 3, 1),
    (1, 1, 0, 4, 2, 3),
    (4, 0, 3, 2, 0, 1, 4),
    (3, 2, 1, 0, 4),
)
BASE_SYLLABLE_S = 0.2


def make_voice(index: int) -> Voice:
    """Speaker ``index`` (0-based): alternating male/female with spread f0 and timbre."""
    rank = index // 2
    if index % 2 == 0:
        return Voice(f"spk{index + 1:02d}", "m", 105.0 + 18.0 * (rank % 4), 1.0 - 0.05 * (rank % 3), 0.02 * (rank % 2))
    return Voice(f"spk{index + 1:02d}", "f", 195.0 + 25.0 * (rank % 4), 1.17 + 0.05 * (rank % 3), -0.02 * (rank % 2))


def resonator(freq: float, bandwidth: float, sample_rate: int) -> tuple[np.ndarray, np.ndarray]:
    """``(b, a)`` of a unity-DC-gain two-pole resonator at ``freq`` Hz."""
    r = np.exp(-np.pi * bandwidth / sample_rate)
    theta = 2 * np.pi * freq / sample_rate
    a = np.array([1.0, -2 * r * np.cos(theta), r * r])
    return np.array([a.sum()]), a


def pulse_train(
    f0: np.ndarray, voiced: np.ndarray, *, sample_rate: int, jitter: float, rng: np.random.Generator
) -> np.ndarray:
    """Glottal impulses following the contour ``f0`` (n,) Hz where ``voiced`` (n,) is True. -> (n,).

    Each period is perturbed by ``jitter`` (relative std) and each pulse amplitude by 3x that (shimmer).
    """
    n = f0.size
    out = np.zeros(n)
    positions = np.flatnonzero(voiced)
    if positions.size == 0:
        return out
    pos = float(positions[0])
    while pos < n:
        i = int(pos)
        if voiced[i]:
            out[i] += 1.0 + 3 * jitter * rng.standard_normal()
        period = sample_rate / max(float(f0[i]), 40.0)
        pos += period * (1.0 + jitter * rng.standard_normal())
    return out


def synthesize(
    voice: Voice, prosody: Prosody, text: Sequence[int], *, sample_rate: int, rng: np.random.Generator
) -> np.ndarray:
    """One utterance, float32 ``(n,)`` in [-1, 1]."""
    from scipy.signal import (
        lfilter,  # a slow import (~0.5 s): only when a recording is made, not to validate a config
    )

    rate = prosody.rate * rng.uniform(0.93, 1.07)
    durations = BASE_SYLLABLE_S / rate * rng.uniform(0.8, 1.25, size=len(text))
    gaps = rng.uniform(0.02, 0.05, size=len(text)) / rate
    lead = int(LEAD_S * sample_rate)
    starts, ends = [], []
    t = lead
    for dur, gap in zip(durations, gaps, strict=True):
        starts.append(t)
        t += int(dur * sample_rate)
        ends.append(t)
        t += int(gap * sample_rate)
    n = t + lead
    voiced = np.zeros(n, dtype=bool)
    envelope = np.zeros(n)
    semitones = np.zeros(n)
    for k, (s, e) in enumerate(zip(starts, ends, strict=True)):
        voiced[s:e] = True
        length = e - s
        ramp = min(int(0.025 * sample_rate), length // 3)
        env = np.ones(length)
        env[:ramp] = 0.5 - 0.5 * np.cos(np.pi * np.arange(ramp) / ramp)
        env[length - ramp:] = env[:ramp][::-1]
        envelope[s:e] = env
        stress = 1.0 if k % 2 == 0 else 0.35
        accent = prosody.range_st * stress * rng.uniform(0.6, 1.0)
        semitones[s:e] += accent * np.sin(np.pi * np.arange(length) / length)
    semitones -= 2.0 * np.arange(n) / n  # declination
    f0_base = voice.f0 * prosody.f0_scale * rng.uniform(0.96, 1.04)
    f0 = f0_base * 2.0 ** (semitones / 12.0)

    tilt = float(np.clip(prosody.tilt + voice.tilt_offset, 0.0, 0.98))
    source = pulse_train(f0, voiced, sample_rate=sample_rate, jitter=prosody.jitter, rng=rng)
    source = lfilter([1 - tilt], [1, -tilt], lfilter([1 - tilt], [1, -tilt], source))
    source = source / (np.sqrt(np.mean(source[voiced] ** 2)) + 1e-12)
    breath = rng.standard_normal(n) * prosody.breath * 2.0
    excitation = (source + breath) * envelope

    out = np.zeros(n)
    tail = int(0.02 * sample_rate)
    for vowel, s, e in zip(text, starts, ends, strict=True):
        seg = excitation[s:min(e + tail, n)]
        for freq, bw in zip(VOWELS[vowel], BANDWIDTHS, strict=True):
            b, a = resonator(freq * voice.formant_scale, bw, sample_rate)
            seg = lfilter(b, a, seg)
        out[s:s + seg.size] += seg
        burst = int(rng.uniform(0.015, 0.035) * sample_rate)  # consonant onset: high-passed noise
        b0 = max(s - burst, 0)
        noise = np.diff(rng.standard_normal(s - b0 + 1)) * np.hanning(s - b0)
        out[b0:s] += 0.25 * noise
    voiced_rms = np.sqrt(np.mean(out[voiced] ** 2)) + 1e-12
    gain = 0.06 * 10.0 ** ((prosody.gain_db + rng.uniform(-1.5, 1.5)) / 20.0)
    out = out / voiced_rms * gain + 3e-4 * rng.standard_normal(n)
    return np.clip(out, -0.99, 0.99).astype(np.float32)


def _wav_bytes(wave: np.ndarray, sample_rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, sample_rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` via a temp file and rename (no fsync: the CSV, written last with
    fsync, is what marks the corpus complete); an identical existing file is left untouched."""
    if path.exists() and path.read_bytes() == data:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def _stream_seed(seed: int, speaker: int, emotion: str, n: int) -> np.random.Generator:
    return np.random.default_rng([seed, speaker, zlib.crc32(emotion.encode()), n])


def generate_demo_corpus(
    out_dir: Path,
    *,
    seed: int = 0,
    n_speakers: int = 4,
    per_class: int = 20,
    classes: Sequence[str] = ("anger", "happiness", "neutral", "sadness"),
    sample_rate: int = 16000,
) -> Path:
    """Write the demo corpus under ``out_dir`` and return the path of its CSV.

    ``n_speakers * len(classes) * per_class`` utterances of about 1-2 s each.
    """
    require(n_speakers >= 1, "n_speakers", n_speakers, "must be at least 1")
    require(per_class >= 1, "per_class", per_class, "must be at least 1")
    require(len(classes) >= 1, "classes", classes, "must name at least one emotion")
    for name in classes:
        require(name in PROFILES, "classes", name, f"no demo profile; valid: {', '.join(sorted(PROFILES))}")
    require(8000 <= sample_rate <= 96000, "sample_rate", sample_rate, "must be between 8000 and 96000")
    out_dir = Path(out_dir)
    lines = ["path,emotion,speaker,gender,text_id"]
    for s in range(n_speakers):
        voice = make_voice(s)
        folder = out_dir / "wav" / voice.name
        folder.mkdir(parents=True, exist_ok=True)
        for emotion in classes:
            for n in range(per_class):
                text_index = n % len(TEXTS)
                wave = synthesize(voice, PROFILES[emotion], TEXTS[text_index], sample_rate=sample_rate,
                                  rng=_stream_seed(seed, s, emotion, n))
                rel = f"wav/{voice.name}/{voice.name}_{emotion}_{n:02d}.wav"
                _write_if_changed(out_dir / rel, _wav_bytes(wave, sample_rate))
                lines.append(f"{rel},{emotion},{voice.name},{voice.gender},t{text_index + 1:02d}")
    csv_path = out_dir / CSV_NAME
    atomic_write_bytes(csv_path, ("\n".join(lines) + "\n").encode())
    return csv_path
