"""Toronto Emotional Speech Set: ``OAF_back_angry.wav`` = speaker OAF, word "back", emotion angry."""

from __future__ import annotations

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

NAME = "tess"
LAYOUT = "<speaker>_<word>_<emotion>.wav (e.g. OAF_back_angry.wav), in any sub-folders; speakers OAF, YAF"
EMOTIONS = {
    "angry": "anger",
    "disgust": "disgust",
    "fear": "fear",
    "happy": "happiness",
    "neutral": "neutral",
    "ps": "surprise",
    "sad": "sadness",
}


def parse(path: Path) -> Candidate | Reject:
    """One file -> Candidate, or a Reject for an unparseable name or unknown emotion."""
    parts = path.stem.split("_")
    if len(parts) != 3 or not all(parts):
        return unparseable(path, LAYOUT)
    speaker, word, code = parts[0].upper(), parts[1].lower(), parts[2].lower()
    if code not in EMOTIONS:
        return unknown_code(path, code, sorted(EMOTIONS))
    fields: dict[str, Any] = {
        "utterance_id": f"{NAME}/{speaker}_{word}_{code}",
        "corpus": NAME,
        "speaker": f"{NAME}/{speaker}",
        "gender": "f",
        "emotion": EMOTIONS[code],
        "raw_label": code,
        "text_id": word,
    }
    return Candidate(path, fields)


@register_corpus(NAME, layout=LAYOUT, description="Toronto Emotional Speech Set (2 female speakers, 7 classes)")
def prepare(corpus_dir: Path, *, workers: int = 0) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Parse a TESS folder: ``(rows, rejects)``. ``workers``: reader threads (0 = default)."""
    return scan_corpus(corpus_dir, lambda path, _root: parse(path), adapter=NAME, layout=LAYOUT, workers=workers)
