"""``ser explore CORPUS``: plots and a JSON summary of an ingested corpus."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from ser_pipeline.cli import app
from ser_pipeline.corpora import ingest
from ser_pipeline.corpora.demo import generate_demo_corpus
from ser_pipeline.pipeline.explore_stage import exploration_folder
from ser_pipeline.workspace import Workspace


def test_explore_writes_plots_and_summary(tmp_path: Path) -> None:
    ws = Workspace.resolve(tmp_path / "root")
    ingest("csv", generate_demo_corpus(ws.demo, seed=0, n_speakers=2, per_class=3), "demo", ws)
    out = tmp_path / "plots"
    result = CliRunner().invoke(app, ["explore", "demo", "--root", str(ws.root), "--out", str(out), "--per-class", "2",
                                      "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["classes"] == {"anger": 6, "happiness": 6, "neutral": 6, "sadness": 6}
    assert len(summary["per_speaker"]) == 2
    assert set(summary["mean_logmel_by_class"]) == set(summary["classes"])
    for name in ("class_counts.png", "class_by_speaker.png", "duration_by_class.png", "mean_logmel_by_class.png",
                 "explore.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    folder = exploration_folder("demo", ws, per_class=1)  # what `ser run` logs as the dataset's artifacts
    assert folder.parent == ws.root / "explore" and (folder / "explore.json").is_file()
    missing = CliRunner().invoke(app, ["explore", "nope", "--root", str(ws.root)])
    assert missing.exit_code != 0 and "no manifest named 'nope'" in str(missing.exception)
