"""RAVDESS speech: ``Actor_XX/03-01-EE-II-SS-RR-AA.<ext>`` (any libsndfile extension, any rate).

Fields: modality (03 audio-only), vocal channel (01 speech, 02 song), emotion, intensity,
statement, repetition, actor (odd = male). Only audio-only speech files are kept.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ser_pipeline.corpora import register_corpus
from ser_pipeline.corpora.common import (
    Candidate,
    scan_corpus,
    unknown_code,
    unparseable,
)
from ser_pipeline.manifest import Reject

NAME = "ravdess"
LAYOUT = "Actor_XX/03-01-EE-II-SS-RR-AA.<wav|flac|...> (modality-channel-emotion-intensity-statement-repetition-actor)"
EMOTIONS = {
    "01": "neutral",
    "02": "calm",
    "03": "happiness",
    "04": "sadness",
    "05": "anger",
    "06": "fear",
    "07": "disgust",
    "08": "surprise",
}
INTENSITY = {"01": "normal", "02": "strong"}
PATTERN = re.compile(r"^(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})-(\d{2})$")
ACTOR_DIR = re.compile(r"^Actor_(\d+)$", re.IGNORECASE)


def parse(path: Path) -> Candidate | Reject:
    """One file -> Candidate, or a Reject (unparseable name, not speech, unknown code)."""
    match = PATTERN.match(path.stem)
    if not match:
        return unparseable(path, LAYOUT)
    modality, channel, code, intensity, statement, repetition, actor = match.groups()
    if modality != "03" or channel != "01":
        return Reject(str(path), f"not audio-only speech: modality {modality}, vocal channel {channel} in {path.name}")
    if code not in EMOTIONS:
        return unknown_code(path, code, sorted(EMOTIONS))
    if intensity not in INTENSITY:
        return Reject(str(path), f"unknown intensity code: {intensity!r} in {path.name}")
    folder = ACTOR_DIR.match(path.parent.name)
    if folder and int(folder[1]) != int(actor):
        return Reject(str(path), f"inconsistent actor: folder {path.parent.name} but name says actor {actor}")
    fields: dict[str, Any] = {
        "utterance_id": f"{NAME}/{path.stem}",
        "corpus": NAME,
        "speaker": f"{NAME}/Actor_{actor}",
        "gender": "m" if int(actor) % 2 else "f",
        "emotion": EMOTIONS[code],
        "raw_label": code,
        "text_id": statement,
        "extra": {"intensity": INTENSITY[intensity], "statement": int(statement), "repetition": int(repetition)},
    }
    return Candidate(path, fields)


@register_corpus(NAME, layout=LAYOUT, description="RAVDESS speech part (24 actors, 8 classes)")
def prepare(corpus_dir: Path, *, workers: int = 0) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Parse a RAVDESS folder: ``(rows, rejects)``. ``workers``: reader threads (0 = default)."""
    return scan_corpus(corpus_dir, lambda path, _root: parse(path), adapter=NAME, layout=LAYOUT, workers=workers)
