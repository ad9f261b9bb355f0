"""``ser models`` and ``ser train`` through typer's CliRunner, end to end on a small demo corpus."""

from __future__ import annotations

import json

import pytest
import torch
from typer.testing import CliRunner

from ser_pipeline.cli import app
from ser_pipeline.cli.train_cmds import apply_sets
from ser_pipeline.corpora import ingest
from ser_pipeline.corpora.demo import generate_demo_corpus
from ser_pipeline.errors import ConfigError, ProtocolError, TrainingError
from ser_pipeline.workspace import Workspace

runner = CliRunner()
FAST = ["--device", "cpu", "--no-track", "--set", "hparams.channels=[8,16]", "--set", "view.frames=100", "--set", "view.normalise=global",
        "--set", "train.lr=0.003", "--set", "train.batch_size=8", "--set", "train.patience=null"]


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A reduced demo corpus: 4 speakers x 4 emotions x 5 utterances, ingested as ``demo``."""
    ws = Workspace.resolve(tmp_path_factory.mktemp("cli") / "root")
    ingest("csv", generate_demo_corpus(ws.demo, seed=0, n_speakers=4, per_class=5), "demo", ws)
    return str(ws.root)


def test_models_lists_every_baseline_with_reference_view_and_defaults() -> None:
    result = runner.invoke(app, ["models", "--json"])
    assert result.exit_code == 0, result.output
    entries = {e["name"]: e for e in json.loads(result.stdout)}
    assert {"cnn", "cnn_lstm", "resnet18", "alexnet", "svm"} <= set(entries)
    assert entries["alexnet"]["view"]["resize"] == [227, 227]
    assert entries["cnn_lstm"]["defaults"]["hidden"] == 512 and entries["svm"]["trainer"] == "classic"
    assert all(e["reference"] for e in entries.values())
    text = runner.invoke(app, ["models"]).stdout
    assert "resnet18" in text and "reference" in text


@pytest.mark.slow
def test_train_cnn_on_demo_scores_above_chance(root: str) -> None:
    result = runner.invoke(app, ["train", "cnn", "demo", "--protocol", "loso", "--epochs", "8", "--root", root, "--json", *FAST])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["protocol"] == "loso" and summary["speaker_dependent"] is False
    assert len(summary["folds"]) == 4  # one per speaker
    assert summary["pooled"]["ua"] > 0.4  # chance is 0.25 for four classes
    assert summary["mean"]["ua"] > 0.4
    human = runner.invoke(app, ["train", "cnn", "demo", "--epochs", "8", "--root", root, *FAST])
    assert human.exit_code == 0 and "pooled (all test predictions)" in human.stdout
    assert "mean ± std over folds" in human.stdout and "speaker-independent" in human.stdout


def test_train_errors_name_the_problem(root: str) -> None:
    result = runner.invoke(app, ["train", "nope", "demo", "--root", root])
    assert isinstance(result.exception, ConfigError) and "valid names" in str(result.exception)
    result = runner.invoke(app, ["train", "cnn", "demo", "--protocol", "loso_session", "--root", root])
    assert isinstance(result.exception, ProtocolError)
    if not torch.cuda.is_available():
        result = runner.invoke(app, ["train", "cnn", "demo", "--device", "cuda", "--root", root])
        assert isinstance(result.exception, TrainingError) and "CUDA" in str(result.exception)
    result = runner.invoke(app, ["train", "cnn", "demo", "--set", "frames", "--root", root])
    assert isinstance(result.exception, ConfigError) and "key=value" in str(result.exception)


def test_apply_sets_parses_nested_yaml_values() -> None:
    out = apply_sets({"model": "cnn", "hparams": {"dropout": 0.1}},
                     ["hparams.width=16", "view.resize=[128, 128]", "stage2.recipe.epochs=3", "max_folds=2", "augment=speed=0.9"])
    assert out["hparams"] == {"dropout": 0.1, "width": 16}
    assert out["view"] == {"resize": [128, 128]} and out["stage2"] == {"recipe": {"epochs": 3}}
    assert out["max_folds"] == 2 and out["augment"] == "speed=0.9"
    with pytest.raises(ConfigError, match="not a mapping"):
        apply_sets({"model": "cnn"}, ["model.x=1"])


@pytest.mark.parametrize("text, value", [("3e-4", 3e-4), ("1E5", 1e5), ("-2e+3", -2000.0), (".5e-3", 5e-4),
                                         ("0.1", 0.1), ("8", 8), ("1e", "1e"), ("e5", "e5"), ("abc", "abc")])
def test_set_values_in_exponent_form_are_floats(text: str, value: object) -> None:
    """``--set train.lr=3e-4`` means the float (YAML 1.1 alone would read the string '3e-4' and
    the recipe would refuse it); words and half-numbers stay strings."""
    out = apply_sets({}, [f"train.lr={text}"])["train"]["lr"]
    assert out == value and type(out) is type(value)


def test_a_yaml_config_reads_exponent_floats(tmp_path) -> None:
    from ser_pipeline.pipeline.config import load_config

    path = tmp_path / "exp.yaml"
    path.write_text("name: e\ncorpora: [demo]\nmodels:\n  - name: cnn\n    options:\n      train: {lr: 3e-4, weight_decay: 1e-2}\n")
    train = load_config(path).models[0].options["train"]
    assert train == {"lr": 3e-4, "weight_decay": 1e-2} and isinstance(train["lr"], float)
