"""``ser bench train``: the figures' structure and sanity on a tiny generated corpus (never timed),
and one ``error:`` line with exit 2 for an unknown model, a corpus not ingested, missing features."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from bench_cli import call

from ser_pipeline.cli import main
from ser_pipeline.corpora import ingest
from ser_pipeline.corpora.demo import generate_demo_corpus
from ser_pipeline.workspace import Workspace

pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A reduced demo corpus (3 speakers x 4 emotions x 4 utterances) with logmel64, spectrogram and
    logmel64_norm features (cnn, att_res, dcnn_blstm_att_no_pretrain, alexnet_sru_sru_only); logmel60 (alexnet_sru) is left
    out on purpose."""
    ws = Workspace.resolve(tmp_path_factory.mktemp("bench") / "root")
    ingest("csv", generate_demo_corpus(ws.demo, seed=0, n_speakers=3, per_class=4), "demo", ws)
    for preset in ("logmel64", "spectrogram", "logmel64_norm"):
        with pytest.raises(SystemExit) as done:
            main(["featurize", "demo", "--preset", preset, "--workers", "1", "--root", str(ws.root)])
        assert done.value.code in (0, None)
    return str(ws.root)


@pytest.mark.parametrize("model, kind", [("cnn", "fixed"), ("att_res", "segments")])
def test_bench_train_figures_are_consistent(root: str, model: str, kind: str, tmp_path: Path, capsys) -> None:
    out_file = tmp_path / "figures.json"
    code, out, err = call(capsys, "bench", "train", model, "demo", "--steps", "1", "--epochs", "2", "--repeats", "2",
                          "--threads", "1", "--root", root, "--json", "--out", str(out_file))
    assert code == 0, err
    r = json.loads(out)
    assert json.loads(out_file.read_text()) == r
    assert r["model"] == model and r["preset"] == "cpu" and r["view"]["kind"] == kind and r["device"] == "cpu"
    assert r["epochs"] == 2 and r["repeats"] == 2 and r["torch_threads"] == 1 and r["steps_per_epoch"] == 1
    assert 0 < r["train_items"] <= r["batch_size"]  # --steps 1: at most one batch of training utterances
    project, plain = r["project"], r["plain"]
    for side in (project, plain):
        assert side["items"] == 2 * r["train_items"]  # both loops saw every training utterance, each epoch
        assert side["utt_per_s"] > 0 and side["utt_per_step_s"] > 0 and side["utt_per_cpu_s"] > 0
        assert 0.0 <= side["data_share"] <= 1.0
        assert side["step_s"] <= side["wall_s"] * 1.05 + 1e-3  # the step timers sit inside the pass
        assert len(side["runs_wall_s"]) == 2 and side["wall_s"] == pytest.approx(sum(side["runs_wall_s"]) / 2, abs=2e-4)
    assert r["ratio"] == pytest.approx(project["utt_per_s"] / plain["utt_per_s"], rel=0.01)
    assert r["ratio_range"][0] <= r["ratio"] * 1.01 and r["ratio"] <= r["ratio_range"][1] * 1.01
    assert r["input_shape"][-2:] == [64, 64] if model == "att_res" else r["input_shape"][:2] == [3, 64]

    code, human, _ = call(capsys, "bench", "train", model, "demo", "--steps", "1", "--repeats", "1", "--threads", "1",
                          "--root", root)
    assert code == 0 and "ratio ser train / plain" in human and "plain torch" in human


def test_a_model_that_never_trains_stage1_is_benched_on_stage2(root: str, capsys) -> None:
    """``alexnet_sru_sru_only`` runs no stage-1 epoch (its embedding is pooling), so both loops train
    its stage-2 head on the training utterances' stage-1 embeddings (sequence view, stage-2 batch
    size, no SpecAugment). Read from the logmel64_norm set the fixture has."""
    args = ["bench", "train", "alexnet_sru_sru_only", "demo", "--steps", "1", "--repeats", "1", "--threads", "1",
            "--root", root, "--set", "features=logmel64_norm"]
    code, out, err = call(capsys, *args, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["stage"] == "stage2" and r["view"]["kind"] == "sequence" and r["spec_augment"] is None
    assert r["optimizer"] == "adamw"  # the stage-2 recipe at --preset cpu
    assert 0 < r["train_items"] <= r["batch_size"] and r["steps_per_epoch"] == 1
    assert r["project"]["items"] == r["plain"]["items"] == r["train_items"]
    code, human, _ = call(capsys, *args)
    assert code == 0 and "stage 2: its recipe never trains stage 1" in human


def test_a_segment_sequence_model_is_benched_end_to_end(root: str, capsys) -> None:
    """``dcnn_blstm_att_no_pretrain`` (from scratch: the AlexNet and the BLSTM head trained
    together) is benched on its windows view; the plain loop feeds it whole utterances too."""
    code, out, err = call(capsys, "bench", "train", "dcnn_blstm_att_no_pretrain", "demo", "--steps", "1",
                          "--repeats", "1", "--threads", "1", "--root", root, "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["stage"] == "network" and r["view"]["kind"] == "windows" and r["batch_size"] == 16
    assert r["optimizer"] == "adamw" and r["input_shape"] == [4, 3, 96, 96]  # (S, C, H, W): 4 windows of 150 frames
    assert r["project"]["items"] == r["plain"]["items"] == r["train_items"] > 0  # utterances, not windows


def test_set_overrides_the_config_as_in_ser_train(root: str, capsys) -> None:
    """``--set`` changes the benched experiment as ``ser train --set`` would (here the view's crop
    width), and a misspelled key is one error line naming it."""
    code, out, err = call(capsys, "bench", "train", "cnn", "demo", "--steps", "1", "--repeats", "1", "--threads", "1",
                          "--root", root, "--json", "--set", "view.frames=48")
    assert code == 0, err
    assert json.loads(out)["input_shape"] == [3, 64, 48]
    code, out, err = call(capsys, "bench", "train", "cnn", "demo", "--steps", "1", "--repeats", "1", "--root", root,
                          "--set", "view.framez=48")
    assert code == 2 and out == "" and "framez" in err and "Traceback" not in err


@pytest.mark.parametrize("args, named", [
    (["nope", "demo"], "unknown model 'nope'"),
    (["svm", "demo"], "model 'svm'"),
    (["cnn", "elsewhere"], "no manifest named 'elsewhere'"),
    (["alexnet_sru", "demo"], "ser featurize demo --preset logmel60"),
    (["alexnet_sru_sru_only", "demo"], "ser featurize demo --preset logmel60"),  # benched on stage 2: needs features
])
def test_bad_input_is_one_error_line_and_exit_2(root: str, args: list[str], named: str, capsys) -> None:
    code, out, err = call(capsys, "bench", "train", *args, "--steps", "1", "--repeats", "1", "--root", root)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and out == ""
    assert len(lines) == 1 and lines[0].startswith("error: ") and named in lines[0], err
    assert "Traceback" not in err
