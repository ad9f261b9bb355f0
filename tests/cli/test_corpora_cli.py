"""The corpus commands: ser corpora / ingest / manifests / demo (typer CliRunner and the real `ser`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from ser_pipeline.cli import app
from ser_pipeline.errors import ConfigError, CorpusLayoutError

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


def emodb_tree(root: Path, write_wav) -> Path:
    write_wav(root / "wav" / "03a01Fa.wav", 0.3)
    write_wav(root / "wav" / "08a01Wa.wav", 0.3, channels=2)
    write_wav(root / "wav" / "09a02Ta.flac", 0.3, sample_rate=48000)
    write_wav(root / "wav" / "10a02Na.wav", 0.3, silent=True)
    return root


def test_corpora_lists_adapters_with_layouts():
    result = invoke("corpora", "--json")
    assert result.exit_code == 0, result.output
    entries = {e["name"]: e for e in json.loads(result.stdout)}
    assert set(entries) == {"casia", "cremad", "csv", "emodb", "iemocap", "ravdess", "savee", "tess"}
    assert "Actor_XX" in entries["ravdess"]["layout"]
    text = invoke("corpora").stdout
    assert "wav/03a01Fa.wav" in text and "four_class" in text


def test_ingest_json_summary_and_manifests(tmp_path, write_wav):
    corpus = emodb_tree(tmp_path / "emodb", write_wav)
    root = str(tmp_path / "ws")
    result = invoke("ingest", "emodb", str(corpus), "--name", "edb", "--root", root, "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["name"] == "edb"
    assert summary["utterances"] == 3 and summary["speakers"] == 3
    assert summary["classes"] == {"anger": 1, "happiness": 1, "sadness": 1}
    assert summary["rejects_by_reason"] == {"all-silent audio": 1}
    assert (tmp_path / "ws" / "manifests" / "edb.parquet").is_file()

    listed = json.loads(invoke("manifests", "--root", root, "--json").stdout)
    assert [(m["name"], m["digest"]) for m in listed] == [("edb", summary["digest"])]
    assert "edb" in invoke("manifests", "--root", root).stdout


def test_ingest_human_summary_keep_and_merge(tmp_path, write_wav):
    corpus = emodb_tree(tmp_path / "emodb", write_wav)
    result = invoke("ingest", "emodb", str(corpus), "--root", str(tmp_path / "ws"),
                    "--keep", "anger,sadness", "--merge", "happiness=anger")
    assert result.exit_code == 0, result.output
    assert "utterances 3" in result.stdout
    assert "anger 2, sadness 1" in result.stdout
    assert "all-silent audio: 1" in result.stdout


def test_ingest_options_reach_the_adapter(tmp_path, write_wav):
    corpus = emodb_tree(tmp_path / "emodb", write_wav)
    result = invoke("ingest", "emodb", str(corpus), "--root", str(tmp_path / "ws"), "--option", "workers=1", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["options"] == {"workers": 1}
    bad = invoke("ingest", "emodb", str(corpus), "--root", str(tmp_path / "ws"), "--option", "four_class=true")
    assert isinstance(bad.exception, ConfigError) and "four_class" in str(bad.exception)
    bad = invoke("ingest", "emodb", str(corpus), "--root", str(tmp_path / "ws"), "--merge", "excited")
    assert isinstance(bad.exception, ConfigError) and "'excited'" in str(bad.exception)


def test_ingest_layout_error_names_path(tmp_path, write_wav):
    write_wav(tmp_path / "c" / "random.wav", 0.2)
    result = invoke("ingest", "ravdess", str(tmp_path / "c"), "--root", str(tmp_path / "ws"))
    assert isinstance(result.exception, CorpusLayoutError)
    assert str(tmp_path / "c") in str(result.exception) and "Actor_XX" in str(result.exception)
    assert not (tmp_path / "ws" / "manifests").exists()


def test_demo_generates_and_ingests(tmp_path):
    root = tmp_path / "ws"
    result = invoke("demo", "--root", str(root), "--seed", "1", "--per-class", "2", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["name"] == "demo" and summary["utterances"] == 32 and summary["speakers"] == 4
    assert summary["classes"] == {"anger": 8, "happiness": 8, "neutral": 8, "sadness": 8}
    assert summary["csv"] == str(root / "demo" / "demo.csv")
    assert (root / "manifests" / "demo.parquet").is_file()
    again = json.loads(invoke("demo", "--root", str(root), "--seed", "1", "--per-class", "2", "--json").stdout)
    assert again["digest"] == summary["digest"]


@pytest.mark.parametrize("command", ["corpora", "ingest", "manifests", "demo"])
def test_every_command_has_help(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert "--json" in result.stdout


def test_real_ser_exits_2_and_names_the_missing_path(tmp_path):
    missing = tmp_path / "no-such-corpus"
    env = {**os.environ, "SER_ROOT": str(tmp_path / "ws")}
    ser = Path(sys.executable).with_name("ser")
    proc = subprocess.run([str(ser), "ingest", "casia", str(missing)], capture_output=True, text=True, env=env, timeout=300)  # a guard against a hang, generous for a loaded machine
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and str(missing) in proc.stderr
    assert "<speaker>/<emotion>/<sentence-id>.wav" in proc.stderr
    assert not (tmp_path / "ws").exists()
