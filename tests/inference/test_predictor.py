"""Prediction from audio with a trained model folder, on the demo corpus."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from ser_pipeline.cli.run_cmds import predict_with_uri
from ser_pipeline.corpora.demo import generate_demo_corpus
from ser_pipeline.dataset.views import ViewSpec
from ser_pipeline.errors import ConfigError
from ser_pipeline.features import extract, feature_spec
from ser_pipeline.inference.predictor import (
    file_features,
    frame_results,
    load_predictor,
    predict_paths,
    results_frame,
)
from ser_pipeline.models import build_model

CLASSES = ["anger", "sadness"]


def make_model_dir(folder: Path, *, n_mels: int = 32, seed: int = 0, classes: list[str] = CLASSES,
                   bn_statistics: str | None = None) -> Path:
    """A real (untrained, seeded) cnn model folder in the engine's format: model.json + weights.pt."""
    torch.manual_seed(seed)
    hparams = {"channels": [4, 4, 8, 8], "dropout": 0.0}
    model = build_model("cnn", n_classes=len(classes), in_channels=3, **hparams)
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / "weights.pt")
    meta = {
        "model": "cnn", "trainer": "standard", "classes": classes, "n_classes": len(classes), "hparams": hparams,
        "view": ViewSpec(kind="fixed", frames=40, channels=3, normalise="utterance").to_dict(),
        "feature_spec": feature_spec("logmel64", n_mels=n_mels).to_dict(), "stage2_hparams": {}, "in_channels": 3,
    }
    if bn_statistics is not None:  # folders written before the field existed have none
        meta["bn_statistics"] = bn_statistics
    (folder / "model.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def demo_files(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("demo")
    csv = generate_demo_corpus(out, seed=0, n_speakers=2, per_class=2, classes=tuple(CLASSES))
    rows = csv.read_text().splitlines()[1:]
    return [out / row.split(",")[0] for row in rows]


def test_predicts_every_demo_file(tmp_path: Path, demo_files: list[Path]) -> None:
    predictor = load_predictor(make_model_dir(tmp_path / "model"))
    results = predict_paths(predictor, [str(p) for p in demo_files])
    assert len(results) == len(demo_files) == 8
    for r in results:
        assert r["error"] is None
        assert r["emotion"] in CLASSES
        assert set(r["probabilities"]) == set(CLASSES)
        assert sum(r["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
        assert r["emotion"] == max(r["probabilities"], key=r["probabilities"].get)


def test_uses_the_recorded_feature_spec(tmp_path: Path, demo_files: list[Path]) -> None:
    predictor = load_predictor(make_model_dir(tmp_path / "model", n_mels=24))
    assert predictor.feature_spec.n_mels == 24
    feats = file_features(demo_files[0], predictor.feature_spec)
    assert feats.shape[:2] == (3, 24)
    from ser_pipeline.audio import load

    wave, _ = load(demo_files[0], sample_rate=predictor.feature_spec.sample_rate)
    np.testing.assert_array_equal(feats, extract(wave, predictor.feature_spec))


def test_matches_a_direct_forward_pass(tmp_path: Path, demo_files: list[Path]) -> None:
    """The predictor's posteriors equal feature extraction + utterance normalisation + view + network by hand."""
    from ser_pipeline.dataset.views import apply_view

    predictor = load_predictor(make_model_dir(tmp_path / "model", seed=3))
    got = predict_paths(predictor, [str(demo_files[1])])[0]["probabilities"]
    x = torch.from_numpy(file_features(demo_files[1], predictor.feature_spec))
    x = (x - x.mean(dim=2, keepdim=True)) / (x.std(dim=2, unbiased=False, keepdim=True) + 1e-5)
    batch = apply_view(predictor.view, x[None], torch.tensor([x.shape[2]]), train=False)
    with torch.no_grad():
        probs = torch.softmax(predictor.model(batch.x), dim=-1)[0].numpy()
    np.testing.assert_allclose([got[c] for c in CLASSES], probs, atol=2e-3)


def test_speaker_bn_model_scores_each_file_with_its_own_statistics(tmp_path: Path, demo_files: list[Path]) -> None:
    """``bn_statistics: speaker`` (AdaBN) in model.json: every file is its own speaker, so its
    BatchNorm statistics come from its own frames: the same posteriors alone or among other files,
    equal to a precise-BN pass over that file by hand, and unlike the trained statistics."""
    from ser_pipeline.dataset.tables import _pack
    from ser_pipeline.inference.forward import precise_bn, predict_proba

    paths = [str(p) for p in demo_files[:4]]
    ada = load_predictor(make_model_dir(tmp_path / "ada", seed=3, bn_statistics="speaker"))
    plain = load_predictor(make_model_dir(tmp_path / "plain", seed=3))
    together = [r["probabilities"] for r in predict_paths(ada, paths)]
    alone = [predict_paths(ada, [p])[0]["probabilities"] for p in paths]
    for a, b in zip(together, alone, strict=True):
        assert [a[c] for c in CLASSES] == pytest.approx([b[c] for c in CLASSES], abs=1e-6)
    x = file_features(demo_files[2], ada.feature_spec)
    x = (x - x.mean(axis=2, keepdims=True)) / (x.std(axis=2, keepdims=True) + 1e-5)
    one = _pack([x.astype(np.float32)], [0], [0], ["f"], ["orig"], ["f"])
    ref = load_predictor(make_model_dir(tmp_path / "ref", seed=3)).model
    precise_bn(ref, one, ada.view)
    expected = predict_proba(ref, one, ada.view, bf16=False)[0]
    assert [together[2][c] for c in CLASSES] == pytest.approx(list(expected), abs=2e-3)
    trained = predict_paths(plain, [paths[2]])[0]["probabilities"]
    assert abs(trained[CLASSES[0]] - together[2][CLASSES[0]]) > 1e-3


def test_unknown_bn_statistics_in_model_json_is_one_error_naming_file_and_value(tmp_path: Path) -> None:
    folder = make_model_dir(tmp_path / "model", bn_statistics="per_file")
    with pytest.raises(ConfigError, match=r"model\.json: bn_statistics='per_file'; valid: train, speaker"):
        load_predictor(folder)
    assert load_predictor(make_model_dir(tmp_path / "old")).meta["bn_statistics"] == "train"  # field absent: trained


def test_bad_files_get_errors_and_the_others_are_predicted(tmp_path: Path, demo_files: list[Path],
                                                           write_wav: Callable[..., Path]) -> None:
    predictor = load_predictor(make_model_dir(tmp_path / "model"))
    silent = write_wav(tmp_path / "silent.wav", silent=True)
    corrupt = tmp_path / "corrupt.wav"
    corrupt.write_bytes(b"RIFF0000WAVEjunk")
    missing = tmp_path / "missing.wav"
    paths = [str(silent), str(demo_files[0]), str(corrupt), str(missing), str(demo_files[2])]
    results = predict_paths(predictor, paths)
    assert [r["path"] for r in results] == paths
    for bad in (results[0], results[2], results[3]):
        assert bad["emotion"] is None and bad["probabilities"] == {}
        assert bad["path"] in bad["error"]
    assert "silent" in results[0]["error"] or "silence" in results[0]["error"]
    assert results[3]["error"] == f"{missing}: path does not exist"
    assert results[1]["emotion"] in CLASSES and results[4]["emotion"] in CLASSES


def test_results_frame_round_trip(tmp_path: Path, demo_files: list[Path], write_wav: Callable[..., Path]) -> None:
    predictor = load_predictor(make_model_dir(tmp_path / "model"))
    results = predict_paths(predictor, [str(demo_files[0]), str(write_wav(tmp_path / "s.wav", silent=True))])
    frame = results_frame(results, CLASSES)
    assert list(frame.columns) == ["path", "emotion", "p_anger", "p_sadness", "error"]
    assert frame_results(frame) == results


def test_predict_with_an_experiment_folder(tmp_path: Path, demo_files: list[Path]) -> None:
    make_model_dir(tmp_path / "exp" / "model")
    results, info = predict_with_uri(str(tmp_path / "exp"), [str(demo_files[0])])
    assert results[0]["emotion"] in CLASSES and info["version"] == "local folder"


def test_not_a_model_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="model.json"):
        load_predictor(tmp_path)
    with pytest.raises(ConfigError, match="at least one audio file"):
        predict_with_uri(str(tmp_path), [])


def test_cli_predict_json_with_a_bad_file(tmp_path: Path, demo_files: list[Path], write_wav) -> None:
    from typer.testing import CliRunner

    from ser_pipeline.cli import app

    make_model_dir(tmp_path / "exp" / "model")
    silent = write_wav(tmp_path / "silent.wav", silent=True)
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "exp"), str(demo_files[0]), str(silent), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert rows[0]["emotion"] in CLASSES and rows[1]["error"]
    human = CliRunner().invoke(app, ["predict", str(tmp_path / "exp"), str(silent)])
    assert human.exit_code == 1 and "error" in human.stdout


def test_predict_a_folder_glob_and_csv_writes_one_row_per_file(tmp_path: Path, demo_files: list[Path],
                                                               write_wav) -> None:
    """Folders (recursive), globs and CSVs; one row per readable file, one error per unreadable one."""
    import shutil

    import soundfile as sf
    from typer.testing import CliRunner

    from ser_pipeline.cli import app

    make_model_dir(tmp_path / "exp" / "model")
    folder = tmp_path / "in" / "deep"
    folder.mkdir(parents=True)
    for p in demo_files[:4]:
        shutil.copy(p, folder / p.name)
    flac = tmp_path / "in" / "a.flac"
    sf.write(str(flac), sf.read(str(demo_files[4]))[0], 16000)
    full = write_wav(tmp_path / "in" / "trunc.wav", seconds=1.0)
    full.write_bytes(full.read_bytes()[: len(full.read_bytes()) // 2])  # header says more frames than it holds
    write_wav(tmp_path / "in" / "short.wav", seconds=0.05)
    (tmp_path / "in" / "notes.txt").write_text("not audio")  # ignored: not an audio suffix
    csv = tmp_path / "list.csv"
    csv.write_text(f"path,x\n{demo_files[5]},1\nmissing.wav,2\n")
    out = tmp_path / "preds.csv"
    result = CliRunner().invoke(app, ["predict", str(tmp_path / "exp"), str(tmp_path / "in"),
                                      str(tmp_path / "nowhere"), str(demo_files[0].parent / "*.wav"), str(csv),
                                      "--out", str(out), "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    by_path = {Path(r["path"]).name: r for r in rows}
    assert len(rows) == len({r["path"] for r in rows})  # no file twice
    good = [r for r in rows if not r["error"]]
    errors = {Path(r["path"]).name: r["error"] for r in rows if r["error"]}
    assert set(errors) == {"trunc.wav", "short.wav", "nowhere", "missing.wav"}
    assert "truncated audio" in errors["trunc.wav"] and "too short" in errors["short.wav"]
    assert errors["nowhere"].endswith("path does not exist") and errors["missing.wav"].endswith("path does not exist")
    assert by_path["a.flac"]["emotion"] in CLASSES
    globbed = {str(p) for p in demo_files[0].parent.glob("*.wav")}
    assert len(globbed) >= 2
    assert len(good) == 4 + 1 + len(globbed | {str(demo_files[5])})  # folder (4 wav + 1 flac), glob, CSV
    frame = pd.read_csv(out)
    assert list(frame.columns) == ["path", "label", "p_anger", "p_sadness", "error", "model_uri", "model_version"]
    assert len(frame) == len(rows) and (frame["model_version"] == "local folder").all()
    assert frame.loc[frame["error"].isna(), ["p_anger", "p_sadness"]].sum(axis=1).round(6).eq(1.0).all()
