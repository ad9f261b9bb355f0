"""Experiments end to end on a tiny generated demo corpus with the real feature store."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from feature_store.store import FeatureStore
from ser_pipeline.corpora import ingest
from ser_pipeline.corpora.demo import generate_demo_corpus
from ser_pipeline.dataset.spec_augment import SpecAugmentSpec
from ser_pipeline.errors import ConfigError, ProtocolError
from ser_pipeline.experiments.compare import compare_experiments
from ser_pipeline.experiments.config import (
    ExperimentConfig,
    experiment_digest,
    resolve,
    spec_augment_from_config,
)
from ser_pipeline.experiments.record import ExperimentRecord
from ser_pipeline.experiments.runner import experiment_folder, run_experiment
from ser_pipeline.inference.model_folder import load_trained_model
from ser_pipeline.manifest import read_manifest, write_manifest
from ser_pipeline.models import MODELS, load_all
from ser_pipeline.workspace import Workspace

TINY = {"model": "cnn", "corpus": "demo", "epochs": 2, "train": {"batch_size": 8, "lr": 0.003},
        "hparams": {"channels": [8, 16]}, "view": {"frames": 120, "normalise": "global"}}


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """4 speakers x 4 emotions x 3 utterances of the demo corpus, ingested as ``demo``."""
    workspace = Workspace.resolve(tmp_path_factory.mktemp("eval") / "root")
    csv = generate_demo_corpus(workspace.demo, seed=0, n_speakers=4, per_class=3)
    ingest("csv", csv, "demo", workspace)
    return workspace


@pytest.mark.slow
def test_experiment_directory_follows_the_contract(ws: Workspace) -> None:
    result = run_experiment(ExperimentConfig.from_dict({**TINY, "max_folds": 2}), ws)
    out = result.folder
    assert out.parent == ws.experiments and out.name == result.experiment_id
    config = json.loads((out / "config.json").read_text())
    assert set(config["digests"]) == {"manifest", "features", "augment", "config"}
    assert config["config"]["model"] == "cnn" and config["protocol"] == "loso"
    assert all(f["validation"] == "rotated held-out training speakers" for f in config["folds"])  # issue 13 default
    metrics = json.loads((out / "metrics.json").read_text())
    assert [f["fold"] for f in metrics["folds"]] == ["loso-demo-spk01", "loso-demo-spk02"]
    assert metrics["speaker_dependent"] is False and metrics["protocol"] == "loso"
    assert set(metrics["aggregation"]) == {"pooled", "mean", "std"}
    for part in ("pooled", "mean", "std"):
        assert {"wa", "ua", "macro_f1"} <= set(metrics[part])
    fold = metrics["folds"][0]
    assert set(fold["per_class_recall"]) == {"anger", "happiness", "neutral", "sadness"}
    assert np.array(fold["confusion"]).sum() == 12
    history = json.loads((out / "history.json").read_text())
    assert [r["epoch"] for r in history["loso-demo-spk01"]] == [1, 2]
    assert {"train_loss", "val_loss", "val_ua"} <= set(history["loso-demo-spk01"][0])
    preds = pd.read_csv(out / "predictions.csv")
    assert list(preds.columns[:5]) == ["utterance_id", "fold", "speaker", "true", "pred"]
    assert len(preds) == 24 and np.allclose(preds.filter(like="p_").sum(axis=1), 1.0)
    assert set(preds.loc[preds.fold == "loso-demo-spk01", "speaker"]) == {"demo/spk01"}
    pooled_cm = pd.read_csv(out / "confusion_pooled.csv", index_col=0).to_numpy()
    assert pooled_cm.sum() == 24 and np.trace(pooled_cm) == (preds.true == preds.pred).sum()
    for name in ("confusion_loso-demo-spk01.png", "confusion_loso-demo-spk02.csv", "confusion_pooled.png"):
        assert (out / name).stat().st_size > 0
    assert not (out / "checkpoints").exists()

    # model/ rebuilds the exact network: it reproduces its fold's predictions from the stored features
    model, stage2, meta = load_trained_model(out / "model")
    assert stage2 is None and meta["classes"] == metrics["classes"] and meta["view"]["frames"] == 120
    from feature_store.store import FeatureStore
    from ser_pipeline.dataset.normalise import floor_silence, normalise_with
    from ser_pipeline.dataset.tables import load_table
    from ser_pipeline.dataset.views import ViewSpec
    from ser_pipeline.features import FeatureSpec
    from ser_pipeline.inference.forward import predict_speaker_bn

    fold_name = meta["fold"]
    test_ids = preds.loc[preds.fold == fold_name, "utterance_id"].tolist()
    manifest = read_manifest("demo", ws).set_index("utterance_id", drop=False)
    source = FeatureStore(ws.features).open_set(FeatureSpec.from_dict(meta["feature_spec"]))
    table = load_table(source, manifest.loc[test_ids], meta["classes"], sorted(manifest.speaker.unique()))
    table = floor_silence(table, meta["view"]["floor_db"])  # issue 13: silence floor before normalisation
    table = normalise_with(table, meta["normalisation"]["mean"], meta["normalisation"]["std"])
    assert meta["bn_statistics"] == "speaker"  # the default recipe scores each speaker with its own BN statistics
    probs = predict_speaker_bn(model, table, ViewSpec.from_dict(meta["view"]))
    expected = preds.loc[preds.fold == fold_name].filter(like="p_").to_numpy()
    assert np.allclose(probs, expected, atol=1e-5)


def test_same_config_and_seed_reproduce_the_metrics(ws: Workspace) -> None:
    config = ExperimentConfig.from_dict({**TINY, "max_folds": 1, "seed": 7})
    first = run_experiment(config, ws, device="cpu")
    assert ExperimentRecord.find(experiment_folder(config, ws)) == first
    cached = run_experiment(config, ws, device="cpu")
    assert cached == first  # the record is the one done check
    again = run_experiment(config, ws, device="cpu", force=True)
    assert (again.folder / "record.json").stat().st_mtime_ns >= (first.folder / "record.json").stat().st_mtime_ns
    a, b = first.metrics, again.metrics
    assert [f["ua"] for f in a["folds"]] == [f["ua"] for f in b["folds"]]
    assert a["folds"][0]["confusion"] == b["folds"][0]["confusion"]


def test_random_protocol_is_labelled_speaker_dependent_everywhere(ws: Workspace) -> None:
    result = run_experiment(ExperimentConfig.from_dict({**TINY, "protocol": "random", "epochs": 1, "augment": "gain=3"}), ws)
    metrics = json.loads((result.folder / "metrics.json").read_text())
    config = json.loads((result.folder / "config.json").read_text())
    assert metrics["speaker_dependent"] is True and "speaker-dependent" in metrics["evaluation"]
    assert config["speaker_dependent"] is True and metrics["folds"][0]["speaker_dependent"] is True
    assert "speaker-dependent" in metrics["folds"][0]["fold"]
    assert config["folds"][0]["validation"].startswith("held-out training part")
    # the augmentation variant exists for training utterances only, never for test utterances
    from feature_store.store import FeatureStore
    from ser_pipeline.features import FeatureSpec

    index = FeatureStore(ws.features).open_set(FeatureSpec.from_dict(config["feature_spec"])).index()
    manifest = read_manifest("demo", ws)
    test_ids = set(pd.read_csv(result.folder / "predictions.csv")["utterance_id"])
    test_sha = set(manifest.loc[manifest.utterance_id.isin(test_ids), "sha256"])
    augmented = set(index.loc[index.variant == "gain=3", "sha256"])
    assert augmented and not (augmented & test_sha)


def test_bad_model_protocol_and_unsplittable_corpus(ws: Workspace) -> None:
    with pytest.raises(ConfigError, match="valid names: .*cnn"):
        run_experiment(ExperimentConfig.from_dict({**TINY, "model": "nope"}), ws)
    with pytest.raises(ProtocolError, match="valid names: .*loso"):
        run_experiment(ExperimentConfig.from_dict({**TINY, "protocol": "leave_none_out"}), ws)
    with pytest.raises(ProtocolError, match="session"):
        run_experiment(ExperimentConfig.from_dict({**TINY, "protocol": "loso_session"}), ws)
    manifest = read_manifest("demo", ws)
    write_manifest(manifest[manifest.speaker == "demo/spk01"].reset_index(drop=True), [], "one", ws)
    with pytest.raises(ProtocolError, match="at least 2 speakers"):
        run_experiment(ExperimentConfig.from_dict({**TINY, "corpus": "one"}), ws)


def test_compare_experiments_pairs_folds(ws: Workspace) -> None:
    a = run_experiment(ExperimentConfig.from_dict({**TINY, "epochs": 1, "max_folds": 2}), ws)
    b = run_experiment(ExperimentConfig.from_dict({**TINY, "epochs": 1, "max_folds": 2, "seed": 1}), ws)
    out = compare_experiments(a.folder, b.folder)
    assert out["folds"] == ["loso-demo-spk01", "loso-demo-spk02"] and out["n_folds"] == 2
    ua_a = [f["ua"] for f in a.metrics["folds"]]
    ua_b = [f["ua"] for f in b.metrics["folds"]]
    assert out["mean_diff"] == pytest.approx(np.mean(np.subtract(ua_a, ua_b)))


def test_resolution_and_spec_augment_forms() -> None:
    load_all()
    default = resolve(ExperimentConfig(model="cnn", epochs=3, train={"lr": 0.01}))
    assert default.protocol == "loso" and default.plan.train.epochs == 3 and default.plan.train.lr == 0.01
    assert default.plan.view.frames == MODELS.get("cnn").view["frames"] and default.augment == ""
    assert default.plan.view.frames_quantile == 0.9 and default.plan.view.normalise == "speaker"  # issue 13
    parsed = spec_augment_from_config({"horizontal_mixup": {"a": 0.05, "b": 1.25, "c": 1.0, "ratio": 0.3}, "cutout": {"holes": 2}})
    assert parsed == SpecAugmentSpec(hmixup=(0.05, 1.25, 1.0), ratio=0.3, cutout=2)
    assert spec_augment_from_config({"mixup": 0.4, "ratio": 0.5}) == SpecAugmentSpec(mixup=0.4, ratio=0.5)
    with pytest.raises(ConfigError, match="warp"):
        spec_augment_from_config({"warp": {}})
    with pytest.raises(ConfigError, match="preset"):
        ExperimentConfig(preset="fast")
    if "res_trans" in MODELS:  # a seed model with a paper recipe: speaker pre-training + Horizontal Mixup
        paper = resolve(ExperimentConfig(model="res_trans", preset="paper", epochs=2))
        assert paper.plan.spec_augment == SpecAugmentSpec(hmixup=(0.05, 1.25, 1.0), ratio=0.3)
        # top-level epochs is train.epochs only: the recipe's speaker_epochs stays, train.speaker_epochs sets it
        assert paper.plan.train.epochs == 2 and paper.plan.speaker_train is not None
        assert paper.plan.speaker_train.epochs == MODELS.get("res_trans").recipe["speaker_epochs"]
        short = resolve(ExperimentConfig(model="res_trans", preset="paper", epochs=2, train={"speaker_epochs": 1}))
        assert short.plan.speaker_train is not None and short.plan.speaker_train.epochs == 1
        # the paper freezes the speaker-pretrained CNN; the default and cpu presets fine-tune it, and say so
        assert paper.plan.speaker_freeze is True and paper.to_dict()["speaker_freeze"] is True
        with pytest.warns(UserWarning, match="speaker_freeze=false"):
            tuned = resolve(ExperimentConfig(model="res_trans", preset="cpu"))
        assert tuned.plan.speaker_freeze is False and any("fine-tunes" in n for n in tuned.plan.notes)
        frozen = resolve(ExperimentConfig(model="res_trans", preset="cpu", train={"speaker_freeze": True}))
        assert frozen.plan.speaker_freeze is True and frozen.plan.notes == ()
        assert experiment_digest(ExperimentConfig(model="res_trans", preset="cpu"), tuned) != \
            experiment_digest(ExperimentConfig(model="res_trans", preset="cpu", train={"speaker_freeze": True}), frozen)
        with pytest.raises(ConfigError, match="speaker_freeze='no'"):
            resolve(ExperimentConfig(model="res_trans", train={"speaker_freeze": "no"}))
        with pytest.raises(ConfigError, match="train: unknown field 'speaker_freeze'"):
            resolve(ExperimentConfig(model="cnn", train={"speaker_freeze": False}))
        assert "speaker_freeze" not in resolve(ExperimentConfig(model="cnn")).to_dict()  # other ids unchanged
        with pytest.raises(ConfigError, match="epochs.*train.epochs=5"):
            resolve(ExperimentConfig(model="cnn", epochs=2, train={"epochs": 5}))
    if "alexnet_sru" in MODELS:  # stage 2's epochs come from stage2.recipe only, never from top-level epochs
        two = resolve(ExperimentConfig(model="alexnet_sru", epochs=1))
        assert two.plan.train.epochs == 1 and two.plan.stage2_train is not None
        assert two.plan.stage2_train.epochs == MODELS.get("alexnet_sru").stage2_recipe["epochs"] > 1
        given = resolve(ExperimentConfig(model="alexnet_sru", epochs=1, stage2={"recipe": {"epochs": 2}}))
        assert given.plan.stage2_train is not None and given.plan.stage2_train.epochs == 2
        # issue 13: the default preset turns on random crops + SpecAugment masks; {} switches them off
        assert resolve(ExperimentConfig(model="res_trans", epochs=2)).plan.spec_augment == SpecAugmentSpec(
            random_cut=True, freq_masks=2, time_masks=2)
        assert resolve(ExperimentConfig(model="res_trans", epochs=2, spec_augment={})).plan.spec_augment is None


def test_a_spec_augment_field_changes_only_that_field_of_the_recipe() -> None:
    """``--set spec_augment.mixup=0.2`` adds mixup to the recipe's crops and masks instead of replacing
    them (it did until stop 29: the masks and random crops were silently dropped); a field set to 0 or
    false switches that part off alone; ``{}`` switches all of it off."""
    load_all()

    def spec(**given):
        return resolve(ExperimentConfig(model="cnn", epochs=2, **given)).plan.spec_augment

    recipe = spec()
    assert recipe == SpecAugmentSpec(random_cut=True, freq_masks=2, time_masks=2)
    assert spec(spec_augment={"mixup": 0.2}) == SpecAugmentSpec(random_cut=True, freq_masks=2, time_masks=2, mixup=0.2)
    assert spec(spec_augment={"mixup": {"alpha": 0.4, "ratio": 0.5}}) == SpecAugmentSpec(
        random_cut=True, freq_masks=2, time_masks=2, mixup=0.4, ratio=0.5)
    assert spec(spec_augment={"freq_masks": 0, "random_cut": False}) == SpecAugmentSpec(time_masks=2)
    assert spec(spec_augment={}) is None
    with pytest.raises(ConfigError, match="spec_augment: unknown field 'mixpu'"):
        spec(spec_augment={"mixpu": 0.2})
    with pytest.raises(ConfigError, match="spec_augment.freq_masks=.*mapping"):
        spec(spec_augment={"freq_masks": {"n": 2}})
    with pytest.raises(ConfigError, match=r"^spec_augment\.freq_masks=-1: must be >= 0"):  # the field named once
        spec(spec_augment={"freq_masks": -1})


@pytest.mark.skipif("alexnet_sru" not in load_all(), reason="seed model alexnet_sru not registered")
def test_two_stage_writes_stage1_embeddings_to_the_store(ws: Workspace) -> None:
    config = ExperimentConfig.from_dict({
        "model": "alexnet_sru", "corpus": "demo", "epochs": 1, "train": {"batch_size": 8}, "max_folds": 1,
        "hparams": {"width_mult": 0.0625}, "view": {"resize": [67, 67], "n_segments": 2, "frames": 32},
        "stage2": {"hparams": {"hidden_size": 8}, "recipe": {"epochs": 1}}})
    result = run_experiment(config, ws, device="cpu")
    from feature_store.store import FeatureStore

    digest = result.metrics["folds"][0]["stage1_checkpoint_digest"]
    derived = [d for d in FeatureStore(ws.features).list_derived() if d["checkpoint_digest"] == digest]
    assert len(derived) == 1 and derived[0]["items"] == 48  # every utterance of the fold
    assert (result.folder / "history_stage1.json").exists() and (result.folder / "model" / "stage2.pt").exists()


@pytest.mark.slow
def test_classic_svm_on_cached_functionals(ws: Workspace) -> None:
    pytest.importorskip("opensmile")
    config = ExperimentConfig.from_dict({"model": "svm", "corpus": "demo", "max_folds": 2})
    result = run_experiment(config, ws, device="cpu")
    assert result.metrics["mean"]["ua"] > 0.25
    # no epochs, no curves: the record lists only what exists, and tracking logs it (was FileNotFoundError)
    assert "curves" not in result.artifacts and not (result.folder / "curves.png").exists()
    from ser_pipeline.tracking.runs import log_experiment

    logged = log_experiment(result.folder, experiment="svm-demo", uri=f"sqlite:///{ws.root / 'mlflow.db'}")
    assert logged["status"] == "logged" and logged["model_uri"] is None  # no pyfunc: it cannot predict from audio
    assert logged["ua"] == pytest.approx(result.metrics["mean"]["ua"])
    store = FeatureStore(ws.features)
    (listed,) = [s for s in store.list_sets() if s["kind"] == "functionals"]
    assert listed["spec"]["functional_set"] == "eGeMAPSv02" and listed["utterances"] == len(read_manifest("demo", ws))
    batches = listed["batches"]
    run_experiment(config.replace(seed=1), ws)
    (again,) = [s for s in store.list_sets() if s["kind"] == "functionals"]
    assert again["batches"] == batches  # nothing recomputed: the second run read the store


def test_one_bad_recording_is_left_out_not_fatal(tmp_path: Path) -> None:
    ws = Workspace.resolve(tmp_path / "root")
    csv = generate_demo_corpus(ws.demo, seed=1, n_speakers=3, per_class=2)
    ingest("csv", csv, "small", ws)
    manifest = read_manifest("small", ws)
    bad = manifest.iloc[0]
    Path(bad["path"]).write_bytes(b"not audio any more")  # bytes changed since ingest
    with pytest.warns(UserWarning, match="left out"):
        result = run_experiment(ExperimentConfig.from_dict({**TINY, "corpus": "small", "epochs": 1, "max_folds": 1}), ws)
    config = json.loads((result.folder / "config.json").read_text())
    assert list(config["skipped"]) == [bad["utterance_id"]]
    preds = pd.read_csv(result.folder / "predictions.csv")
    assert bad["utterance_id"] not in set(preds["utterance_id"]) and len(preds) == 8 - 1


def test_final_model_on_every_speaker_is_the_one_served(ws: Workspace) -> None:
    """final_model=all_speakers: after the folds, one more model on all 4 speakers for the median of
    the folds' chosen epochs; the model folder (what predict and the registry serve) holds it and
    the record says so. The default keeps serving the best fold and keeps its experiment id."""
    base = ExperimentConfig.from_dict({**TINY, "epochs": 2, "max_folds": 2})
    final_cfg = base.replace(final_model="all_speakers")
    assert experiment_folder(final_cfg, ws) != experiment_folder(base, ws)
    starts: list[object] = []
    record = run_experiment(final_cfg, ws, device="cpu", on_fold=starts.append)
    chosen = [f.get("refit_epochs") or f["best_epoch"] for f in record.folds]
    info = record.final_model
    assert info["kind"] == "all_speakers" and info["speakers"] == 4 and info["n_fit"] == 48
    assert info["epochs"] == max(1, round(float(np.median(chosen))))
    assert [s.name for s in starts][-1] == "all-speakers" and starts[-1].final and starts[-1].n_train == 48
    meta = json.loads((record.folder / "model" / "model.json").read_text())
    assert meta["fold"] == "all-speakers" and "every speaker" in meta["selected_by"]
    model, _, _ = load_trained_model(record.folder / "model")
    assert sum(p.numel() for p in model.parameters()) > 0
    assert ExperimentRecord.read(record.folder).final_model == info
    served = run_experiment(base, ws, device="cpu").final_model
    assert served["kind"] == "best_fold" and served["fold"] in {f["fold"] for f in record.folds}
    with pytest.raises(ConfigError, match="final_model.*speaker_pretrain"):
        resolve(ExperimentConfig(model="res_trans", final_model="all_speakers"))
    with pytest.raises(ConfigError, match="final_model.*valid: best_fold, all_speakers"):
        ExperimentConfig(final_model="everyone")
