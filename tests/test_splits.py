"""Evaluation protocols: speaker independence, determinism, coverage and errors."""

from __future__ import annotations

import itertools

import pandas as pd
import pytest

from ser_pipeline.errors import ProtocolError
from ser_pipeline.splits import (
    PROTOCOLS,
    Fold,
    holdout_validation,
    make_folds,
    rotated_validation,
    shared_classes,
)

EMOTIONS = ("anger", "happiness", "neutral", "sadness")


def make_manifest(n_speakers: int = 6, per_class: int = 5, *, sessions: bool = False) -> pd.DataFrame:
    """A manifest frame with ``n_speakers x 4 classes x per_class`` rows (two speakers per session)."""
    rows = []
    for s, e, n in itertools.product(range(n_speakers), EMOTIONS, range(per_class)):
        rows.append({
            "utterance_id": f"c/s{s}/{e}/{n}",
            "speaker": f"c/s{s}",
            "emotion": e,
            "session": f"Ses{s // 2 + 1:02d}" if sessions else "",
        })
    return pd.DataFrame(rows)


def speakers_of(manifest: pd.DataFrame, ids) -> set[str]:
    return set(manifest.set_index("utterance_id").loc[list(ids), "speaker"])


SPEAKER_INDEPENDENT = [("loso", {}), ("loso_val", {}), ("loso_session", {}), ("speaker_kfold", {"k": 3})]


@pytest.mark.parametrize(("protocol", "options"), SPEAKER_INDEPENDENT)
def test_no_speaker_on_both_sides(protocol, options):
    manifest = make_manifest(sessions=True)
    folds = make_folds(protocol, manifest, seed=1, **options)
    assert folds
    for fold in folds:
        assert not fold.speaker_dependent
        train, val, test = (speakers_of(manifest, ids) for ids in (fold.train, fold.val, fold.test))
        assert not train & test, fold.name
        assert not train & val, fold.name
        assert not val & test, fold.name
        assert not set(fold.train) & set(fold.test)


@pytest.mark.parametrize(("protocol", "options"), SPEAKER_INDEPENDENT + [("random", {})])
def test_each_utterance_tested_exactly_once_or_partitioned(protocol, options):
    manifest = make_manifest(sessions=True)
    folds = make_folds(protocol, manifest, **options)
    all_ids = set(manifest["utterance_id"])
    for fold in folds:
        assert set(fold.train) | set(fold.val) | set(fold.test) == all_ids
        assert len(fold.train) + len(fold.val) + len(fold.test) == len(all_ids)
        assert list(fold.train) == sorted(fold.train)
    if protocol != "random":
        tested = [uid for f in folds for uid in f.test]
        assert sorted(tested) == sorted(all_ids)


def test_loso_one_fold_per_speaker_with_empty_val():
    manifest = make_manifest(n_speakers=4)
    folds = make_folds("loso", manifest)
    assert [f.name for f in folds] == ["loso-c-s0", "loso-c-s1", "loso-c-s2", "loso-c-s3"]
    assert all(f.val == () for f in folds)
    assert speakers_of(manifest, folds[2].test) == {"c/s2"}
    assert len(folds[0].train) == 3 * 20


def test_loso_val_is_8_1_1_with_next_speaker_as_validation():
    manifest = make_manifest(n_speakers=10, per_class=2)
    folds = make_folds("loso_val", manifest)
    assert len(folds) == 10
    for i, fold in enumerate(folds):
        assert speakers_of(manifest, fold.test) == {f"c/s{i}"}
        assert speakers_of(manifest, fold.val) == {f"c/s{(i + 1) % 10}"}
        assert len(speakers_of(manifest, fold.train)) == 8


def test_loso_session_groups_sessions():
    manifest = make_manifest(n_speakers=6, sessions=True)
    folds = make_folds("loso_session", manifest)
    assert [f.name for f in folds] == ["loso_session-Ses01", "loso_session-Ses02", "loso_session-Ses03"]
    assert speakers_of(manifest, folds[0].test) == {"c/s0", "c/s1"}


