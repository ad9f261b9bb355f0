"""Canonical emotion names shared by every corpus, and the label configuration (keep / merge).

Each adapter maps its own raw codes (``W``, ``angry``, ``05``, ``ang`` ...) onto the names in
:data:`CANONICAL`. A :class:`LabelConfig` then keeps a subset of classes and merges classes (for
example IEMOCAP ``excited -> happiness``) after parsing, so one adapter serves every protocol.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from typing import Any

from ser_pipeline.config import Spec, require
from ser_pipeline.manifest import Reject

CANONICAL: tuple[str, ...] = (
    "anger",
    "boredom",
    "calm",
    "disgust",
    "fear",
    "happiness",
    "neutral",
    "sadness",
    "surprise",
    "excited",
    "frustration",
    "contempt",
    "other",
)

# Common spellings users put in CSV files -> canonical name.
SYNONYMS: dict[str, str] = {
    "angry": "anger",
    "ang": "anger",
    "bored": "boredom",
    "disgusted": "disgust",
    "dis": "disgust",
    "fearful": "fear",
    "afraid": "fear",
    "fea": "fear",
    "happy": "happiness",
    "joy": "happiness",
    "hap": "happiness",
    "neu": "neutral",
    "sad": "sadness",
    "surprised": "surprise",
    "sur": "surprise",
    "ps": "surprise",
    "exc": "excited",
    "fru": "frustration",
    "frustrated": "frustration",
    "oth": "other",
}

EXCLUDED_REASON = "class not kept"


def canonical_name(label: str) -> str | None:
    """The canonical name for ``label`` (case-insensitive, synonyms allowed), or None if unknown."""
    key = label.strip().lower()
    if key in CANONICAL:
        return key
    return SYNONYMS.get(key)


def _check_names(field: str, names: Iterable[str]) -> None:
    for name in names:
        require(name in CANONICAL, field, name, f"not a canonical emotion; valid: {', '.join(CANONICAL)}")


@dataclasses.dataclass(frozen=True)
class LabelConfig(Spec):
    """Which classes a manifest keeps and which it merges.

    ``merge`` is a tuple of ``(source, target)`` pairs applied first; ``keep`` (empty = keep all)
    is then applied to the merged names. Names must be canonical.
    """

    keep: tuple[str, ...] = ()
    merge: tuple[tuple[str, str], ...] = ()

    def validate(self) -> None:
        _check_names("keep", self.keep)
        for pair in self.merge:
            require(len(pair) == 2, "merge", pair, "each merge must be a (source, target) pair")
        _check_names("merge", [name for pair in self.merge for name in pair])

    @classmethod
    def from_options(cls, *, keep: Iterable[str] | None = None, merge: Mapping[str, str] | None = None) -> LabelConfig:
        """Build from user options; synonyms (``happy``) are accepted and made canonical."""
        keep_names = tuple(sorted({canonical_name(k) or k for k in keep or ()}))
        pairs = tuple(sorted((canonical_name(s) or s, canonical_name(t) or t) for s, t in (merge or {}).items()))
        return cls(keep=keep_names, merge=pairs)

    @property
    def is_identity(self) -> bool:
        return not self.keep and not self.merge

    def map_emotion(self, emotion: str) -> str | None:
        """The emotion after merging, or None when the configuration does not keep it."""
        merged = dict(self.merge).get(emotion, emotion)
        if self.keep and merged not in self.keep:
            return None
        return merged

    def apply(self, rows: Iterable[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], list[Reject]]:
        """Merged rows that are kept, and a Reject for each row the configuration drops."""
        kept: list[dict[str, Any]] = []
        dropped: list[Reject] = []
        for row in rows:
            emotion = self.map_emotion(row["emotion"])
            if emotion is None:
                dropped.append(Reject(path=row["path"], reason=f"{EXCLUDED_REASON}: {row['emotion']}"))
            else:
                kept.append({**row, "emotion": emotion})
        return kept, dropped
