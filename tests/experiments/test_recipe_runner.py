"""Issue 13 in the runner: rotated validation speakers, the refit on every non-test speaker, the
recipe recorded in every output, the cpu preset, and the per-experiment file lock (two real
processes)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from ser_pipeline.corpora import ingest
from ser_pipeline.corpora.demo import generate_demo_corpus
from ser_pipeline.errors import ConfigError
from ser_pipeline.experiments.config import ExperimentConfig, experiment_digest, resolve
from ser_pipeline.experiments.runner import fold_validation, run_experiment
from ser_pipeline.features import PRESETS
from ser_pipeline.manifest import read_manifest
from ser_pipeline.models import load_all
from ser_pipeline.splits import make_folds
from ser_pipeline.workspace import Workspace

pytestmark = pytest.mark.usefixtures("torch_one_thread")

TINY = {"model": "cnn", "corpus": "demo", "epochs": 2, "train": {"batch_size": 8},
        "hparams": {"channels": [4, 8]}, "view": {"frames": 60}, "max_folds": 2}


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    """4 speakers x 4 emotions x 3 utterances of the demo corpus, ingested as ``demo``."""
    workspace = Workspace.resolve(tmp_path_factory.mktemp("recipes") / "root")
    csv = generate_demo_corpus(workspace.demo, seed=0, n_speakers=4, per_class=3)
    ingest("csv", csv, "demo", workspace)
    return workspace


def manifest(speakers: int = 6, per: int = 4) -> pd.DataFrame:
    rows = [{"utterance_id": f"s{s}-{i}", "speaker": f"s{s}", "emotion": ("a", "b")[i % 2]}
            for s in range(speakers) for i in range(per)]
    return pd.DataFrame(rows)


@pytest.mark.parametrize("seed", [0, 1])
def test_rotated_validation_speakers_differ_across_folds_and_never_test(seed: int) -> None:
    m = manifest()
    folds = make_folds("loso", m, seed=seed)
    speaker = dict(zip(m.utterance_id, m.speaker, strict=True))
    chosen = []
    for fold in folds:
        train, val, how = fold_validation(m, fold, seed, "rotate")
        val_speakers = {speaker[u] for u in val}
        test_speakers = {speaker[u] for u in fold.test}
        assert how == "rotated held-out training speakers" and len(val_speakers) == 1
        assert not val_speakers & test_speakers and not set(train) & set(val)
        assert set(train) | set(val) == set(fold.train)
        chosen.append(val_speakers.pop())
    assert sorted(chosen) == sorted(m.speaker.unique())  # LOSO: every speaker validates exactly one fold
    fixed = {frozenset(speaker[u] for u in fold_validation(m, f, seed, "fixed")[1]) for f in folds}
    assert len(fixed) < len(folds)  # the old fixed choice repeats speakers across folds


def test_refit_trains_on_every_non_test_speaker_and_is_recorded(ws: Workspace) -> None:
    record = run_experiment(ExperimentConfig.from_dict(TINY), ws, device="cpu")
    config = json.loads((record.folder / "config.json").read_text())
    m = read_manifest("demo", ws)
    for info in config["folds"]:
        non_test = m.loc[~m.speaker.isin(info["test_speakers"])]
        assert info["refit"] is True and info["n_fit"] == len(non_test) == info["n_train"] + info["n_val"]
        assert info["validation"] == "rotated held-out training speakers" and 1 <= info["chosen_epoch"] <= 2
        assert not set(info["val_speakers"]) & set(info["test_speakers"])
    assert len({tuple(i["val_speakers"]) for i in config["folds"]}) == len(config["folds"])
    recipe = record.metrics["recipe"]
    assert recipe["normalise"] == "speaker" and recipe["refit"] and recipe["precise_bn"] and recipe["validation"] == "rotate"
    assert all(f["refit"] and f["normalise"] == "speaker" for f in record.metrics["folds"])
    # the default refit trains the whole 2-epoch budget, whatever epoch validation liked best
    assert all(f["refit_epochs"] == 2 and f["refit_epoch_choice"] == "budget" for f in record.metrics["folds"])
    assert all(f["n_fit"] == i["n_fit"] for f, i in zip(record.metrics["folds"], config["folds"], strict=True))

    off = run_experiment(ExperimentConfig.from_dict({**TINY, "refit": False, "validation": "fixed"}), ws, device="cpu")
    off_info = json.loads((off.folder / "config.json").read_text())["folds"]
    assert all(not i["refit"] and i["n_fit"] == i["n_train"] for i in off_info)
    assert off.experiment_id != record.experiment_id and off.metrics["recipe"]["refit"] is False


def test_the_folds_tables_are_freed_before_the_refit_loads_its_own(ws: Workspace, monkeypatch: pytest.MonkeyPatch) -> None:
    """Memory: the refit loads every non-test speaker again, so the fold's tables must be gone by
    then, or a fold of stored SSL layers holds both (peak RSS 12.7 GB -> 7.9 GB on CASIA); and it
    loads no validation table, which it never reads."""
    import gc
    import weakref

    from ser_pipeline.training.trainers.base import FoldRun

    loaded: list[weakref.ref] = []
    alive_at_refit: list[int] = []
    original = FoldRun.fold_data

    def watched(self: FoldRun, *, with_val: bool = False):
        if with_val:
            gc.collect()
            alive_at_refit.append(sum(ref() is not None for ref in loaded))
        data = original(self, with_val=with_val)
        loaded.extend(weakref.ref(t.frames) for t in data.tables().values())
        if with_val:  # the refit's data: train holds the validation speakers, and no validation table is loaded
            assert data.val is None and len(data.train) == len(self.train_ids) + len(self.val_ids)
        return data

    monkeypatch.setattr(FoldRun, "fold_data", watched)
    record = run_experiment(ExperimentConfig.from_dict({**TINY, "seed": 7}), ws, device="cpu")
    assert all(f["refit"] for f in record.metrics["folds"])
    assert alive_at_refit == [0, 0]  # one refit per fold, and no fold table outlived its fold's fit


def test_speaker_bn_statistics_are_the_default_recorded_and_refused_where_they_are_not_built(ws: Workspace) -> None:
    record = run_experiment(ExperimentConfig.from_dict(TINY), ws, device="cpu")
    assert record.metrics["recipe"]["bn_statistics"] == "speaker"  # the default recipe's AdaBN
    assert all(f["bn_statistics"] == "speaker" for f in record.metrics["folds"])
    assert json.loads((record.folder / "model" / "model.json").read_text())["bn_statistics"] == "speaker"
    config = {**TINY, "train": {**TINY["train"], "bn_statistics": "train"}}
    plain = run_experiment(ExperimentConfig.from_dict(config), ws, device="cpu")
    assert plain.metrics["recipe"]["bn_statistics"] == "train" and plain.experiment_id != record.experiment_id
    assert resolve(ExperimentConfig(model="cnn", preset="paper")).plan.train.bn_statistics == "train"
    two_stage = resolve(ExperimentConfig(model="dcnn_blstm_att", preset="cpu"))
    assert two_stage.plan.train.bn_statistics == "train"  # on request only (tests/models/test_dcnn_blstm_att.py)
    # a config the new field does not change keeps its experiment id from before the field (9e1e03f)
    paper = ExperimentConfig(model="cnn", corpus="casia", preset="paper")
    assert experiment_digest(paper, resolve(paper)) == "bb05fb3a321fe8af"
    with pytest.raises(ConfigError, match=r"train\.bn_statistics.*speaker_pretrain"):
        resolve(ExperimentConfig.from_dict({"model": "res_trans", "train": {"bn_statistics": "speaker"}}))


def test_every_registered_model_has_a_cpu_preset_that_shrinks_it() -> None:
    for name, entry in load_all().items():
        if entry.feature_preset in PRESETS and PRESETS.get(entry.feature_preset).get("kind") == "ssl":
            assert entry.cpu, name  # resolving needs a checkpoint: tests/flows/test_ssl_pipeline.py trains it
            continue
        cpu = resolve(ExperimentConfig(model=name, preset="cpu"))
        full = resolve(ExperimentConfig(model=name))
        assert entry.cpu, name
        if not cpu.trainer.uses_view:
            continue
        size = lambda r: sum(p.numel() for p in r.entry.build(n_classes=4, in_channels=r.plan.view.channels or 3,  # noqa: E731
                                                              **r.plan.hparams).parameters())
        small, big = size(cpu), size(full)
        assert small < big or name == "alexnet_sru_sru_only", (name, small, big)
        assert cpu.plan.train.epochs <= full.plan.train.epochs


SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    from ser_pipeline.experiments.config import ExperimentConfig
    from ser_pipeline.experiments.runner import run_experiment
    from ser_pipeline.workspace import Workspace
    epochs = []
    record = run_experiment(ExperimentConfig.from_dict(json.loads(sys.argv[2])), Workspace.resolve(sys.argv[1]),
                            device="cpu", callbacks=[lambda fold, epoch, m: epochs.append(epoch)])
    print(json.dumps({"id": record.experiment_id, "trained_epochs": len(epochs)}))
""")