def test_loso_session_marks_speakers_spanning_sessions_as_dependent():
    manifest = make_manifest(n_speakers=2, sessions=True)
    manifest.loc[manifest["emotion"] == "anger", "session"] = "Ses09"  # both speakers now in two sessions
    folds = make_folds("loso_session", manifest)
    assert all(f.speaker_dependent for f in folds)


def test_speaker_kfold_balances_and_is_seeded():
    manifest = make_manifest(n_speakers=7)
    a = make_folds("speaker_kfold", manifest, seed=0, k=3)
    b = make_folds("speaker_kfold", manifest, seed=0, k=3)
    assert a == b
    assert [f.name for f in a] == ["speaker_kfold-1of3", "speaker_kfold-2of3", "speaker_kfold-3of3"]
    assert sorted(len(speakers_of(manifest, f.test)) for f in a) == [2, 2, 3]
    assert len(make_folds("speaker_kfold", manifest)) == 5  # default k


def test_random_is_stratified_speaker_dependent_and_seeded():
    manifest = make_manifest(n_speakers=4, per_class=10)
    (fold,) = make_folds("random", manifest, seed=5)
    assert fold.speaker_dependent and fold.name == "random-speaker-dependent"
    test = manifest[manifest["utterance_id"].isin(fold.test)]
    assert test["emotion"].value_counts().to_dict() == {e: 8 for e in EMOTIONS}
    assert make_folds("random", manifest, seed=5) == [fold]
    assert make_folds("random", manifest, seed=6)[0].test != fold.test
    (half,) = make_folds("random", manifest, test_fraction=0.5)
    assert len(half.test) == 80


@pytest.mark.parametrize(
    ("protocol", "manifest", "options", "message"),
    [
        ("loso", make_manifest(n_speakers=1), {}, "at least 2 speakers"),
        ("loso_val", make_manifest(n_speakers=2), {}, "at least 3 speakers"),
        ("loso_session", make_manifest(), {}, "needs a session"),
        ("speaker_kfold", make_manifest(n_speakers=3), {"k": 5}, "at least 5 speakers"),
        ("speaker_kfold", make_manifest(), {"k": 1}, "k=1"),
        ("random", make_manifest(), {"test_fraction": 1.5}, "test_fraction=1.5"),
        ("leave_one_out", make_manifest(), {}, "valid names: cross_corpus, loso, loso_session, loso_val, random, speaker_kfold"),
        ("loso", make_manifest(), {"k": 3}, "unexpected keyword"),
    ],
)
def test_protocol_errors(protocol, manifest, options, message):
    with pytest.raises(ProtocolError, match=message):
        make_folds(protocol, manifest, **options)


def test_registry_lists_every_protocol():
    assert PROTOCOLS.names() == ["cross_corpus", "loso", "loso_session", "loso_val", "random", "speaker_kfold"]


def test_holdout_validation_speaker_independent():
    manifest = make_manifest(n_speakers=6)
    fold = make_folds("loso", manifest)[0]
    train, val = holdout_validation(manifest, fold.train, speaker_dependent=False, seed=2)
    assert set(train) | set(val) == set(fold.train) and not set(train) & set(val)
    assert len(speakers_of(manifest, val)) == 1  # round(0.2 * 5) speakers
    assert not speakers_of(manifest, train) & speakers_of(manifest, val)
    assert holdout_validation(manifest, fold.train, speaker_dependent=False, seed=2) == (train, val)


def test_holdout_validation_speaker_dependent_is_stratified():
    manifest = make_manifest(n_speakers=2, per_class=10)
    (fold,) = make_folds("random", manifest)
    train, val = holdout_validation(manifest, fold.train, speaker_dependent=True, seed=0, fraction=0.25)
    counts = manifest[manifest["utterance_id"].isin(val)]["emotion"].value_counts().to_dict()
    assert counts == {e: 4 for e in EMOTIONS}  # 25% of 16 per class
    assert len(train) + len(val) == len(fold.train)


