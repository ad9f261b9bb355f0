"""Berlin EMO-DB: ``wav/03a01Fa.wav`` = speaker 03, text a01, emotion letter F, version a."""

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

NAME = "emodb"
LAYOUT = "wav/<speaker:2 digits><text:3><emotion letter><version>.wav (e.g. wav/03a01Fa.wav)"
EMOTIONS = {
    "W": "anger",
    "L": "boredom",
    "E": "disgust",
    "A": "fear",
    "F": "happiness",
    "T": "sadness",
    "N": "neutral",
}
# Published speaker genders.
GENDERS = {"03": "m", "08": "f", "09": "f", "10": "m", "11": "m", "12": "m", "13": "f", "14": "f", "15": "m", "16": "f"}
PATTERN = re.compile(r"^(?P<speaker>\d{2})(?P<text>[a-z]\d{2})(?P<emotion>[A-Za-z])(?P<version>[a-z]?)$")


def parse(path: Path) -> Candidate | Reject:
    """One file -> Candidate, or a Reject for an unparseable name or unknown emotion letter."""
    match = PATTERN.match(path.stem)
    if not match:
        return unparseable(path, LAYOUT)
    code = match["emotion"]
    if code not in EMOTIONS:
        return unknown_code(path, code, sorted(EMOTIONS))
    speaker = match["speaker"]
    fields: dict[str, Any] = {
        "utterance_id": f"{NAME}/{path.stem}",
        "corpus": NAME,
        "speaker": f"{NAME}/{speaker}",
        "gender": GENDERS.get(speaker, ""),
        "emotion": EMOTIONS[code],
        "raw_label": code,
        "text_id": match["text"],
        "extra": {"version": match["version"]},
    }
    return Candidate(path, fields)


@register_corpus(NAME, layout=LAYOUT, description="Berlin Database of Emotional Speech (10 speakers, 7 classes)")
def prepare(corpus_dir: Path, *, workers: int = 0) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Parse an EMO-DB folder: ``(rows, rejects)``. ``workers``: reader threads (0 = default)."""
    return scan_corpus(corpus_dir, lambda path, _root: parse(path), adapter=NAME, layout=LAYOUT, workers=workers)
