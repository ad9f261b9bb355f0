"""Cross-corpus experiments on two generated corpora: several manifests for one experiment."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from ser_pipeline.corpora import ingest
from ser_pipeline.corpora.demo import generate_demo_corpus
from ser_pipeline.errors import ProtocolError
from ser_pipeline.experiments.config import ExperimentConfig
from ser_pipeline.experiments.corpora import cross_corpus_manifest, experiment_manifest
from ser_pipeline.experiments.record import ExperimentRecord
from ser_pipeline.experiments.runner import run_experiment
from ser_pipeline.workspace import Workspace

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """Corpus ``a``: anger, happiness, sadness; corpus ``b``: anger, neutral, sadness (same adapter, same
    file names: ids would clash without the manifest-name prefix)."""
    ws = Workspace.resolve(tmp_path_factory.mktemp("xc") / "root")
    for name, classes, seed in (("a", ("anger", "happiness", "sadness"), 0), ("b", ("anger", "neutral", "sadness"), 1)):
        csv = generate_demo_corpus(ws.root / f"src_{name}", seed=seed, n_speakers=2, per_class=3, classes=classes)
        ingest("csv", csv, name, ws)
    return ws


def test_concatenated_manifest_keeps_shared_classes_only(ws: Workspace) -> None:
    with pytest.warns(UserWarning, match="a: happiness; b: neutral"):
        frame = cross_corpus_manifest(["a"], "b", ws)
    assert set(frame["emotion"]) == {"anger", "sadness"}
    assert frame.attrs["dropped_classes"] == {"a": ["happiness"], "b": ["neutral"]}
    assert set(frame["corpus"]) == {"a", "b"} and frame["utterance_id"].is_unique
    assert frame.groupby("corpus").size().to_dict() == {"a": 12, "b": 12}  # 2 speakers x 2 classes x 3
    assert len(experiment_manifest("a", "loso", {}, ws)) == 18  # other protocols: the one corpus, untouched
    with pytest.raises(ProtocolError, match="also a training corpus"):
        cross_corpus_manifest(["a", "b"], "b", ws)


def test_cross_corpus_experiment_never_trains_on_the_test_corpus(ws: Workspace) -> None:
    config = ExperimentConfig.from_dict({
        "model": "cnn", "corpus": "b", "protocol": "cross_corpus", "protocol_options": {"train": ["a"], "test": "b"},
        "epochs": 1, "hparams": {"channels": [4, 8]}, "view": {"frames": 60}, "train": {"batch_size": 8}})
    with pytest.warns(UserWarning, match="dropped"):
        record = run_experiment(config, ws, device="cpu")
    assert list(record.classes) == ["anger", "sadness"]
    # the record says which classes were left out, and reading it back keeps them
    assert record.dropped_classes == {"a": ["happiness"], "b": ["neutral"]}
    assert ExperimentRecord.read(record.folder).dropped_classes == record.dropped_classes
    assert record.metrics["dropped_classes"] == record.dropped_classes
    folds = json.loads((record.folder / "config.json").read_text())["folds"]
    assert len(folds) == 1 and folds[0]["n_test"] == 12
    assert folds[0]["n_train"] + folds[0]["n_val"] == 12  # validation comes from the training corpus
    predictions = pd.read_csv(record.path("predictions"))
    assert set(predictions["speaker"].str.split(":").str[0]) == {"b"}  # every test row is from corpus b
    assert set(predictions["true"]) <= {"anger", "sadness"}
    assert 0.0 <= record.metrics["pooled"]["ua"] <= 1.0