def test_holdout_validation_errors():
    manifest = make_manifest(n_speakers=2)
    one_speaker = manifest[manifest["speaker"] == "c/s0"]["utterance_id"]
    with pytest.raises(ProtocolError, match="cannot hold out a speaker"):
        holdout_validation(manifest, one_speaker, speaker_dependent=False)
    with pytest.raises(ProtocolError, match="not in the manifest"):
        holdout_validation(manifest, ["c/ghost"], speaker_dependent=True)


def test_fold_to_dict_round_trips():
    fold = Fold("x", ("a",), (), ("b",), speaker_dependent=False)
    assert Fold(**{**fold.to_dict(), "train": ("a",), "val": (), "test": ("b",)}) == fold


@pytest.mark.parametrize("n_speakers", [4, 10])
def test_rotated_validation_differs_across_folds_and_never_takes_the_test_speaker(n_speakers):
    manifest = make_manifest(n_speakers=n_speakers)
    folds = make_folds("loso", manifest)
    held = []
    for fold in folds:
        train, val = rotated_validation(manifest, fold.train, fold.test, seed=3)
        assert set(train) | set(val) == set(fold.train) and not set(train) & set(val)
        val_speakers = speakers_of(manifest, val)
        assert val_speakers and not val_speakers & speakers_of(manifest, fold.test)
        assert not val_speakers & speakers_of(manifest, train)
        held.append(frozenset(val_speakers))
    assert len(set(held)) == len(folds)  # a different validation set for every test fold
    if n_speakers == 4:  # one validation speaker per fold: each speaker validates exactly once
        assert sorted(s for h in held for s in h) == sorted(manifest.speaker.unique())
    again = [rotated_validation(manifest, f.train, f.test, seed=3) for f in folds]
    assert again == [rotated_validation(manifest, f.train, f.test, seed=3) for f in folds]
    other = [rotated_validation(manifest, f.train, f.test, seed=4)[1] for f in folds]
    assert other != [a[1] for a in again]  # the seed changes the rotation


def two_corpora() -> pd.DataFrame:
    a = make_manifest(n_speakers=3).assign(corpus="a")
    a["utterance_id"] = "a/" + a["utterance_id"]
    a["speaker"] = "a/" + a["speaker"]
    b = make_manifest(n_speakers=2).assign(corpus="b")
    b["utterance_id"] = "b/" + b["utterance_id"]
    b["speaker"] = "b/" + b["speaker"]
    b.loc[b.emotion == EMOTIONS[0], "emotion"] = "boredom"  # b lacks one of a's classes and has its own
    return pd.concat([a, b], ignore_index=True)


def test_cross_corpus_drops_unmapped_classes_and_never_trains_on_the_test_corpus():
    manifest = two_corpora()
    classes, dropped = shared_classes(manifest, ["a"], "b")
    assert classes == sorted(EMOTIONS[1:]) and dropped == {"a": [EMOTIONS[0]], "b": ["boredom"]}
    (fold,) = make_folds("cross_corpus", manifest, train=["a"], test="b")
    by_id = manifest.set_index("utterance_id")
    assert set(by_id.loc[list(fold.train), "corpus"]) == {"a"} and set(by_id.loc[list(fold.test), "corpus"]) == {"b"}
    assert set(by_id.loc[list(fold.train) + list(fold.test), "emotion"]) == set(classes)
    assert "dropped a: " + EMOTIONS[0] in fold.note and "b: boredom" in fold.note and not fold.speaker_dependent
    with pytest.raises(ProtocolError, match="also a training corpus"):
        make_folds("cross_corpus", manifest, train=["a", "b"], test="b")
    with pytest.raises(ProtocolError, match=r"test corpus \['c'\] not in the loaded manifests"):
        make_folds("cross_corpus", manifest, train=["a"], test="c")
