"""The manifest one experiment trains and tests on: one ingested corpus, or several for the
``cross_corpus`` protocol (``protocol_options: {train: [a, b], test: c}``).

For ``cross_corpus`` the manifests named in ``train`` and ``test`` are read and concatenated:
``corpus`` becomes the manifest name (what the protocol options name; two corpora ingested with one
adapter stay apart), utterance and speaker ids are prefixed with it where two corpora would share
one, and only the classes the training corpora and the test corpus share are kept (the others are
dropped and named in the fold's note by :func:`ser_pipeline.splits.cross_corpus`). The protocol
itself never trains on the test corpus.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import pandas as pd

from ser_pipeline.errors import ProtocolError
from ser_pipeline.manifest import read_manifest
from ser_pipeline.splits import shared_classes
from ser_pipeline.workspace import Workspace

CROSS_CORPUS = "cross_corpus"


def corpus_names(protocol_options: dict) -> tuple[list[str], str]:
    """``(train corpora, test corpus)`` of cross-corpus protocol options (ProtocolError when missing)."""
    train = protocol_options.get("train") or []
    train = [train] if isinstance(train, str) else list(train)
    test = str(protocol_options.get("test") or "")
    if not train or not test:
        raise ProtocolError("cross_corpus: name the training corpora and the test corpus "
                            "(protocol_options: {train: [a, b], test: c})")
    return train, test


def concat_manifests(frames: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """One frame from ``{manifest name: frame}``: ``corpus`` = the name; ids prefixed with
    ``<name>:`` when two manifests share an utterance or speaker id."""
    parts = []
    seen_utt: set[str] = set()
    seen_spk: set[str] = set()
    clash_utt = clash_spk = False
    for frame in frames.values():
        utt, spk = set(frame["utterance_id"].astype(str)), set(frame["speaker"].astype(str))
        clash_utt |= bool(utt & seen_utt)
        clash_spk |= bool(spk & seen_spk)
        seen_utt |= utt
        seen_spk |= spk
    for name, frame in frames.items():
        frame = frame.copy()
        frame["corpus"] = name
        if clash_utt:
            frame["utterance_id"] = name + ":" + frame["utterance_id"].astype(str)
        if clash_spk:
            frame["speaker"] = name + ":" + frame["speaker"].astype(str)
        parts.append(frame)
    return pd.concat(parts, ignore_index=True)


def cross_corpus_manifest(train: Sequence[str], test: str, workspace: Workspace) -> pd.DataFrame:
    """The concatenated manifests of ``train`` and ``test``, restricted to their shared classes."""
    if test in train:
        raise ProtocolError(f"cross_corpus: test corpus {test!r} is also a training corpus")
    frame = concat_manifests({name: read_manifest(name, workspace) for name in [*train, test]})
    classes, dropped = shared_classes(frame, list(train), test)
    if len(classes) < 2:
        raise ProtocolError(f"cross_corpus: {'+'.join(train)} and {test} share {len(classes)} class(es) {classes}; need 2")
    if dropped:
        warnings.warn("cross_corpus: classes not shared by the training and test corpora are dropped: "
                      + "; ".join(f"{c}: {', '.join(v)}" for c, v in dropped.items()), stacklevel=2)
    out = frame[frame["emotion"].astype(str).isin(classes)].reset_index(drop=True)
    out.attrs["dropped_classes"] = dropped
    return out


def experiment_manifest(corpus: str, protocol: str, protocol_options: dict, workspace: Workspace) -> pd.DataFrame:
    """The manifest of an experiment: ``corpus``'s, or for ``cross_corpus`` the concatenation above."""
    if protocol != CROSS_CORPUS:
        return read_manifest(corpus, workspace)
    return cross_corpus_manifest(*corpus_names(protocol_options), workspace)
