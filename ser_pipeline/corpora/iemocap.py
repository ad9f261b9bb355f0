"""IEMOCAP: ``SessionN/sentences/wav/<dialog>/<utt>.wav`` with labels in
``SessionN/dialog/EmoEvaluation/<dialog>.txt``.

A label line reads ``[6.2901 - 8.2357]<TAB>Ses01F_impro01_F000<TAB>neu<TAB>[2.5000, 2.5000, 2.5000]``.
Session = ``Ses01``; speaker = session + the gender letter of the utterance's last part
(``Ses01F_impro01_M003`` is spoken by ``iemocap/Ses01M``). Options: ``improvised_only`` keeps
improvised dialogs only; ``four_class`` keeps anger, happiness (+ excited), neutral, sadness.
"""

from __future__ import annotations

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
from ser_pipeline.corpora.emotions import EXCLUDED_REASON
from ser_pipeline.errors import CorpusLayoutError
from ser_pipeline.manifest import Reject

NAME = "iemocap"
LAYOUT = (
    "Session<N>/sentences/wav/<dialog>/<utterance>.wav with labels in Session<N>/dialog/EmoEvaluation/<dialog>.txt "
    "(e.g. Session1/sentences/wav/Ses01F_impro01/Ses01F_impro01_F000.wav)"
)
EMOTIONS = {
    "ang": "anger",
    "hap": "happiness",
    "exc": "excited",
    "sad": "sadness",
    "neu": "neutral",
    "fru": "frustration",
    "fea": "fear",
    "sur": "surprise",
    "dis": "disgust",
    "oth": "other",
}
NO_AGREEMENT = "xxx"
FOUR_CLASS = {"anger": "anger", "happiness": "happiness", "excited": "happiness", "neutral": "neutral", "sadness": "sadness"}
LABEL_LINE = re.compile(
    r"^\[(?P<start>[\d.]+)\s*-\s*(?P<end>[\d.]+)\]\s+(?P<utt>\S+)\s+(?P<label>\S+)\s+\[(?P<vad>[^\]]*)\]"
)
UTTERANCE = re.compile(r"^(?P<session>Ses\d{2})[MF]_(?P<kind>[a-z]+)[^_]*(?:_.+)*_(?P<gender>[MF])\d{3}$")
SESSION_DIR = re.compile(r"^Session\d+$")


def parse_label_file(text: str) -> dict[str, dict[str, Any]]:
    """Utterance id -> ``{label, start, end, vad}`` from one EmoEvaluation file's text."""
    labels: dict[str, dict[str, Any]] = {}
    for line in text.splitlines():
        match = LABEL_LINE.match(line.strip())
        if match:
            vad = [float(v) for v in match["vad"].split(",") if v.strip()]
            labels[match["utt"]] = {
                "label": match["label"],
                "start": float(match["start"]),
                "end": float(match["end"]),
                "vad": vad,
            }
    return labels


def session_dirs(root: Path) -> list[Path]:
    """``root`` itself when it is a ``SessionN`` folder, else its ``SessionN`` children."""
    if SESSION_DIR.match(root.name):
        return [root]
    return sorted(p for p in root.iterdir() if p.is_dir() and SESSION_DIR.match(p.name))


def read_labels(sessions: list[Path]) -> dict[str, dict[str, Any]]:
    """Every label line of every ``dialog/EmoEvaluation/*.txt`` of the sessions."""
    labels: dict[str, dict[str, Any]] = {}
    for session in sessions:
        for path in sorted((session / "dialog" / "EmoEvaluation").glob("*.txt")):
            if not path.name.startswith("."):
                labels.update(parse_label_file(path.read_text(errors="replace")))
    return labels


def parse(path: Path, labels: dict[str, dict[str, Any]], *, improvised_only: bool, four_class: bool) -> Candidate | Reject:
    """One sentence file -> Candidate, or a Reject with the reason."""
    match = UTTERANCE.match(path.stem)
    if not match:
        return unparseable(path, LAYOUT)
    label = labels.get(path.stem)
    if label is None:
        return Reject(str(path), f"no label: {path.stem} is in no EmoEvaluation file")
    code = label["label"]
    if code == NO_AGREEMENT:
        return Reject(str(path), f"no agreed label: {code}")
    if code not in EMOTIONS:
        return unknown_code(path, code, sorted(EMOTIONS))
    improvised = match["kind"] == "impro"
    if improvised_only and not improvised:
        return Reject(str(path), "excluded by option: scripted dialog (improvised_only)")
    emotion = EMOTIONS[code]
    if four_class:
        if emotion not in FOUR_CLASS:
            return Reject(str(path), f"{EXCLUDED_REASON}: {emotion} (four_class)")
        emotion = FOUR_CLASS[emotion]
    session = match["session"]
    fields: dict[str, Any] = {
        "utterance_id": f"{NAME}/{path.stem}",
        "corpus": NAME,
        "speaker": f"{NAME}/{session}{match['gender']}",
        "gender": match["gender"].lower(),
        "session": session,
        "emotion": emotion,
        "raw_label": code,
        "extra": {
            "dialog": path.parent.name,
            "improvised": improvised,
            "start": label["start"],
            "end": label["end"],
            "vad": label["vad"],
        },
    }
    return Candidate(path, fields)


@register_corpus(
    NAME,
    layout=LAYOUT,
    description="IEMOCAP (5 sessions, 10 speakers); excited can be merged into happiness",
    options={
        "improvised_only": "keep improvised dialogs only (true/false)",
        "four_class": "anger, happiness (+excited), neutral, sadness only (true/false)",
    },
)
def prepare(
    corpus_dir: Path, *, improvised_only: bool = False, four_class: bool = False, workers: int = 0
) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Parse an IEMOCAP release folder (or one ``SessionN`` folder): ``(rows, rejects)``."""
    root = require_dir(corpus_dir, adapter=NAME, layout=LAYOUT)
    sessions = session_dirs(root)
    if not sessions:
        raise CorpusLayoutError(f"{root}: no Session<N> folder for adapter {NAME!r}; expected layout: {LAYOUT}")
    labels = read_labels(sessions)
    paths = [p for s in sessions for p in audio_files(s / "sentences" / "wav")]
    candidates, rejects = parse_all(
        paths, lambda p: parse(p, labels, improvised_only=improvised_only, four_class=four_class)
    )
    return finalise(candidates, rejects, corpus_dir=root, adapter=NAME, layout=LAYOUT, workers=workers or None)