def test_two_processes_on_one_experiment_train_once(ws: Workspace, tmp_path: Path) -> None:
    config = json.dumps({**TINY, "seed": 7, "max_folds": 1})
    script = tmp_path / "run_one.py"
    script.write_text(SCRIPT)
    env_path = str(Path(__file__).resolve().parents[2])
    env = {**__import__("os").environ, "PYTHONPATH": env_path, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, str(script), str(ws.root), config], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env) for _ in range(2)]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-2000:]
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert results[0]["id"] == results[1]["id"]
    trained = sorted(r["trained_epochs"] for r in results)
    assert trained[0] == 0 and trained[1] > 0  # one trained, the other waited and reused its record
    assert (ws.experiments / results[0]["id"] / ".lock").exists()


def test_cpu_preset_may_request_waveform_variants_and_the_user_overrides_them() -> None:
    from ser_pipeline.experiments.config import experiment_digest
    from ser_pipeline.experiments.runner import recipe_summary
    from ser_pipeline.models.dcnn_blstm_att import AUGMENT, CPU_AUGMENT

    def resolved(**fields):
        config = ExperimentConfig(model="dcnn_blstm_att", **fields)
        with pytest.warns(UserWarning):  # no ImageNet weights: the from-scratch note
            return config, resolve(config)

    cpu_config, cpu = resolved(preset="cpu")
    assert cpu.augment == CPU_AUGMENT == "speed=0.9,1.1"  # chosen on CASIA validation speakers
    assert resolved(preset="paper")[1].augment == AUGMENT  # the paper's 5x, unchanged
    assert resolved()[1].augment == ""  # the default preset requests nothing
    off_config, off = resolved(preset="cpu", augment="orig")  # the user switches it off
    assert off.augment == "orig"
    assert experiment_digest(cpu_config, cpu) != experiment_digest(off_config, off)
    assert recipe_summary(cpu_config, cpu)["waveform_augment"] == "orig, speed=0.9, speed=1.1"  # said in every output
    assert recipe_summary(off_config, off)["waveform_augment"] == "orig"
    assert resolve(ExperimentConfig(model="cnn", preset="cpu")).augment == ""  # only where a recipe asks


@pytest.mark.parametrize("model", ["dcnn_blstm_att", "res_trans"])
def test_stage2_refit_has_an_id_of_its_own(model: str) -> None:
    """Two-stage and speaker pre-training models refit stage 2 since stop 24: the refit experiment's
    identity says so (records made before, without it, are not served for it); standard-trainer
    experiments are unchanged (no ``refit_stage``)."""
    with_refit = resolve(ExperimentConfig(model=model, corpus="c", preset="cpu"))
    without = resolve(ExperimentConfig(model=model, corpus="c", preset="cpu", refit=False))
    assert with_refit.to_dict(identity=True)["refit_stage"] == "stage2"
    assert "refit_stage" not in without.to_dict(identity=True)
    assert "refit_stage" not in resolve(ExperimentConfig(model="cnn", corpus="c", preset="cpu")).to_dict(identity=True)
