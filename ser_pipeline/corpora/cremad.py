"""CREMA-D: ``AudioWAV/1001_DFA_ANG_XX.wav`` = actor 1001, sentence DFA, emotion ANG, level XX.

Speaker genders come from ``VideoDemographics.csv`` (columns ActorID, Sex) when it is found in the
corpus folder or its parent; otherwise gender stays unknown.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from ser_pipeline.corpora import register_corpus
from ser_pipeline.corpora.common import (
    Candidate,
    audio_files,
    finalise,
    parse_all,
    require_dir,
    unknown_code,
    unparseable,
)
from ser_pipeline.manifest import Reject

NAME = "cremad"
LAYOUT = "<actor>_<sentence>_<emotion>_<level>.wav (e.g. AudioWAV/1001_DFA_ANG_XX.wav); optional VideoDemographics.csv"
EMOTIONS = {"ANG": "anger", "DIS": "disgust", "FEA": "fear", "HAP": "happiness", "NEU": "neutral", "SAD": "sadness"}
LEVELS = {"LO": "low", "MD": "medium", "HI": "high", "XX": "unspecified", "X": "unspecified"}
PATTERN = re.compile(r"^(?P<actor>\d{4})_(?P<sentence>[A-Z]{3})_(?P<emotion>[A-Z]{3})_(?P<level>[A-Z]{1,2})$")
DEMOGRAPHICS = "VideoDemographics.csv"


def read_genders(root: Path) -> dict[str, str]:
    """Actor id -> "m"/"f" from VideoDemographics.csv beside the audio, or an empty dict."""
    for folder in (root, root.parent):
        path = folder / DEMOGRAPHICS
        if path.is_file():
            with open(path, newline="") as fh:
                return {
                    row["ActorID"].strip(): row["Sex"].strip()[:1].lower()
                    for row in csv.DictReader(fh)
                    if row.get("ActorID") and row.get("Sex")
                }
    return {}


def parse(path: Path, genders: dict[str, str]) -> Candidate | Reject:
    """One file -> Candidate, or a Reject for an unparseable name or unknown code."""
    match = PATTERN.match(path.stem)
    if not match:
        return unparseable(path, LAYOUT)
    code, level = match["emotion"], match["level"]
    if code not in EMOTIONS:
        return unknown_code(path, code, sorted(EMOTIONS))
    if level not in LEVELS:
        return Reject(str(path), f"unknown intensity level: {level!r} in {path.name}")
    actor = match["actor"]
    fields: dict[str, Any] = {
        "utterance_id": f"{NAME}/{path.stem}",
        "corpus": NAME,
        "speaker": f"{NAME}/{actor}",
        "gender": genders.get(actor, ""),
        "emotion": EMOTIONS[code],
        "raw_label": code,
        "text_id": match["sentence"],
        "extra": {"level": LEVELS[level]},
    }
    return Candidate(path, fields)


@register_corpus(NAME, layout=LAYOUT, description="CREMA-D (91 actors, 6 classes)")
def prepare(corpus_dir: Path, *, workers: int = 0) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Parse a CREMA-D folder: ``(rows, rejects)``. ``workers``: reader threads (0 = default)."""
    root = require_dir(corpus_dir, adapter=NAME, layout=LAYOUT)
    genders = read_genders(root)
    candidates, rejects = parse_all(audio_files(root), lambda p: parse(p, genders))
    return finalise(candidates, rejects, corpus_dir=root, adapter=NAME, layout=LAYOUT, workers=workers or None)
