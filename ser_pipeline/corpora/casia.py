"""CASIA Chinese emotional speech: ``<speaker>/<emotion>/<id>.wav`` or ``<emotion>/<id>-<emotion>-<speaker>.wav``.

Both variants give the same utterance id, ``casia/<speaker>/<emotion>/<id>``; a folder that
holds both copies of one recording fails with a ManifestError naming both paths.
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

NAME = "casia"
LAYOUT = "<speaker>/<emotion>/<sentence-id>.wav (e.g. liuchanhg/angry/201.wav), or flat <emotion>/<id>-<emotion>-<speaker>.wav"
EMOTIONS = {
    "angry": "anger",
    "fear": "fear",
    "happy": "happiness",
    "neutral": "neutral",
    "sad": "sadness",
    "surprise": "surprise",
}
# Published speaker genders of the 4-speaker release (lower-cased keys).
GENDERS = {"liuchanhg": "f", "zhaoquanyin": "f", "wangzhe": "m", "zhaozuoxiang": "m"}
FLAT = re.compile(r"^(?P<id>[^-]+)-(?P<emotion>[^-]+)-(?P<speaker>[^-]+)$")


def parse(path: Path, root: Path) -> Candidate | Reject:
    """One file -> Candidate, or a Reject naming why its path does not fit the layout."""
    parts = path.relative_to(root).parts
    flat = FLAT.match(path.stem)
    if flat and len(parts) >= 2:
        speaker, code, sid = flat["speaker"], flat["emotion"], flat["id"]
        if parts[-2] != code:
            return Reject(str(path), f"inconsistent label: folder {parts[-2]!r} but name says {code!r}")
    elif len(parts) >= 3 and not flat:
        speaker, code, sid = parts[-3], parts[-2], path.stem
    else:
        return unparseable(path, LAYOUT)
    if code not in EMOTIONS:
        return unknown_code(path, code, sorted(EMOTIONS))
    fields: dict[str, Any] = {
        "utterance_id": f"{NAME}/{speaker}/{code}/{sid}",
        "corpus": NAME,
        "speaker": f"{NAME}/{speaker}",
        "gender": GENDERS.get(speaker.lower(), ""),
        "emotion": EMOTIONS[code],
        "raw_label": code,
        "text_id": sid,
    }
    return Candidate(path, fields)


@register_corpus(NAME, layout=LAYOUT, description="CASIA Chinese emotional speech (4 speakers, 6 classes)")
def prepare(corpus_dir: Path, *, workers: int = 0) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Parse a CASIA folder: ``(rows, rejects)``. ``workers``: reader threads (0 = default)."""
    return scan_corpus(corpus_dir, parse, adapter=NAME, layout=LAYOUT, workers=workers)
