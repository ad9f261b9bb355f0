"""SAVEE: flat ``DC_a01.wav`` or ``AudioData/DC/a01.wav``; speakers DC JE JK KL (all male)."""

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

NAME = "savee"
LAYOUT = "<speaker>_<code><nn>.wav (e.g. DC_a01.wav) or AudioData/<speaker>/<code><nn>.wav; codes a d f h n sa su"
EMOTIONS = {
    "a": "anger",
    "d": "disgust",
    "f": "fear",
    "h": "happiness",
    "n": "neutral",
    "sa": "sadness",
    "su": "surprise",
}
FLAT = re.compile(r"^(?P<speaker>[A-Z]{2})_(?P<code>[a-z]+)(?P<num>\d+)$")
NESTED = re.compile(r"^(?P<code>[a-z]+)(?P<num>\d+)$")
SPEAKER = re.compile(r"^[A-Z]{2}$")


def parse(path: Path) -> Candidate | Reject:
    """One file -> Candidate, or a Reject for an unparseable name or unknown code."""
    flat = FLAT.match(path.stem)
    nested = NESTED.match(path.stem) if SPEAKER.match(path.parent.name) else None
    match = flat or nested
    if not match:
        return unparseable(path, LAYOUT)
    speaker = flat["speaker"] if flat else path.parent.name
    code, num = match["code"], match["num"]
    if code not in EMOTIONS:
        return unknown_code(path, code, sorted(EMOTIONS))
    fields: dict[str, Any] = {
        "utterance_id": f"{NAME}/{speaker}/{code}{num}",
        "corpus": NAME,
        "speaker": f"{NAME}/{speaker}",
        "gender": "m",
        "emotion": EMOTIONS[code],
        "raw_label": code,
        "text_id": f"{code}{num}",
    }
    return Candidate(path, fields)


@register_corpus(NAME, layout=LAYOUT, description="Surrey Audio-Visual Expressed Emotion (4 male speakers, 7 classes)")
def prepare(corpus_dir: Path, *, workers: int = 0) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Parse a SAVEE folder: ``(rows, rejects)``. ``workers``: reader threads (0 = default)."""
    return scan_corpus(corpus_dir, lambda path, _root: parse(path), adapter=NAME, layout=LAYOUT, workers=workers)
