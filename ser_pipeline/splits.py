"""Evaluation protocols: pure functions from a manifest to folds of utterance ids.

Folds are made before augmentation, from the manifest alone, and are deterministic for a seed.
Protocols (registry :data:`PROTOCOLS`):

- ``loso``: leave one speaker out; one fold per speaker; ``val`` empty.
- ``loso_val``: the 8 train / 1 validation / 1 test scheme: test = one speaker, validation = the
  next speaker in sorted order (wrapping around), train = the rest.
- ``loso_session``: leave one session out (IEMOCAP); ProtocolError when the corpus has no sessions.
- ``speaker_kfold``: ``k`` folds (default 5) of whole speakers, balanced by utterance count.
- ``random``: a stratified random split (``test_fraction`` default 0.2); speaker-dependent and
  named ``random-speaker-dependent`` so every report says so.
- ``cross_corpus``: train on the corpora named in ``train``, test on the corpus ``test``, on the
  classes they share (:func:`shared_classes`); the fold's ``note`` names the classes dropped.

An empty ``val`` means the trainer picks validation from the training ids:
:func:`rotated_validation` (speaker-independent: a different speaker per test fold) or
:func:`holdout_validation` (the older fixed pick, kept for comparison).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from ser_pipeline.errors import ProtocolError
from ser_pipeline.registry import Registry

REQUIRED_COLUMNS = ("utterance_id", "speaker", "emotion")


@dataclass(frozen=True)
class Fold:
    """One train / validation / test split of utterance ids (sorted tuples)."""

    name: str
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    speaker_dependent: bool
    note: str = ""  # what the protocol changed, e.g. classes a cross-corpus fold dropped

    def to_dict(self) -> dict[str, Any]:
        out = {
            "name": self.name,
            "train": list(self.train),
            "val": list(self.val),
            "test": list(self.test),
            "speaker_dependent": self.speaker_dependent,
        }
        if self.note:
            out["note"] = self.note
        return out


ProtocolFn = Callable[..., list[Fold]]
PROTOCOLS: Registry[ProtocolFn] = Registry("protocol")


def _check_manifest(manifest: pd.DataFrame, columns: Sequence[str] = REQUIRED_COLUMNS) -> None:
    missing = [c for c in columns if c not in manifest.columns]
    if missing:
        raise ProtocolError(f"manifest lacks column(s) {missing} needed for splitting")
    if manifest.empty:
        raise ProtocolError("manifest is empty: nothing to split")


def _ids(manifest: pd.DataFrame, mask: pd.Series | np.ndarray) -> tuple[str, ...]:
    return tuple(sorted(manifest.loc[mask, "utterance_id"].astype(str)))


def _safe(name: str) -> str:
    return name.replace("/", "-")


def _speakers(manifest: pd.DataFrame, protocol: str, minimum: int) -> list[str]:
    speakers = sorted(manifest["speaker"].astype(str).unique())
    if len(speakers) < minimum:
        raise ProtocolError(
            f"protocol {protocol!r} needs at least {minimum} speakers; the manifest has {len(speakers)}: {speakers}"
        )
    return speakers


@PROTOCOLS.register("loso")
def loso(manifest: pd.DataFrame, *, seed: int = 0) -> list[Fold]:
    """One fold per speaker: that speaker is the test set, all others train; ``val`` empty."""
    speakers = _speakers(manifest, "loso", 2)
    spk = manifest["speaker"].astype(str)
    return [
        Fold(f"loso-{_safe(s)}", _ids(manifest, spk != s), (), _ids(manifest, spk == s), speaker_dependent=False)
        for s in speakers
    ]


@PROTOCOLS.register("loso_val")
def loso_val(manifest: pd.DataFrame, *, seed: int = 0) -> list[Fold]:
    """One fold per test speaker; the validation speaker is the next one in sorted order."""
    speakers = _speakers(manifest, "loso_val", 3)
    spk = manifest["speaker"].astype(str)
    folds = []
    for i, test in enumerate(speakers):
        val = speakers[(i + 1) % len(speakers)]
        train_mask = (spk != test) & (spk != val)
        folds.append(
            Fold(f"loso_val-{_safe(test)}", _ids(manifest, train_mask), _ids(manifest, spk == val),
                 _ids(manifest, spk == test), speaker_dependent=False)
        )
    return folds


@PROTOCOLS.register("loso_session")
def loso_session(manifest: pd.DataFrame, *, seed: int = 0) -> list[Fold]:
    """One fold per session (test); ``speaker_dependent`` is True only if a speaker spans sessions."""
    if "session" not in manifest.columns or (manifest["session"].astype(str) == "").any():
        missing = manifest if "session" not in manifest.columns else manifest[manifest["session"].astype(str) == ""]
        example = missing["utterance_id"].iloc[0]
        raise ProtocolError(f"protocol 'loso_session' needs a session for every utterance; e.g. {example!r} has none")
    sessions = sorted(manifest["session"].astype(str).unique())
    if len(sessions) < 2:
        raise ProtocolError(f"protocol 'loso_session' needs at least 2 sessions; the manifest has {sessions}")
    ses = manifest["session"].astype(str)
    spk = manifest["speaker"].astype(str)
    folds = []
    for s in sessions:
        shared = set(spk[ses == s]) & set(spk[ses != s])
        folds.append(Fold(f"loso_session-{_safe(s)}", _ids(manifest, ses != s), (), _ids(manifest, ses == s),
                          speaker_dependent=bool(shared)))
    return folds


def _balanced_groups(sizes: dict[str, int], k: int, rng: np.random.Generator) -> list[list[str]]:
    """Assign groups to ``k`` bins, largest first (ties in seeded random order), smallest bin first."""
    names = sorted(sizes)
    order = rng.permutation(len(names))
    ranked = sorted((names[i] for i in order), key=lambda n: -sizes[n])  # stable: keeps random tie order
    bins: list[list[str]] = [[] for _ in range(k)]
    totals = [0] * k
    for name in ranked:
        j = min(range(k), key=lambda b: (totals[b], b))
        bins[j].append(name)
        totals[j] += sizes[name]
    return [sorted(b) for b in bins]


@PROTOCOLS.register("speaker_kfold")
def speaker_kfold(manifest: pd.DataFrame, *, seed: int = 0, k: int = 5) -> list[Fold]:
    """``k`` folds of whole speakers; each fold tests one group; ``val`` empty."""
    if k < 2:
        raise ProtocolError(f"speaker_kfold: k={k} must be at least 2")
    speakers = _speakers(manifest, f"speaker_kfold (k={k})", k)
    spk = manifest["speaker"].astype(str)
    sizes = {s: int((spk == s).sum()) for s in speakers}
    groups = _balanced_groups(sizes, k, np.random.default_rng(seed))
    return [
        Fold(f"speaker_kfold-{i + 1}of{k}", _ids(manifest, ~spk.isin(g)), (), _ids(manifest, spk.isin(g)),
             speaker_dependent=False)
        for i, g in enumerate(groups)
    ]


def _corpora(manifest: pd.DataFrame, names: Sequence[str], role: str) -> pd.Series:
    present = set(manifest["corpus"].astype(str))
    missing = sorted(set(names) - present)
    if missing:
        raise ProtocolError(f"cross_corpus: {role} corpus {missing} not in the loaded manifests; loaded: {sorted(present)}")
    return manifest["corpus"].astype(str).isin(list(names))


def shared_classes(manifest: pd.DataFrame, train: Sequence[str], test: str) -> tuple[list[str], dict[str, list[str]]]:
    """Classes of the test corpus that the training corpora also have, and per corpus the classes
    dropped because the other side lacks them. ``({classes}, {corpus: [dropped]})``."""
    emotion = manifest["emotion"].astype(str)
    train_classes = set(emotion[_corpora(manifest, train, "train")])
    test_classes = set(emotion[_corpora(manifest, [test], "test")])
    shared = sorted(train_classes & test_classes)
    dropped = {}
    for corpus in [*train, test]:
        own = set(emotion[manifest["corpus"].astype(str) == corpus])
        if own - set(shared):
            dropped[corpus] = sorted(own - set(shared))
    return shared, dropped


@PROTOCOLS.register("cross_corpus")
def cross_corpus(manifest: pd.DataFrame, *, seed: int = 0, train: Sequence[str] | str = (), test: str = "") -> list[Fold]:
    """One fold: every utterance of the ``train`` corpora against every utterance of ``test``, both
    restricted to the shared classes. Never trains on the test corpus; ``val`` empty."""
    train = [train] if isinstance(train, str) else list(train)
    if not train or not test:
        raise ProtocolError("cross_corpus: name the training corpora and the test corpus (train: [a, b], test: c)")
    if test in train:
        raise ProtocolError(f"cross_corpus: test corpus {test!r} is also a training corpus")
    if "corpus" not in manifest.columns:
        raise ProtocolError("cross_corpus: the manifest has no 'corpus' column")
    classes, dropped = shared_classes(manifest, train, test)
    if len(classes) < 2:
        raise ProtocolError(f"cross_corpus: {'+'.join(train)} and {test} share {len(classes)} class(es) {classes}; need 2")
    keep = manifest["emotion"].astype(str).isin(classes)
    train_mask = _corpora(manifest, train, "train") & keep
    test_mask = (manifest["corpus"].astype(str) == test) & keep
    note = "shared classes " + ",".join(classes)
    if dropped:
        note += "; dropped " + "; ".join(f"{c}: {','.join(v)}" for c, v in dropped.items())
    return [Fold(f"cross_corpus-{'+'.join(train)}-to-{test}", _ids(manifest, train_mask), (), _ids(manifest, test_mask),
                 speaker_dependent=False, note=note)]


def _stratified_pick(
    ids: Sequence[str], labels: Sequence[str], fraction: float, rng: np.random.Generator
) -> set[str]:
    """A seeded stratified subset: about ``fraction`` of each class (at least 1 of a class with 2+)."""
    picked: set[str] = set()
    by_class: dict[str, list[str]] = {}
    for uid, label in zip(ids, labels, strict=True):
        by_class.setdefault(label, []).append(uid)
    for label in sorted(by_class):
        members = sorted(by_class[label])
        n = int(round(fraction * len(members)))
        n = min(max(n, 1 if len(members) > 1 else 0), len(members) - 1)
        chosen = rng.permutation(len(members))[:n]
        picked.update(members[i] for i in chosen)
    return picked


@PROTOCOLS.register("random")
def random_split(manifest: pd.DataFrame, *, seed: int = 0, test_fraction: float = 0.2) -> list[Fold]:
    """One stratified random split; speaker-dependent (the same speakers on both sides)."""
    if not 0.0 < test_fraction < 1.0:
        raise ProtocolError(f"random: test_fraction={test_fraction} must be between 0 and 1")
    ids = manifest["utterance_id"].astype(str).tolist()
    test = _stratified_pick(ids, manifest["emotion"].astype(str).tolist(), test_fraction, np.random.default_rng(seed))
    if not test or len(test) == len(ids):
        raise ProtocolError(f"random: test_fraction={test_fraction} leaves an empty side on {len(ids)} utterances")
    train = tuple(sorted(set(ids) - test))
    return [Fold("random-speaker-dependent", train, (), tuple(sorted(test)), speaker_dependent=True)]


def make_folds(protocol: str, manifest: pd.DataFrame, *, seed: int = 0, **options: Any) -> list[Fold]:
    """Folds of ``manifest`` (columns utterance_id, speaker, emotion[, session]) by ``protocol``.

    Raises ProtocolError for an unknown protocol (listing the valid names), an unknown option, or
    a manifest the protocol cannot split.
    """
    if protocol not in PROTOCOLS:
        raise ProtocolError(f"unknown protocol {protocol!r}; valid names: {', '.join(PROTOCOLS.names())}")
    _check_manifest(manifest)
    if manifest["utterance_id"].duplicated().any():
        dup = manifest.loc[manifest["utterance_id"].duplicated(), "utterance_id"].iloc[0]
        raise ProtocolError(f"manifest has duplicate utterance id {dup!r}")
    fn = PROTOCOLS.get(protocol)
    try:
        return fn(manifest, seed=seed, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ProtocolError(f"protocol {protocol!r}: {exc}") from None
        raise


def holdout_validation(
    manifest: pd.DataFrame,
    train_ids: Iterable[str],
    *,
    speaker_dependent: bool,
    seed: int = 0,
    fraction: float = 0.2,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split training ids into ``(train_ids, val_ids)`` for checkpoint selection.

    Speaker-independent: hold out whole training speakers (about ``fraction`` of them, at least
    one; ProtocolError with fewer than 2). Speaker-dependent: a stratified ``fraction`` per class.
    """
    if not 0.0 < fraction < 1.0:
        raise ProtocolError(f"holdout_validation: fraction={fraction} must be between 0 and 1")
    _check_manifest(manifest)
    wanted = set(train_ids)
    sub = manifest[manifest["utterance_id"].astype(str).isin(wanted)]
    unknown = wanted - set(sub["utterance_id"].astype(str))
    if unknown:
        raise ProtocolError(f"holdout_validation: {len(unknown)} id(s) not in the manifest, e.g. {sorted(unknown)[0]!r}")
    rng = np.random.default_rng(seed)
    if speaker_dependent:
        val = _stratified_pick(sub["utterance_id"].astype(str).tolist(), sub["emotion"].astype(str).tolist(), fraction, rng)
    else:
        speakers = sorted(sub["speaker"].astype(str).unique())
        if len(speakers) < 2:
            raise ProtocolError(
                f"holdout_validation: cannot hold out a speaker from {len(speakers)} training speaker(s) {speakers}"
            )
        n_val = min(max(1, int(round(fraction * len(speakers)))), len(speakers) - 1)
        held = {speakers[i] for i in rng.permutation(len(speakers))[:n_val]}
        val = set(sub.loc[sub["speaker"].astype(str).isin(held), "utterance_id"].astype(str))
    train = tuple(sorted(wanted - val))
    return train, tuple(sorted(val))


