"""Experiments: resolve a config, make sure the features exist, run every fold with the model's
trainer, and write ``<root>/experiments/<experiment-id>/`` (docs/ARCHITECTURE.md)::

    config.json          {"experiment_id", "config" (resolved ExperimentConfig), "resolved" (model entry,
                          feature spec, augment variants, view, train, stage2, spec_augment),
                          "digests" {manifest, features, augment, config}, "folds" (sizes, validation
                          source), "speaker_dependent", "protocol", "classes", "skipped"}
    metrics.json         {"folds": [...], "pooled": {...}, "mean": {...}, "std": {...},
                          "aggregation": {what each means}, "speaker_dependent", "protocol", "classes"}
    history.json         {"<fold>": [{"epoch", "train_loss", "val_loss", "val_ua", ...}]}
    history_stage1.json  stage-1 histories of two-stage / speaker pre-training models (when any)
    predictions.csv      utterance_id, fold, speaker, true, pred, p_<class>...
    confusion_<fold>.png / .csv, confusion_pooled.png / .csv, curves.png
    model/               model.json (everything needed to rebuild the pipeline) + weights.pt
                         (+ stage2.pt for two-stage models)

Trainers (registry ``TRAINERS``, keyed by ``ModelEntry.trainer``): ``standard``, ``two_stage``,
``speaker_pretrain``, ``classic``. Each returns test posteriors for one fold.

Checkpoint selection never sees the test fold: the validation set is the protocol's validation
speaker, else held-out training speakers (:func:`ser_pipeline.splits.holdout_validation`), or a
stratified part of the training set for speaker-dependent (random) splits.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from ser_pipeline.config import Spec, canonical_json, require, stable_digest
from ser_pipeline.data import FoldData, build_fold_data
from ser_pipeline.errors import ConfigError, StoreError, TrainingError
from ser_pipeline.manifest import atomic_write_bytes, manifest_digest, read_manifest
from ser_pipeline.metrics import aggregate, compare_folds, confusion, score
from ser_pipeline.models import ModelEntry, get_model, load_all
from ser_pipeline.registry import Registry
from ser_pipeline.reports import write_confusion_csv, write_confusion_png, write_curves_png
from ser_pipeline.spec_augment import SpecAugmentSpec
from ser_pipeline.train import (
    EpochCallback,
    FitResult,
    TrainConfig,
    embed_table,
    fit,
    predict_proba,
    pretrain_speakers,
    resolve_device,
    seed_everything,
    sequence_table,
    state_digest,
)
from ser_pipeline.views import ViewSpec
from ser_pipeline.workspace import Workspace

log = logging.getLogger(__name__)

PRESETS = ("default", "paper")
EXPERIMENT_VERSION = "1"


@dataclass(frozen=True)
class ExperimentConfig(Spec):
    """One experiment: a model on a corpus under a protocol, with a seed.

    Empty/None fields take the model entry's values. ``preset="paper"`` also takes the model's
    paper protocol, waveform augmentation and spectrogram augmentation when those are not given;
    ``"default"`` keeps the speaker-independent ``loso`` and no augmentation.
    ``view``/``train``/``stage2`` are override mappings (ViewSpec fields; TrainConfig fields;
    ``{"hparams": {...}, "recipe": {...}}``). ``max_folds`` runs only the first N folds.
    """

    CODE_VERSION = "1"

    model: str = "cnn"
    corpus: str = "demo"
    features: str = ""
    feature_overrides: dict[str, Any] = field(default_factory=dict)
    augment: str = ""
    protocol: str = ""
    protocol_options: dict[str, Any] = field(default_factory=dict)
    seed: int = 0
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    device: str = "auto"
    hparams: dict[str, Any] = field(default_factory=dict)
    view: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    stage2: dict[str, Any] = field(default_factory=dict)
    spec_augment: dict[str, Any] | None = None
    preset: str = "default"
    max_folds: int | None = None

    def validate(self) -> None:
        require(bool(self.model), "model", self.model, "name a registered model (see `ser models`)")
        require(bool(self.corpus), "corpus", self.corpus, "name an ingested corpus")
        require(self.preset in PRESETS, "preset", self.preset, f"valid presets: {list(PRESETS)}")
        require(self.epochs is None or self.epochs >= 0, "epochs", self.epochs, "must be >= 0")
        require(self.batch_size is None or self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.lr is None or self.lr > 0, "lr", self.lr, "must be positive")
        require(self.max_folds is None or self.max_folds >= 1, "max_folds", self.max_folds, "must be >= 1")
        require(set(self.stage2) <= {"hparams", "recipe"}, "stage2", sorted(self.stage2),
                "only 'hparams' and 'recipe' overrides")


@dataclass
class Resolved:
    """An ExperimentConfig with every default filled in from the model entry."""

    entry: ModelEntry
    protocol: str
    feature_preset: str
    augment: str
    hparams: dict[str, Any]
    view: ViewSpec
    train: TrainConfig
    spec_augment: SpecAugmentSpec | None
    stage2_hparams: dict[str, Any]
    stage2_train: TrainConfig | None
    speaker_train: TrainConfig | None

    def to_dict(self) -> dict[str, Any]:
        return json.loads(canonical_json({
            "model": self.entry.describe(),
            "protocol": self.protocol,
            "feature_preset": self.feature_preset,
            "augment": self.augment,
            "hparams": self.hparams,
            "view": self.view.to_dict(),
            "train": self.train.to_dict(),
            "spec_augment": self.spec_augment.to_dict() if self.spec_augment else None,
            "stage2_hparams": self.stage2_hparams,
            "stage2_train": self.stage2_train.to_dict() if self.stage2_train else None,
            "speaker_train": self.speaker_train.to_dict() if self.speaker_train else None,
        }))


def spec_augment_from_config(data: dict[str, Any] | None) -> SpecAugmentSpec | None:
    """Parse the model-entry form ``{"horizontal_mixup": {"a", "b", "c", "ratio"}, "cutout": {...},
    "salt_pepper": {"amount"}, "random_cut": {}, "mixup": {"alpha", "ratio"}}`` or flat
    :class:`SpecAugmentSpec` fields. Empty -> None."""
    if not data:
        return None
    names = set(SpecAugmentSpec.__dataclass_fields__)
    if set(data) <= names:
        return SpecAugmentSpec.from_dict(dict(data))
    out: dict[str, Any] = {}
    for key, opts in data.items():
        opts = dict(opts or {}) if isinstance(opts, dict) else {}
        if key in ("horizontal_mixup", "hmixup"):
            out["hmixup"] = (float(opts.get("a", 0.05)), float(opts.get("b", 1.25)), float(opts.get("c", 1.0)))
            out["ratio"] = float(opts.get("ratio", 0.3))
        elif key == "mixup":
            out["mixup"] = float(opts.get("alpha", 0.2))
            out["ratio"] = float(opts.get("ratio", 0.3))
        elif key == "cutout":
            out["cutout"] = int(opts.get("holes", 1))
            if "max_frac" in opts:
                out["cutout_frac"] = tuple(opts["max_frac"])
        elif key in ("salt_pepper", "salt_and_pepper"):
            out["salt_pepper"] = float(opts.get("amount", 0.01))
        elif key == "random_cut":
            out["random_cut"] = True
        elif key in names:
            out[key] = opts if opts else data[key]
        else:
            raise ConfigError(f"spec_augment: unknown augmentation {key!r}; valid: horizontal_mixup, mixup, "
                              f"cutout, salt_pepper, random_cut")
    return SpecAugmentSpec.from_dict(out)


def resolve(config: ExperimentConfig) -> Resolved:
    """Fill the config from the model entry (ConfigError lists valid model names)."""
    entry = get_model(config.model)
    paper = config.preset == "paper"
    protocol = config.protocol or (entry.protocol if paper else "loso")
    augment = config.augment or (entry.augment if paper else "")
    spec_aug = spec_augment_from_config(config.spec_augment if config.spec_augment is not None
                                        else (entry.spec_augment if paper else None))
    view = ViewSpec.from_dict({**entry.view, **config.view}) if entry.trainer != "classic" else ViewSpec()
    overrides = {"epochs": config.epochs, "batch_size": config.batch_size, "lr": config.lr,
                 "seed": config.seed, "device": config.device}
    train = TrainConfig.from_recipe({**entry.recipe, **config.train}, **overrides)
    if entry.recipe.get("epochs") == 0 and "epochs" not in config.train:
        train = train.replace(epochs=0)  # an ablation that never trains this stage stays untrained
    stage2_train = None
    stage2_hparams: dict[str, Any] = {}
    if entry.trainer == "two_stage":
        require(entry.stage2 is not None, "model", entry.name, "two_stage model without a stage2 builder")
        stage2_hparams = {**entry.stage2_defaults, **config.stage2.get("hparams", {})}
        stage2_train = TrainConfig.from_recipe({**entry.stage2_recipe, **config.stage2.get("recipe", {})}, **overrides)
    speaker_train = None
    if entry.trainer == "speaker_pretrain":
        recipe = {**entry.recipe, **config.train}
        epochs = int(recipe.get("speaker_epochs", train.epochs))
        if config.epochs is not None:
            epochs = min(epochs, config.epochs)
        speaker_train = train.replace(epochs=epochs, lr=float(recipe.get("speaker_lr", train.lr)), class_weighted=False)
    return Resolved(entry, protocol, config.features or entry.feature_preset, augment,
                    {**entry.defaults, **config.hparams}, view, train, spec_aug, stage2_hparams, stage2_train,
                    speaker_train)


# ----------------------------------------------------------------------------------------------
# Per-fold trainers


@dataclass
class FoldRun:
    """Everything a trainer needs for one fold."""

    name: str
    index: int
    resolved: Resolved
    manifest: pd.DataFrame
    train_ids: tuple[str, ...]
    val_ids: tuple[str, ...]
    test_ids: tuple[str, ...]
    classes: list[str]
    device: torch.device
    workdir: Path
    callbacks: Sequence[EpochCallback]
    source: Any = None  # FeatureSet (neural trainers)
    store: Any = None  # FeatureStore (two-stage derived items)
    feature_digest: str = ""
    train_variants: tuple[str, ...] = ("orig",)
    functionals_dir: Path | None = None

    @property
    def seed(self) -> int:
        return self.resolved.train.seed + 1000 * self.index

    def fold_data(self) -> FoldData:
        return build_fold_data(
            self.source, self.manifest, name=self.name, train_ids=self.train_ids, val_ids=self.val_ids,
            test_ids=self.test_ids, classes=self.classes, train_variants=self.train_variants,
            normalise=self.resolved.view.normalise, device=self.device)


@dataclass
class FoldOutcome:
    """Test posteriors ``probs (N_test, K)`` in ``test_ids`` order, plus what to save."""

    probs: np.ndarray
    history: list[dict[str, float]]
    best_epoch: int
    val_ua: float
    model: Any = None
    stage2: Any = None
    stage1_history: list[dict[str, float]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)
    stats: dict[str, torch.Tensor] = field(default_factory=dict)
    fold: str = ""


TRAINERS: Registry[Callable[[FoldRun], FoldOutcome]] = Registry("trainer")


def _in_channels(view: ViewSpec, data: FoldData) -> int:
    return view.channels or data.train.shape[0]


def _build(run: FoldRun, data: FoldData) -> nn.Module:
    seed_everything(run.seed)
    r = run.resolved
    model = r.entry.build(n_classes=len(run.classes), in_channels=_in_channels(r.view, data), **r.hparams)
    return model.to(run.device)


def _fit(run: FoldRun, model: nn.Module, data: FoldData, *, view: ViewSpec, config: TrainConfig, tag: str = "",
         spec_aug: SpecAugmentSpec | None = None, train=None, val=None) -> FitResult:
    return fit(model, train if train is not None else data.train, val if val is not None else data.val,
               view=view, config=config.replace(seed=run.seed), n_classes=len(run.classes), spec_augment=spec_aug,
               fold=run.name + tag, checkpoint_dir=run.workdir / (tag.strip("/") or "main"),
               callbacks=run.callbacks if not tag else ())


@TRAINERS.register("standard")
def train_standard(run: FoldRun) -> FoldOutcome:
    """One network end to end on the view."""
    r = run.resolved
    data = run.fold_data()
    model = _build(run, data)
    result = _fit(run, model, data, view=r.view, config=r.train, spec_aug=r.spec_augment)
    probs = predict_proba(model, data.test, r.view, batch_size=r.train.eval_batch_size, bf16=r.train.bf16)
    return FoldOutcome(probs, result.history, result.best_epoch, result.best_val_ua, model=model, timing=result.timing, stats=data.stats)


@TRAINERS.register("speaker_pretrain")
def train_speaker_pretrain(run: FoldRun) -> FoldOutcome:
    """Stage 1: speaker identification on the training speakers; freeze the backbone; stage 2:
    the emotion layers on the same training data."""
    r = run.resolved
    data = run.fold_data()
    model = _build(run, data)
    assert r.speaker_train is not None
    stage1 = pretrain_speakers(model, data.train, view=r.view, config=r.speaker_train.replace(seed=run.seed),
                               fold=run.name, checkpoint_dir=run.workdir / "speaker")
    result = _fit(run, model, data, view=r.view, config=r.train, spec_aug=r.spec_augment)
    probs = predict_proba(model, data.test, r.view, batch_size=r.train.eval_batch_size, bf16=r.train.bf16)
    return FoldOutcome(probs, result.history, result.best_epoch, result.best_val_ua, model=model,
                       stage1_history=stage1.history, timing=result.timing,
                       extra={"speaker_val_acc": stage1.best_val_ua}, stats=data.stats)


@TRAINERS.register("two_stage")
def train_two_stage(run: FoldRun) -> FoldOutcome:
    """Stage 1 on segments; its embeddings for every utterance of the fold go to the store as
    derived items keyed by the stage-1 checkpoint digest; stage 2 trains on ``(B, S, D)``."""
    r = run.resolved
    assert r.stage2_train is not None and r.entry.stage2 is not None
    data = run.fold_data()
    model = _build(run, data)
    stage1 = _fit(run, model, data, view=r.view, config=r.train, spec_aug=r.spec_augment, tag="/stage1")
    digest = state_digest(model)
    tables = data.tables()
    embeddings = {name: embed_table(model, t, r.view, batch_size=r.train.eval_batch_size, bf16=r.train.bf16)
                  for name, t in tables.items()}
    if run.store is not None:
        derived = run.store.derived(run.feature_digest, digest)
        items = {}
        for name, t in tables.items():
            for uid, var, emb in zip(t.utterance_ids, t.variants, embeddings[name], strict=True):
                items[(uid, var)] = emb
        todo = {k: v for k, v in items.items() if not derived.has(*k)}
        if todo:
            derived.write(todo)
        embeddings = {name: [derived.read(uid, var) for uid, var in zip(t.utterance_ids, t.variants, strict=True)]
                      for name, t in tables.items()}
    seq = {name: sequence_table(t, embeddings[name]) for name, t in tables.items()}
    dim = int(seq["train"].shape[1])
    seed_everything(run.seed + 1)
    head = r.entry.stage2(len(run.classes), dim, **r.stage2_hparams).to(run.device)
    view2 = ViewSpec(kind="sequence", normalise="none", frames=0, channels=0)
    result = _fit(run, head, data, view=view2, config=r.stage2_train, train=seq["train"], val=seq["val"])
    probs = predict_proba(head, seq["test"], view2, batch_size=r.stage2_train.eval_batch_size, bf16=r.train.bf16)
    return FoldOutcome(probs, result.history, result.best_epoch, result.best_val_ua, model=model, stage2=head,
                       stage1_history=stage1.history, timing=result.timing,
                       extra={"stage1_checkpoint_digest": digest, "embed_dim": dim}, stats=data.stats)


@TRAINERS.register("classic")
def train_classic(run: FoldRun) -> FoldOutcome:
    """A scikit-learn estimator on cached openSMILE functionals (train + validation speakers)."""
    from ser_pipeline.models.classic import functionals, speaker_znorm

    r = run.resolved
    model = r.entry.build(n_classes=len(run.classes), in_channels=0, **{"seed": r.train.seed, **r.hparams})
    ids = list(run.train_ids) + list(run.val_ids) + list(run.test_ids)
    rows = run.manifest.set_index("utterance_id", drop=False).loc[ids]
    assert run.functionals_dir is not None
    X, failed = functionals(rows, model.feature_set, run.functionals_dir)
    if failed:
        raise TrainingError(f"fold {run.name}: functionals failed for {sorted(failed)[:3]}")
    if model.speaker_norm:
        X = speaker_znorm(X, rows["speaker"].tolist())
    lookup = {c: i for i, c in enumerate(run.classes)}
    y = np.array([lookup[e] for e in rows["emotion"]])
    n_fit = len(run.train_ids) + len(run.val_ids)
    model.fit(X[:n_fit], y[:n_fit])
    probs = model.predict_proba(X[n_fit:])
    val_ua = float("nan")
    return FoldOutcome(probs, [], 0, val_ua, model=model)


# ----------------------------------------------------------------------------------------------
# Features


def ensure_features(manifest: pd.DataFrame, resolved: Resolved, config: ExperimentConfig, ws: Workspace,
                    train_ids: set[str], *, manifest_name: str, digest: str) -> tuple[Any, Any, dict[str, str], dict[str, Any]]:
    """Materialise ``orig`` for every utterance and the augmentation variants for training
    utterances only. Returns ``(store, feature_set, failed {utterance_id: reason}, report)``."""
    from feature_store.materialise import materialise
    from feature_store.store import FeatureStore
    from ser_pipeline.augment import parse_augment
    from ser_pipeline.features import feature_spec

    spec = feature_spec(resolved.feature_preset, **config.feature_overrides)
    variants = parse_augment(resolved.augment).variants
    store = FeatureStore(ws.features)
    report = materialise(manifest, spec, ["orig"], store, manifest_name=manifest_name, manifest_digest=digest)
    failed = {f.get("utterance_id", ""): f.get("reason", "") for f in _failures(report)}
    extra = [v for v in variants if v != "orig"]
    reports = {"orig": report.to_dict() if hasattr(report, "to_dict") else {}}
    if extra:
        sub = manifest[manifest["utterance_id"].isin(train_ids) & ~manifest["utterance_id"].isin(failed)]
        rep2 = materialise(sub, spec, list(variants), store, manifest_name=manifest_name, manifest_digest=digest)
        reports["variants"] = rep2.to_dict() if hasattr(rep2, "to_dict") else {}
        failed.update({f.get("utterance_id", ""): f.get("reason", "") for f in _failures(rep2)})
    return store, store.open_set(spec), failed, {"spec": spec, "variants": tuple(variants), "reports": reports}


def _failures(report: Any) -> list[dict[str, str]]:
    """``[{"utterance_id", "reason"}]`` from a MaterialiseReport's ``(utterance_id, variant, reason)``."""
    return [{"utterance_id": u, "reason": f"{v}: {r}"} for u, v, r in getattr(report, "failed", []) or []]


