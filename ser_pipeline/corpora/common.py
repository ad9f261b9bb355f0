"""Shared per-file work for every adapter: find audio files, validate them, build manifest rows.

An adapter parses names and label files into :class:`Candidate` objects (plus a
:class:`Reject` for each name it cannot parse), then calls :func:`finalise`, which reads every
candidate with :func:`ser_pipeline.audio.inspect_file` and hashes it in a thread pool. A file the
audio layer refuses becomes a Reject with the reason; it never stops the corpus.

Reject reasons read ``"<category>: <detail>"``; the manifest summary counts by category.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import soundfile as sf

from ser_pipeline.audio import TOO_SHORT, TRUNCATED, AudioInfo, duration_problem, file_sha256, inspect_file
from ser_pipeline.errors import AudioError, CorpusLayoutError
from ser_pipeline.manifest import Reject

# Extensions libsndfile reads (its format names) plus their common aliases.
AUDIO_EXTENSIONS: frozenset[str] = frozenset(
    {fmt.lower() for fmt in sf.available_formats()} | {"wav", "wave", "flac", "ogg", "oga", "opus", "aif", "aiff", "au", "snd", "caf", "w64", "mp3"}
)

AUDIO_PROBLEMS = (
    "unreadable audio",
    "zero-length audio",
    "all-silent audio",
    "non-finite samples",
    TRUNCATED,
    TOO_SHORT,
)

UNPARSEABLE = "unparseable name"
UNKNOWN_CODE = "unknown emotion code"


def default_workers() -> int:
    """Threads for reading and hashing: I/O bound, libsndfile releases the GIL."""
    return min(8, 2 * (os.cpu_count() or 1))


@dataclass(frozen=True)
class Candidate:
    """A file whose name parsed: everything but the audio facts. ``fields`` are manifest columns."""

    path: Path
    fields: dict[str, Any] = field(default_factory=dict)


def require_dir(corpus_dir: Path | str, *, adapter: str, layout: str) -> Path:
    """The absolute corpus folder; CorpusLayoutError naming it and the layout when it is missing."""
    path = Path(corpus_dir).expanduser()
    if not path.is_dir():
        raise CorpusLayoutError(f"{path}: no such corpus folder for adapter {adapter!r}; expected layout: {layout}")
    return path.resolve()


def audio_files(root: Path) -> list[Path]:
    """Every audio file under ``root`` (recursive, sorted), skipping hidden files and folders.

    Symlinked folders are followed (corpora are often assembled from links), each real folder once.
    """
    found = []
    visited: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in visited:
            dirnames[:] = []
            continue
        visited.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in filenames:
            if name.startswith("."):
                continue
            suffix = name.rsplit(".", 1)[-1].lower() if "." in name else ""
            if suffix in AUDIO_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found)


def audio_reason(exc: AudioError, path: Path) -> str:
    """Turn an AudioError message into ``"<category>: <detail>"`` without the path prefix."""
    message = str(exc)
    prefix = f"{path}: "
    if message.startswith(prefix):
        message = message[len(prefix):]
    for category in AUDIO_PROBLEMS:
        if message.startswith(category):
            detail = message[len(category):].strip(" :()")
            return f"{category}: {detail}" if detail else category
    return f"unusable audio: {message}"


def unparseable(path: Path, expected: str) -> Reject:
    return Reject(path=str(path), reason=f"{UNPARSEABLE}: {path.name} (expected {expected})")


def unknown_code(path: Path, code: str, valid: Iterable[str]) -> Reject:
    return Reject(path=str(path), reason=f"{UNKNOWN_CODE}: {code!r} in {path.name} (valid: {', '.join(valid)})")


def build_row(candidate: Candidate, info: AudioInfo, sha256: str) -> dict[str, Any]:
    """A manifest row: the parsed fields plus path, duration, rate, channels and hash."""
    return {
        "gender": "",
        "session": "",
        "text_id": "",
        "extra": {},
        **candidate.fields,
        "path": str(candidate.path),
        "duration_s": round(info.duration_s, 6),
        "sample_rate": info.sample_rate,
        "channels": info.channels,
        "sha256": sha256,
    }


def check_file(candidate: Candidate) -> dict[str, Any] | Reject:
    """Read and hash one file: its row, or a Reject with the reason."""
    try:
        info = inspect_file(candidate.path)
        digest = file_sha256(candidate.path)
    except AudioError as exc:
        return Reject(path=str(candidate.path), reason=audio_reason(exc, candidate.path))
    except OSError as exc:
        return Reject(path=str(candidate.path), reason=f"unreadable audio: {exc.strerror or exc}")
    return build_row(candidate, info, digest)


def finalise(
    candidates: list[Candidate],
    rejects: list[Reject],
    *,
    corpus_dir: Path,
    adapter: str,
    layout: str,
    workers: int | None = None,
) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Validate every candidate's audio (in a thread pool) and return ``(rows, rejects)``, sorted.

    Raises CorpusLayoutError naming ``corpus_dir`` and the layout when no file name parsed.
    """
    if not candidates:
        seen = f"; {len(rejects)} file(s) did not match, e.g. {rejects[0].path}" if rejects else "; no audio files found"
        raise CorpusLayoutError(
            f"{corpus_dir}: no file matches the {adapter!r} layout{seen}; expected layout: {layout}"
        )
    n_workers = workers or default_workers()
    if n_workers > 1 and len(candidates) > 1:
        with ThreadPoolExecutor(max_workers=n_workers) as pool:
            results = list(pool.map(check_file, candidates))
    else:
        results = [check_file(c) for c in candidates]
    rows = [r for r in results if isinstance(r, dict)]
    all_rejects = list(rejects) + [r for r in results if isinstance(r, Reject)]
    rows.sort(key=lambda r: r["utterance_id"])
    all_rejects.sort(key=lambda r: (r.path, r.reason))
    return rows, all_rejects


def drop_short(rows: list[dict[str, Any]], min_duration_s: float) -> tuple[list[dict[str, Any]], list[Reject]]:
    """Split rows into those lasting at least ``min_duration_s`` and Rejects ``too short: 0.004 s < 0.25 s``."""
    kept: list[dict[str, Any]] = []
    short: list[Reject] = []
    for row in rows:
        problem = duration_problem(round(row["duration_s"] * row["sample_rate"]), row["sample_rate"], min_duration_s)
        if problem:
            short.append(Reject(path=row["path"], reason=problem))
        else:
            kept.append(row)
    return kept, short


def parse_all(paths: Iterable[Path], parse: Any) -> tuple[list[Candidate], list[Reject]]:
    """Apply ``parse(path) -> Candidate | Reject`` to every path and split the results."""
    candidates: list[Candidate] = []
    rejects: list[Reject] = []
    for path in paths:
        result = parse(path)
        (candidates if isinstance(result, Candidate) else rejects).append(result)
    return candidates, rejects


def scan_corpus(
    corpus_dir: Path | str,
    parse: Callable[[Path, Path], Candidate | Reject],
    *,
    adapter: str,
    layout: str,
    workers: int = 0,
) -> tuple[list[dict[str, Any]], list[Reject]]:
    """The whole of a file-name adapter: check the folder, ``parse(path, root)`` every audio file,
    validate the audio of the candidates and return ``(rows, rejects)``."""
    root = require_dir(corpus_dir, adapter=adapter, layout=layout)
    candidates, rejects = parse_all(audio_files(root), lambda path: parse(path, root))
    return finalise(candidates, rejects, corpus_dir=root, adapter=adapter, layout=layout, workers=workers or None)