def rotated_validation(
    manifest: pd.DataFrame,
    train_ids: Iterable[str],
    test_ids: Iterable[str],
    *,
    seed: int = 0,
    fraction: float = 0.2,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Split training ids into ``(train_ids, val_ids)``, holding out whole speakers that rotate
    with the test fold.

    Every speaker of the manifest is placed on a circle in a seeded order; the validation speakers
    of a fold are the first ``round(fraction * n_train_speakers)`` (at least one) training speakers
    after the fold's first test speaker on that circle. Under LOSO every speaker is the validation
    speaker of exactly one fold, and the test speakers are never picked.
    """
    if not 0.0 < fraction < 1.0:
        raise ProtocolError(f"rotated_validation: fraction={fraction} must be between 0 and 1")
    _check_manifest(manifest)
    wanted, tested = set(train_ids), set(test_ids)
    ids = manifest["utterance_id"].astype(str)
    speaker_of = dict(zip(ids, manifest["speaker"].astype(str), strict=True))
    unknown = sorted((wanted | tested) - set(speaker_of))
    if unknown:
        raise ProtocolError(f"rotated_validation: {len(unknown)} id(s) not in the manifest, e.g. {unknown[0]!r}")
    train_speakers = {speaker_of[i] for i in wanted}
    test_speakers = {speaker_of[i] for i in tested}
    if len(train_speakers) < 2:
        raise ProtocolError(f"rotated_validation: cannot hold out a speaker from {len(train_speakers)} training "
                            f"speaker(s) {sorted(train_speakers)}")
    everyone = sorted(set(speaker_of.values()))
    circle = [everyone[i] for i in np.random.default_rng(seed).permutation(len(everyone))]
    anchor = min((circle.index(s) for s in test_speakers), default=0)
    ring = circle[anchor + 1 :] + circle[: anchor + 1]
    n_val = min(max(1, int(round(fraction * len(train_speakers)))), len(train_speakers) - 1)
    held = [s for s in ring if s in train_speakers][:n_val]
    val = {i for i in wanted if speaker_of[i] in held}
    return tuple(sorted(wanted - val)), tuple(sorted(val))
