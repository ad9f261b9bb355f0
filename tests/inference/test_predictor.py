"""Prediction from audio with a trained model folder, on the demo corpus."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ser_pipeline.corpora.demo import generate_demo_corpus
from ser_pipeline.errors import ConfigError
from ser_pipeline.features import extract, feature_spec
from ser_pipeline.models import build_model
from ser_pipeline.inference.predictor import (
    file_features,
    frame_results,
    load_predictor,
    predict_paths,
    results_frame,
)
from ser_pipeline.cli.run_cmds import predict_with_uri
from ser_pipeline.dataset.views import ViewSpec

CLASSES = ["anger", "sadness"]


def make_model_dir(folder: Path, *, n_mels: int = 32, seed: int = 0, classes: list[str] = CLASSES) -> Path:
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
    assert "not found" in results[3]["error"]
    assert results[1]["emotion"] in CLASSES and results[4]["emotion"] in CLASSES


def test_results_frame_round_trip(tmp_path: Path, demo_files: list[Path], write_wav: Callable[..., Path]) -> None:
    predictor = load_predictor(make_model_dir(tmp_path / "model"))
    results = predict_paths(predictor, [str(demo_files[0]), str(write_wav(tmp_path / "s.wav", silent=True))])
    frame = results_frame(results, CLASSES)
    assert list(frame.columns) == ["path", "emotion", "p_anger", "p_sadness", "error"]
    assert frame_results(frame) == results


def test_predict_with_an_experiment_folder(tmp_path: Path, demo_files: list[Path]) -> None:
    make_model_dir(tmp_path / "exp" / "model")
    results = predict_with_uri(str(tmp_path / "exp"), [str(demo_files[0])])
    assert results[0]["emotion"] in CLASSES


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
