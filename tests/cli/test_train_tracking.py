"""``ser train`` is tracked like ``ser run`` and says what it does; ``ser track`` logs a folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from typer.testing import CliRunner

from ser_pipeline.cli import app
from ser_pipeline.cli.progress import TrainProgress, duration
from ser_pipeline.corpora import ingest
from ser_pipeline.corpora.demo import generate_demo_corpus
from ser_pipeline.workspace import Workspace

pytestmark = pytest.mark.usefixtures("torch_one_thread")
FAST = ["--device", "cpu", "--epochs", "2", "--set", "max_folds=2", "--set", "hparams.channels=[4,8]",
        "--set", "view.frames=60", "--set", "train.batch_size=16", "--set", "train.patience=null"]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    ws = Workspace.resolve(tmp_path_factory.mktemp("track") / "root")
    ingest("csv", generate_demo_corpus(ws.demo, seed=0, n_speakers=3, per_class=3), "demo", ws)
    return str(ws.root)


def test_train_writes_an_mlflow_run_and_talks(root: str, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/mlflow.db"
    result = CliRunner().invoke(app, ["train", "cnn", "demo", "--root", root, "--tracking-uri", store, "--json", *FAST])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)  # stdout holds the JSON document only
    err = result.stderr.splitlines()
    assert err[0] == "train cnn on demo (36 utterances): resolving the recipe (loading torch and the model registry)"
    assert err[1].startswith("train cnn on demo (36 utterances): protocol loso, 2 fold(s), up to 2 epoch(s)")
    assert err[2].startswith("loading features: 36 items")
    starts = [i for i, line in enumerate(err) if line.startswith("fold ")]
    assert [err[i].split(":")[0] for i in starts] == ["fold 1/2", "fold 2/2"]
    first = err[starts[0]].split(": ")[1].split(" (")[0]
    # the fold line comes before any epoch of the fold, with its parts: 3 speakers = 1 train, 1 val, 1 test
    assert err[starts[0]].endswith(f"(train 12 utterances, validation {err[starts[0]].split('validation ')[1]}")
    assert "test demo/spk" in err[starts[0]] and err[starts[0] + 1].startswith(f"{first} epoch 1/2:")
    assert any(line.startswith(f"{first} epoch 2/2:") and "ETA" in line for line in err)
    # the refit on train + validation speakers says so, with its own epoch lines
    assert f"{first}: refit on train + validation speakers for the epochs chosen on validation" in err
    assert any(line.startswith(f"{first}/refit epoch 1:") and "no validation" in line for line in err)
    # MLflow's own chatter (printed whatever its log level) stays hidden without --verbose
    assert [line for line in err if "registered model" in line or "Created version" in line or " INFO " in line] == []
    run = MlflowClient(store).get_run(summary["tracking"]["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["ser.kind"] == "parent"
    assert run.info.run_name.startswith("cnn · ") and "epochs=2" in run.info.run_name
    assert run.data.metrics["n_folds"] == 2 and run.data.params["train.epochs"] == "2"
    children = MlflowClient(store).search_runs([run.info.experiment_id],
                                               f"tags.`mlflow.parentRunId` = '{run.info.run_id}'")
    assert len(children) == 2
    # ser track on the same folder finds the run already there (idempotent by config digest)
    again = CliRunner().invoke(app, ["track", summary["directory"], "--tracking-uri", store, "--json"])
    assert again.exit_code == 0, again.output
    assert json.loads(again.stdout)["status"] == "existing"
    assert json.loads(again.stdout)["run_id"] == run.info.run_id


def test_progress_says_resumed_and_eta() -> None:
    lines: list[str] = []
    p = TrainProgress(["a", "b"], epochs=4, say=lines.append)
    p("a", 3, {"train_loss": 1.0, "val_loss": 1.0, "val_ua": 0.5, "seconds": 10.0})
    assert lines[:2] == ["fold 1/2: a", "resumed fold a from epoch 3"]
    assert "ETA 50s" in lines[2]  # 1 epoch left in fold a + 4 in fold b, 10 s each
    refit = TrainProgress(["a", "b"], epochs=4, say=lines.append, refit=True)
    refit("a", 1, {"train_loss": 1.0, "val_loss": 1.0, "val_ua": 0.5, "seconds": 10.0})
    assert "ETA 2m30s" in lines[-1]  # 3 + a refit of at most 4 in fold a, then 4 + 4 in fold b: 15 x 10 s
    assert duration(125) == "2m05s" and duration(3720) == "1h02m"


def test_progress_of_a_two_stage_model_counts_both_stages() -> None:
    lines: list[str] = []
    p = TrainProgress(["a", "b"], epochs=3, say=lines.append, stages={"stage1": 2})  # stage 2 is the main fit
    p("a/stage1", 1, {"train_loss": 1.0, "val_loss": 1.0, "val_ua": 0.5, "seconds": 10.0})
    assert lines[0] == "fold 1/2: a" and lines[1].startswith("a/stage1 epoch 1/2: ")
    assert "ETA 1m30s" in lines[1]  # 1 stage-1 + 3 stage-2 epochs left in fold a, then 2 + 3 in fold b: 9 x 10 s
    p("a", 1, {"train_loss": 1.0, "val_loss": 1.0, "val_ua": 0.5, "seconds": 10.0})
    assert lines[-1].startswith("a epoch 1/3: ") and "ETA 1m10s" in lines[-1]  # 2 + 5 epochs left
    assert not any(line.startswith("resumed") for line in lines)