# ----------------------------------------------------------------------------------------------
# Experiment


@dataclass
class ExperimentResult:
    """Where the experiment was written and its aggregate metrics."""

    experiment_id: str
    directory: Path
    metrics: dict[str, Any]
    cached: bool = False

    @property
    def path(self) -> Path:
        return self.directory


def experiment_id(config: ExperimentConfig, manifest_digest_: str, protocol: str) -> str:
    """``<corpus>-<model>-<protocol>-s<seed>-<digest8>``: stable for a config and manifest."""
    tag = stable_digest({"config": config.digest(), "manifest": manifest_digest_}, version=EXPERIMENT_VERSION, length=8)
    return f"{config.corpus}-{config.model}-{protocol}-s{config.seed}-{tag}"


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_json_default) + "\n").encode())


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple | set):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _validation(manifest: pd.DataFrame, fold: Any, seed: int) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    from ser_pipeline.splits import holdout_validation

    if fold.val:
        return tuple(fold.train), tuple(fold.val), "protocol"
    train, val = holdout_validation(manifest, fold.train, speaker_dependent=fold.speaker_dependent, seed=seed)
    return train, val, "held-out training part (stratified)" if fold.speaker_dependent else "held-out training speakers"


def run_experiment(
    config: ExperimentConfig,
    workspace: Workspace,
    *,
    callbacks: Sequence[EpochCallback] | None = None,
    force: bool = False,
) -> ExperimentResult:
    """Run every fold of ``config`` and write the experiment directory (see the module docstring).

    A finished experiment with the same id is returned as is unless ``force``. Errors: unknown
    model or protocol (ConfigError / ProtocolError listing the valid names), a protocol that
    cannot be formed (ProtocolError), CUDA requested but absent (TrainingError).
    """
    from ser_pipeline.splits import make_folds

    load_all()
    resolved = resolve(config)
    device = resolve_device(config.device) if resolved.entry.trainer != "classic" else torch.device("cpu")
    manifest = read_manifest(config.corpus, workspace)
    m_digest = manifest_digest(manifest)
    exp_id = experiment_id(config, m_digest, resolved.protocol)
    out = workspace.experiments / exp_id
    if (out / "metrics.json").exists() and not force:
        return ExperimentResult(exp_id, out, json.loads((out / "metrics.json").read_text()), cached=True)
    folds = make_folds(resolved.protocol, manifest, seed=config.seed, **config.protocol_options)
    if config.max_folds:
        folds = folds[: config.max_folds]
    classes = sorted(manifest["emotion"].unique())
    workdir = out / "checkpoints"
    out.mkdir(parents=True, exist_ok=True)
    if force:
        shutil.rmtree(workdir, ignore_errors=True)

    store = source = None
    feature_info: dict[str, Any] = {}
    failed: dict[str, str] = {}
    if resolved.entry.trainer != "classic":
        train_union = set().union(*(set(f.train) for f in folds))
        store, source, failed, feature_info = ensure_features(manifest, resolved, config, workspace, train_union,
                                                              manifest_name=config.corpus, digest=m_digest)
        if failed:
            warnings.warn(f"{len(failed)} utterance(s) have no features and are left out: {sorted(failed)[:3]}",
                          stacklevel=2)
    feature_digest = feature_info["spec"].digest() if feature_info else ""
    variants = feature_info.get("variants", ("orig",))
    usable = manifest[~manifest["utterance_id"].isin(failed)].reset_index(drop=True)

    fold_rows, histories, stage1_histories, pred_frames = [], {}, {}, []
    fold_info = []
    pooled = np.zeros((len(classes), len(classes)), dtype=np.int64)
    best: tuple[float, FoldOutcome | None] = (-np.inf, None)
    t_start = time.perf_counter()
    for i, fold in enumerate(folds):
        drop = set(failed)
        fold = type(fold)(fold.name, tuple(u for u in fold.train if u not in drop), tuple(u for u in fold.val if u not in drop),
                          tuple(u for u in fold.test if u not in drop), fold.speaker_dependent)
        train_ids, val_ids, val_source = _validation(usable, fold, config.seed)
        run = FoldRun(fold.name, i, resolved, usable, train_ids, val_ids, tuple(fold.test), classes, device,
                      workdir / fold.name, list(callbacks or ()), source, store, feature_digest, tuple(variants),
                      workspace.features)
        t0 = time.perf_counter()
        outcome = TRAINERS.get(resolved.entry.trainer)(run)
        outcome.fold = fold.name
        seconds = time.perf_counter() - t0
        test_rows = usable.set_index("utterance_id", drop=False).loc[list(fold.test)]
        y_true = np.array([classes.index(e) for e in test_rows["emotion"]])
        y_pred = outcome.probs.argmax(axis=1)
        m = score(y_true, y_pred, classes, where=f"fold {fold.name}")
        pooled += confusion(y_true, y_pred, len(classes))
        fold_rows.append({"fold": fold.name, "speaker_dependent": fold.speaker_dependent, "best_epoch": outcome.best_epoch,
                          "val_ua": outcome.val_ua, "seconds": round(seconds, 3), "timing": outcome.timing,
                          **outcome.extra, **m})
        histories[fold.name] = outcome.history
        if outcome.stage1_history:
            stage1_histories[fold.name] = outcome.stage1_history
        fold_info.append({"name": fold.name, "n_train": len(train_ids), "n_val": len(val_ids), "n_test": len(fold.test),
                          "validation": val_source, "speaker_dependent": fold.speaker_dependent,
                          "test_speakers": sorted(test_rows["speaker"].unique())})
        frame = pd.DataFrame({"utterance_id": test_rows["utterance_id"].to_numpy(), "fold": fold.name,
                              "speaker": test_rows["speaker"].to_numpy(), "true": [classes[k] for k in y_true],
                              "pred": [classes[k] for k in y_pred]})
        for k, c in enumerate(classes):
            frame[f"p_{c}"] = outcome.probs[:, k]
        pred_frames.append(frame)
        cm = np.array(m["confusion"])
        write_confusion_csv(cm, classes, out / f"confusion_{fold.name}.csv")
        write_confusion_png(cm, classes, out / f"confusion_{fold.name}.png", title=f"{config.model} {fold.name}")
        key = outcome.val_ua if np.isfinite(outcome.val_ua) else -i
        if best[1] is None or key > best[0]:
            best = (key, outcome)
        log.info("fold %s: UA %.3f WA %.3f (%.1fs)", fold.name, m["ua"], m["wa"], seconds)

    speaker_dependent = any(f.speaker_dependent for f in folds)
    agg = aggregate(fold_rows, pooled, classes)
    metrics = {
        "experiment_id": exp_id, "folds": fold_rows, **agg, "classes": classes, "protocol": resolved.protocol,
        "speaker_dependent": speaker_dependent,
        "evaluation": "speaker-dependent (same speakers in train and test)" if speaker_dependent else "speaker-independent",
        "aggregation": {"pooled": "metrics of all test predictions of all folds together",
                        "mean": "unweighted mean of the per-fold metrics", "std": "sample std (ddof=1) of the per-fold metrics"},
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    write_confusion_csv(pooled, classes, out / "confusion_pooled.csv")
    write_confusion_png(pooled, classes, out / "confusion_pooled.png", title=f"{config.model} pooled ({resolved.protocol})")
    pd.concat(pred_frames).to_csv(out / "predictions.csv", index=False)
    write_curves_png(histories, out / "curves.png")
    _write_json(out / "history.json", histories)
    if stage1_histories:
        _write_json(out / "history_stage1.json", stage1_histories)
    digests = {"manifest": m_digest, "features": feature_digest,
               "augment": _augment_digest(resolved.augment), "config": config.digest()}
    _save_model(out / "model", best[1], config, resolved, classes, feature_info, usable)
    _write_json(out / "config.json", {
        "experiment_id": exp_id, "config": config.to_dict(), "resolved": resolved.to_dict(), "digests": digests,
        "folds": fold_info, "speaker_dependent": speaker_dependent, "protocol": resolved.protocol, "classes": classes,
        "skipped": failed, "device": str(device), "feature_spec": feature_info["spec"].to_dict() if feature_info else None,
        "variants": list(variants),
    })
    _write_json(out / "metrics.json", metrics)  # written last: its presence marks a finished experiment
    shutil.rmtree(workdir, ignore_errors=True)
    return ExperimentResult(exp_id, out, metrics)


def _augment_digest(augment: str) -> str:
    from ser_pipeline.augment import parse_augment

    return parse_augment(augment).digest()


def _save_model(model_dir: Path, outcome: FoldOutcome | None, config: ExperimentConfig, resolved: Resolved,
                classes: list[str], feature_info: dict[str, Any], manifest: pd.DataFrame) -> None:
    """``model/model.json`` + ``weights.pt`` (+ ``stage2.pt``) of the fold with the best validation UA."""
    model_dir.mkdir(parents=True, exist_ok=True)
    if outcome is None:
        return
    meta: dict[str, Any] = {
        "model": config.model, "trainer": resolved.entry.trainer, "classes": classes, "n_classes": len(classes),
        "hparams": resolved.hparams, "view": resolved.view.to_dict(),
        "feature_spec": feature_info["spec"].to_dict() if feature_info else None,
        "selected_by": "best validation UA over folds", "fold": outcome.fold,
        "stage2_hparams": resolved.stage2_hparams,
    }
    if outcome.stats:
        torch.save(outcome.stats, model_dir / "normalisation.pt")
        meta["normalisation_file"] = "normalisation.pt"
    if isinstance(outcome.model, nn.Module):
        torch.save({k: v.detach().cpu() for k, v in outcome.model.state_dict().items()}, model_dir / "weights.pt")
        meta["in_channels"] = _module_in_channels(resolved, feature_info)
        if outcome.stage2 is not None:
            torch.save({k: v.detach().cpu() for k, v in outcome.stage2.state_dict().items()}, model_dir / "stage2.pt")
            meta["embed_dim"] = outcome.extra.get("embed_dim")
    elif outcome.model is not None:
        import pickle

        (model_dir / "estimator.pkl").write_bytes(pickle.dumps(outcome.model))
    _write_json(model_dir / "model.json", meta)


def _module_in_channels(resolved: Resolved, feature_info: dict[str, Any]) -> int:
    spec = feature_info.get("spec")
    return resolved.view.channels or (spec.channels if spec is not None else 3)


def load_trained_model(model_dir: str | Path, *, device: str = "cpu") -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
    """Rebuild ``(network, stage2 or None, meta)`` from an experiment's ``model/`` folder.

    ``meta`` holds ``model.json`` (model, classes, hparams, view, feature_spec, fold, ...) and, for
    ``normalise="global"``, ``meta["normalisation"] = {"mean", "std"}`` ``(C, F)`` training statistics
    (apply with :func:`ser_pipeline.data.normalise_with`).
    """
    model_dir = Path(model_dir)
    meta_path = model_dir / "model.json"
    if not meta_path.exists():
        raise ConfigError(f"{meta_path}: not a trained model folder (model.json missing)")
    meta = json.loads(meta_path.read_text())
    entry = get_model(meta["model"])
    hparams = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["hparams"].items()}
    model = entry.build(n_classes=meta["n_classes"], in_channels=meta["in_channels"], **hparams)
    model.load_state_dict(torch.load(model_dir / "weights.pt", map_location=device, weights_only=True))
    stage2 = None
    if (model_dir / "stage2.pt").exists() and entry.stage2 is not None:
        stage2 = entry.stage2(meta["n_classes"], meta["embed_dim"], **meta.get("stage2_hparams", {}))
        stage2.load_state_dict(torch.load(model_dir / "stage2.pt", map_location=device, weights_only=True))
    if meta.get("normalisation_file"):
        meta["normalisation"] = torch.load(model_dir / meta["normalisation_file"], weights_only=True)
    return model.to(device).eval(), (stage2.to(device).eval() if stage2 is not None else None), meta


def compare_experiments(a_dir: str | Path, b_dir: str | Path, *, metric: str = "ua") -> dict[str, Any]:
    """Paired t-test and Wilcoxon signed-rank test over the folds two experiments share."""
    a = json.loads((Path(a_dir) / "metrics.json").read_text())
    b = json.loads((Path(b_dir) / "metrics.json").read_text())
    fa = {f["fold"]: f[metric] for f in a["folds"]}
    fb = {f["fold"]: f[metric] for f in b["folds"]}
    shared = sorted(set(fa) & set(fb))
    if not shared:
        raise StoreError(f"experiments {a_dir} and {b_dir} share no folds")
    if set(fa) != set(fb):
        log.warning("comparing only the %d shared folds", len(shared))
    return {"metric": metric, "folds": shared, "a": str(a_dir), "b": str(b_dir),
            **compare_folds([fa[f] for f in shared], [fb[f] for f in shared])}
