"""Any corpus described by a CSV: columns ``path,emotion,speaker`` and optional ``session,text_id,gender``.

Relative paths resolve against the CSV's folder and must stay inside it; absolute paths are used
as given. Emotions may be canonical names or common spellings (``angry``, ``happy``...). The
corpus name (id and speaker prefix) defaults to the CSV's file stem; ``corpus=NAME`` overrides.
Utterance ids are ``<corpus>/<path relative to the CSV folder, without extension>``.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

from ser_pipeline.corpora import register_corpus
from ser_pipeline.corpora.common import AUDIO_EXTENSIONS, Candidate, finalise, unknown_code
from ser_pipeline.corpora.emotions import CANONICAL, canonical_name
from ser_pipeline.errors import CorpusLayoutError
from ser_pipeline.manifest import Reject

NAME = "csv"
LAYOUT = "a CSV file (or a folder holding exactly one) with columns path,emotion,speaker[,session,text_id,gender]"
REQUIRED = ("path", "emotion", "speaker")
OPTIONAL = ("session", "text_id", "gender")
GENDERS = {"m": "m", "male": "m", "f": "f", "female": "f", "": ""}
CORPUS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def find_csv(corpus: Path) -> Path:
    """The CSV file: ``corpus`` itself, or the single ``*.csv`` in the folder ``corpus``."""
    if corpus.is_file():
        return corpus.resolve()
    if corpus.is_dir():
        found = sorted(corpus.glob("*.csv"))
        if len(found) == 1:
            return found[0].resolve()
        what = "no CSV file" if not found else f"{len(found)} CSV files ({', '.join(p.name for p in found)})"
        raise CorpusLayoutError(f"{corpus}: {what}; pass the CSV itself. Expected layout: {LAYOUT}")
    raise CorpusLayoutError(f"{corpus}: no such file or folder; expected layout: {LAYOUT}")


def read_table(csv_path: Path) -> list[dict[str, str]]:
    """The CSV's rows; CorpusLayoutError names the file and any missing column."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = [c.strip() for c in reader.fieldnames or []]
            missing = [c for c in REQUIRED if c not in columns]
            if missing:
                raise CorpusLayoutError(f"{csv_path}: missing column(s) {missing}; expected layout: {LAYOUT}")
            return [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CorpusLayoutError(f"{csv_path}: not a readable CSV ({exc}); expected layout: {LAYOUT}") from exc


def resolve_path(base: Path, text: str) -> Path | str:
    """Absolute audio path, or the reason it is not acceptable."""
    if not text:
        return "empty path"
    path = Path(text)
    if path.is_absolute():
        return path
    resolved = (base / path).resolve()
    if not resolved.is_relative_to(base):
        return f"path outside corpus folder: {text}"
    return resolved


def parse_row(row: dict[str, str], line: int, *, base: Path, corpus: str) -> Candidate | Reject:
    """One CSV row (``line`` = its line number) -> Candidate, or a Reject with the reason."""
    resolved = resolve_path(base, row.get("path", ""))
    where = f"{base / row.get('path', '')}" if row.get("path") else f"{base}: line {line}"
    if isinstance(resolved, str):
        return Reject(where, f"bad path: {resolved} (line {line})")
    if resolved.suffix.lower().lstrip(".") not in AUDIO_EXTENSIONS:
        return Reject(str(resolved), f"unparseable name: {resolved.name} is not an audio file (line {line})")
    if not resolved.is_file():
        return Reject(str(resolved), f"missing file: {resolved.name} (line {line})")
    emotion = canonical_name(row.get("emotion", ""))
    if emotion is None:
        return unknown_code(resolved, row.get("emotion", ""), CANONICAL)
    if not row.get("speaker"):
        return Reject(str(resolved), f"missing speaker: empty speaker (line {line})")
    gender = GENDERS.get(row.get("gender", "").lower())
    if gender is None:
        return Reject(str(resolved), f"bad gender: {row['gender']!r} (line {line}; use m/f)")
    rel = resolved.relative_to(base) if resolved.is_relative_to(base) else resolved.relative_to(resolved.anchor)
    fields: dict[str, Any] = {
        "utterance_id": f"{corpus}/{rel.with_suffix('').as_posix()}",
        "corpus": corpus,
        "speaker": f"{corpus}/{row['speaker']}",
        "gender": gender,
        "session": row.get("session", ""),
        "emotion": emotion,
        "raw_label": row["emotion"],
        "text_id": row.get("text_id", ""),
    }
    return Candidate(resolved, fields)


@register_corpus(
    NAME,
    layout=LAYOUT,
    description="Generic corpus described by a CSV (the demo corpus uses it)",
    options={"corpus": "corpus name used as id and speaker prefix (default: the CSV file stem)"},
)
def prepare(corpus_dir: Path, *, corpus: str = "", workers: int = 0) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Parse a corpus CSV: ``(rows, rejects)``. ``corpus_dir`` is the CSV or its folder."""
    csv_path = find_csv(Path(corpus_dir).expanduser())
    name = corpus or csv_path.stem
    if not CORPUS_NAME.match(name):
        raise CorpusLayoutError(f"{csv_path}: corpus name {name!r} must be letters, digits, '.', '_' or '-'")
    base = csv_path.parent
    candidates: list[Candidate] = []
    rejects: list[Reject] = []
    for line, row in enumerate(read_table(csv_path), start=2):
        result = parse_row(row, line, base=base, corpus=name)
        (candidates if isinstance(result, Candidate) else rejects).append(result)
    return finalise(candidates, rejects, corpus_dir=csv_path, adapter=NAME, layout=LAYOUT, workers=workers or None)
