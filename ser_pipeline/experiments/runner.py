"""The fold runner: resolve a config, make sure the features exist, run every fold with the model's
trainer, and write the experiment folder with its :class:`ExperimentRecord` (see
:mod:`ser_pipeline.experiments.record` for the files).

Checkpoint selection never sees the test fold: the validation set is the protocol's validation
speaker, else held-out training speakers that rotate with the test fold
(:func:`ser_pipeline.splits.rotated_validation`, ``validation="rotate"``, the default) or the
seeded fixed choice (:func:`ser_pipeline.splits.holdout_validation`, ``validation="fixed"``), or a
stratified part of the training set for speaker-dependent (random) splits. With ``refit`` the
standard trainer then retrains on every non-test speaker for the chosen number of epochs; both the
validation choice and the refit are recorded per fold (``config.json`` ``folds``, ``metrics.json``).
"""

from __future__ import annotations

import fcntl
import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from feature_store.materialise import variant_list
from feature_store.store import FeatureStore
from ser_pipeline.augment import parse_augment
from ser_pipeline.config import stable_digest
from ser_pipeline.experiments.config import ExperimentConfig, Resolved, experiment_digest, resolve
from ser_pipeline.experiments.corpora import experiment_manifest
from ser_pipeline.experiments.features import ExperimentFeatures, ensure_features
from ser_pipeline.experiments.record import Digests, ExperimentRecord, json_default, write_json
from ser_pipeline.experiments.reports import (
    layer_weights,
    write_confusion_csv,
    write_confusion_png,
    write_curves_png,
    write_layer_weights_png,
)
from ser_pipeline.features import feature_label
from ser_pipeline.heap import flush_denormals
from ser_pipeline.inference.model_folder import save_model_folder
from ser_pipeline.manifest import manifest_digest
from ser_pipeline.metrics import aggregate, confusion, score
from ser_pipeline.splits import Fold, holdout_validation, make_folds, rotated_validation
from ser_pipeline.training.config import resolve_device
from ser_pipeline.training.loop import EpochCallback
from ser_pipeline.training.trainers import FoldOutcome, FoldRun
from ser_pipeline.workspace import Workspace

log = logging.getLogger(__name__)

EXPERIMENT_VERSION = "2"  # 2: identity without the device and the feature preset name


def experiment_id(config: ExperimentConfig, resolved: Resolved, manifest_digest_: str) -> str:
    """``<corpus>-<model>-<protocol>-s<seed>-<digest8>``: stable for a config and manifest, the same
    on any device."""
    tag = stable_digest({"config": experiment_digest(config, resolved), "manifest": manifest_digest_},
                        version=EXPERIMENT_VERSION, length=8)
    return f"{config.corpus}-{config.model}-{resolved.protocol}-s{config.seed}-{tag}"


def fold_validation(manifest: pd.DataFrame, fold: Fold, seed: int, mode: str = "rotate"
                    ) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """``(train_ids, val_ids, how)`` for one fold: the protocol's validation part when it has one;
    else rotated (``mode="rotate"``) or fixed held-out training speakers; speaker-dependent splits
    hold out a stratified part of the training set."""
    if fold.val:
        return tuple(fold.train), tuple(fold.val), "protocol"
    if fold.speaker_dependent:
        train, val = holdout_validation(manifest, fold.train, speaker_dependent=True, seed=seed)
        return train, val, "held-out training part (stratified)"
    if mode == "rotate":
        train, val = rotated_validation(manifest, fold.train, fold.test, seed=seed)
        return train, val, "rotated held-out training speakers"
    train, val = holdout_validation(manifest, fold.train, speaker_dependent=False, seed=seed)
    return train, val, "held-out training speakers (fixed)"


def _speakers(manifest: pd.DataFrame, ids: Sequence[str]) -> list[str]:
    return sorted(manifest.set_index("utterance_id").loc[list(ids), "speaker"].unique())


def _without(fold: Fold, drop: set[str]) -> Fold:
    return Fold(fold.name, tuple(u for u in fold.train if u not in drop), tuple(u for u in fold.val if u not in drop),
                tuple(u for u in fold.test if u not in drop), fold.speaker_dependent)


@dataclass
class _Collected:
    """What the fold loop gathers."""

    classes: list[str]
    rows: list[dict[str, Any]] = field(default_factory=list)
    histories: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    stage1: dict[str, list[dict[str, float]]] = field(default_factory=dict)
    predictions: list[pd.DataFrame] = field(default_factory=list)
    info: list[dict[str, Any]] = field(default_factory=list)
    artifacts: dict[str, str] = field(default_factory=dict)
    best: tuple[float, FoldOutcome | None] = (-np.inf, None)
    final: tuple[FoldOutcome, dict[str, Any]] | None = None  # final_model=all_speakers
    pooled: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.int64))

    def __post_init__(self) -> None:
        self.pooled = np.zeros((len(self.classes), len(self.classes)), dtype=np.int64)


def _score_fold(out: Path, c: _Collected, fold: Fold, index: int, outcome: FoldOutcome, test_rows: pd.DataFrame,
                seconds: float, model: str) -> None:
    classes = c.classes
    y_true = np.array([classes.index(e) for e in test_rows["emotion"]])
    y_pred = outcome.probs.argmax(axis=1)
    m = score(y_true, y_pred, classes, where=f"fold {fold.name}")
    c.pooled += confusion(y_true, y_pred, len(classes))
    c.rows.append({"fold": fold.name, "speaker_dependent": fold.speaker_dependent, "best_epoch": outcome.best_epoch,
                   "val_ua": outcome.val_ua, "seconds": round(seconds, 3), "timing": outcome.timing,
                   **outcome.extra, **m})
    c.histories[fold.name] = outcome.history
    if outcome.stage1_history:
        c.stage1[fold.name] = outcome.stage1_history
    frame = pd.DataFrame({"utterance_id": test_rows["utterance_id"].to_numpy(), "fold": fold.name,
                          "speaker": test_rows["speaker"].to_numpy(), "true": [classes[k] for k in y_true],
                          "pred": [classes[k] for k in y_pred]})
    for k, name in enumerate(classes):
        frame[f"p_{name}"] = outcome.probs[:, k]
    c.predictions.append(frame)
    cm = np.array(m["confusion"])
    write_confusion_csv(cm, classes, out / f"confusion_{fold.name}.csv")
    write_confusion_png(cm, classes, out / f"confusion_{fold.name}.png", title=f"{model} {fold.name}")
    c.artifacts.update({f"confusion_{fold.name}_csv": f"confusion_{fold.name}.csv",
                        f"confusion_{fold.name}_png": f"confusion_{fold.name}.png"})
    key = outcome.val_ua if np.isfinite(outcome.val_ua) else -index
    if c.best[1] is None or key > c.best[0]:
        c.best = (key, outcome)
    log.info("fold %s: UA %.3f WA %.3f (%.1fs)", fold.name, m["ua"], m["wa"], seconds)


@dataclass(frozen=True)
class FoldStarted:
    """What the runner's ``on_fold`` hook is told when fold ``index`` (0-based) of ``total`` starts."""

    index: int
    total: int
    name: str
    n_train: int
    n_val: int
    n_test: int
    val_speakers: tuple[str, ...]
    test_speakers: tuple[str, ...]
    final: bool = False  # the model on every speaker after the folds (final_model=all_speakers)


FINAL_RUN = "all-speakers"  # the name of the final model's training run


def final_epochs(rows: Sequence[dict[str, Any]]) -> int:
    """The final model's epochs: the median over folds of the epochs each fold's refit trained
    (``refit_epochs``; chosen on validation) or, without a refit, of the best validation epochs
    (at least 1)."""
    chosen = [int(r.get("refit_epochs") or r.get("best_epoch") or 0) for r in rows]
    chosen = [c for c in chosen if c > 0]
    return max(1, int(round(float(np.median(chosen))))) if chosen else 1


FoldHook = Callable[[FoldStarted], None]


def experiment_folder(config: ExperimentConfig, workspace: Workspace) -> Path:
    """Where ``config``'s experiment is (or will be) written."""
    resolved = resolve(config)
    manifest = experiment_manifest(config.corpus, resolved.protocol, config.protocol_options, workspace)
    return workspace.experiments / experiment_id(config, resolved, manifest_digest(manifest))


def run_experiment(
    config: ExperimentConfig,
    workspace: Workspace,
    *,
    device: str = "auto",
    callbacks: Sequence[EpochCallback] | None = None,
    on_fold: FoldHook | None = None,
    force: bool = False,
) -> ExperimentRecord:
    """Run every fold of ``config`` on ``device`` and write the experiment folder.

    A finished experiment with the same id (its record) is returned as is unless ``force``; the
    id does not depend on the device. Errors: ConfigError / ProtocolError naming the field and the
    valid names, a protocol that cannot be formed (ProtocolError), CUDA requested but absent
    (TrainingError). Denormal floats are flushed to zero from here on, before torch starts its CPU
    thread pool (which inherits the mode): :func:`~ser_pipeline.heap.flush_denormals`.
    """
    flush_denormals()
    resolved = resolve(config)
    torch_device = resolve_device(device) if resolved.trainer.uses_device else torch.device("cpu")
    manifest = experiment_manifest(config.corpus, resolved.protocol, config.protocol_options, workspace)
    m_digest = manifest_digest(manifest)
    exp_id = experiment_id(config, resolved, m_digest)
    out = workspace.experiments / exp_id
    out.mkdir(parents=True, exist_ok=True)
    with experiment_lock(out):
        found = ExperimentRecord.find(out)
        if found is not None and not force:
            return found
        return _run_locked(config, resolved, manifest, m_digest, exp_id, out, workspace, torch_device, callbacks,
                           on_fold, force)


LOCK_FILE = ".lock"


@contextmanager
def experiment_lock(folder: Path) -> Iterator[None]:
    """An exclusive OS lock (``fcntl.flock``) on ``<folder>/.lock`` for the block's duration.

    Two processes running the same experiment (same id, same root) are serialised: the second
    waits until the first has written its record, then finds it and returns it instead of
    training again. The lock is released when the process exits, even after a crash, so a stale
    lock never blocks; on file systems without flock support it degrades to no locking.
    """
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / LOCK_FILE, "a+") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log.info("experiment %s: another process holds the lock; waiting for it", folder.name)
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        except OSError as exc:  # no flock on this file system
            log.warning("experiment %s: no file lock (%s); concurrent runs are not serialised", folder.name, exc)
        try:
            yield
        finally:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            except OSError:
                pass


@dataclass(frozen=True)
class _FoldContext:
    """What every fold of one experiment shares: its plan, usable rows, classes, device, checkpoint
    folder, epoch callbacks, the feature set and store read, and the training waveform variants."""

    resolved: Resolved
    usable: pd.DataFrame
    classes: list[str]
    device: torch.device
    workdir: Path
    callbacks: tuple[EpochCallback, ...]
    features: ExperimentFeatures | None
    variants: tuple[str, ...]

    def run(self, name: str, index: int, train_ids: Sequence[str], val_ids: Sequence[str],
            test_ids: Sequence[str]) -> FoldRun:
        """The :class:`FoldRun` a trainer gets for one fold (or the final model on every speaker)."""
        f = self.features
        return FoldRun(name, index, self.resolved.plan, self.usable, tuple(train_ids), tuple(val_ids), tuple(test_ids),
                       self.classes, self.device, self.workdir / name, list(self.callbacks),
                       f.feature_set if f else None, f.store if f else None, self.resolved.feature_digest,
                       self.variants)


def _run_locked(config: ExperimentConfig, resolved: Resolved, manifest: pd.DataFrame, m_digest: str, exp_id: str,
                out: Path, workspace: Workspace, torch_device: torch.device,
                callbacks: Sequence[EpochCallback] | None, on_fold: FoldHook | None, force: bool) -> ExperimentRecord:
    """Every fold of an experiment whose lock this process holds."""
    folds = make_folds(resolved.protocol, manifest, seed=config.seed, **config.protocol_options)
    if config.max_folds:
        folds = folds[: config.max_folds]
    workdir = out / "checkpoints"
    if force:
        shutil.rmtree(workdir, ignore_errors=True)

    features: ExperimentFeatures | None = None
    failed: dict[str, str] = {}
    if resolved.features is not None:
        train_union = set().union(*(set(f.train) for f in folds))
        features = ensure_features(manifest, resolved.features, resolved.augment, FeatureStore(workspace.features),
                                   train_union, manifest_name=config.corpus, manifest_digest=m_digest)
        failed = features.failed
        if failed:
            warnings.warn(f"{len(failed)} utterance(s) have no features and are left out: {sorted(failed)[:3]}",
                          stacklevel=2)
    usable = manifest[~manifest["utterance_id"].isin(failed)].reset_index(drop=True)
    context = _FoldContext(resolved, usable, sorted(manifest["emotion"].unique()), torch_device, workdir,
                           tuple(callbacks or ()), features, tuple(features.variants) if features else ("orig",))
    collected = _Collected(context.classes)
    t_start = time.perf_counter()
    for i, fold in enumerate(folds):
        _run_fold(context, config, _without(fold, set(failed)), i, len(folds), collected, out, on_fold)
    if config.final_model == "all_speakers":
        collected.final = _run_final(context, collected, len(folds), on_fold)
    return _write(out, config, resolved, collected, exp_id, m_digest, failed, context.variants, str(torch_device),
                  speaker_dependent=any(f.speaker_dependent for f in folds), seconds=time.perf_counter() - t_start,
                  dropped_classes={k: list(v) for k, v in manifest.attrs.get("dropped_classes", {}).items()})


def _run_fold(context: _FoldContext, config: ExperimentConfig, fold: Fold, index: int, n_folds: int,
              collected: _Collected, out: Path, on_fold: FoldHook | None) -> None:
    """Train and score one fold (validation speakers chosen by ``config.validation``), adding its
    predictions, scores and description to ``collected``."""
    usable = context.usable
    train_ids, val_ids, val_source = fold_validation(usable, fold, config.seed, config.validation)
    if on_fold is not None:
        on_fold(FoldStarted(index, n_folds, fold.name, len(train_ids), len(val_ids), len(fold.test),
                            tuple(_speakers(usable, val_ids)) if val_ids else (), tuple(_speakers(usable, fold.test))))
    t0 = time.perf_counter()
    outcome = context.resolved.trainer.run(context.run(fold.name, index, train_ids, val_ids, fold.test))
    outcome.fold = fold.name
    test_rows = usable.set_index("utterance_id", drop=False).loc[list(fold.test)]
    _score_fold(out, collected, fold, index, outcome, test_rows, time.perf_counter() - t0, config.model)
    collected.info.append({"name": fold.name, "n_train": len(train_ids), "n_val": len(val_ids),
                           "n_test": len(fold.test), "validation": val_source,
                           "val_speakers": _speakers(usable, val_ids), "chosen_epoch": outcome.best_epoch,
                           "refit": bool(outcome.extra.get("refit", False)),
                           "n_fit": outcome.extra.get("n_fit", len(train_ids)),
                           "speaker_dependent": fold.speaker_dependent,
                           "test_speakers": sorted(test_rows["speaker"].unique())})


def _run_final(context: _FoldContext, collected: _Collected, n_folds: int,
               on_fold: FoldHook | None) -> tuple[FoldOutcome, dict[str, Any]]:
    """One model on every speaker for the median of the folds' chosen epochs (``final_model=all_speakers``),
    and its description for the record."""
    usable, trainer = context.usable, context.resolved.trainer
    all_ids = tuple(usable["utterance_id"])
    epochs = final_epochs(collected.rows)
    if on_fold is not None:
        on_fold(FoldStarted(n_folds, n_folds, FINAL_RUN, len(all_ids), 0, 0, (),
                            tuple(sorted(usable["speaker"].unique())), final=True))
    outcome = trainer.fit_final(context.run(FINAL_RUN, n_folds, all_ids, (), ()), epochs)
    n_speakers = usable["speaker"].nunique()
    return outcome, {
        "kind": "all_speakers", "fold": FINAL_RUN, "epochs": epochs if trainer.uses_view else None,
        "n_fit": int(outcome.extra.get("n_fit", len(all_ids))), "speakers": int(n_speakers),
        "selected_by": f"trained on every speaker ({n_speakers} speakers, {len(all_ids)} utterances)"
                       + (f" for {epochs} epochs, the median of the folds' epochs chosen on validation"
                          if trainer.uses_view else "")}


def _write(out: Path, config: ExperimentConfig, resolved: Resolved, c: _Collected, exp_id: str, m_digest: str,
           failed: dict[str, str], variants: Sequence[str], device: str, *, speaker_dependent: bool,
           seconds: float, dropped_classes: dict[str, list[str]]) -> ExperimentRecord:
    classes = c.classes
    agg = aggregate(c.rows, c.pooled, classes)
    metrics = {
        "experiment_id": exp_id, "folds": c.rows, **agg, "classes": classes, "protocol": resolved.protocol,
        "speaker_dependent": speaker_dependent,
        "evaluation": "speaker-dependent (same speakers in train and test)" if speaker_dependent else "speaker-independent",
        "aggregation": {"pooled": "metrics of all test predictions of all folds together",
                        "mean": "unweighted mean of the per-fold metrics", "std": "sample std (ddof=1) of the per-fold metrics"},
        "seconds": round(seconds, 3),
        "recipe": recipe_summary(config, resolved),
        "dropped_classes": dropped_classes,  # cross_corpus: {corpus: [its classes left out]}
    }
    write_confusion_csv(c.pooled, classes, out / "confusion_pooled.csv")
    write_confusion_png(c.pooled, classes, out / "confusion_pooled.png", title=f"{config.model} pooled ({resolved.protocol})")
    pd.concat(c.predictions).to_csv(out / "predictions.csv", index=False)
    curves = write_curves_png(c.histories, out / "curves.png")  # None for a model without epochs (svm)
    learned = layer_weights(c.rows)
    if learned:  # ssl_probe: the weight of every stored layer, per fold
        write_layer_weights_png(learned, out / "layer_weights.png")
        c.artifacts["layer_weights"] = "layer_weights.png"
    write_json(out / "history.json", c.histories)
    artifacts = {**c.artifacts, "confusion_pooled_csv": "confusion_pooled.csv", "confusion_pooled_png": "confusion_pooled.png",
                 "predictions": "predictions.csv", "history": "history.json",
                 "config": "config.json", "metrics": "metrics.json"}
    if curves is not None:
        artifacts["curves"] = "curves.png"
    if c.stage1:
        write_json(out / "history_stage1.json", c.stage1)
        artifacts["history_stage1"] = "history_stage1.json"
    digests = Digests(manifest=m_digest, features=resolved.feature_digest,
                      augment=parse_augment(resolved.augment).digest(), config=experiment_digest(config, resolved))
    if c.final is not None:
        served, final_info = c.final
    else:
        served = c.best[1]
        final_info = {"kind": "best_fold", "fold": served.fold if served else None,
                      "selected_by": "best validation UA over folds" if served and np.isfinite(served.val_ua)
                      else "first fold (no validation score)"}
    _save_model(out / "model", served, config, resolved, classes, selected_by=final_info["selected_by"])
    spec = resolved.features
    write_json(out / "config.json", {
        "experiment_id": exp_id, "config": config.to_dict(), "resolved": resolved.to_dict(),
        "digests": digests.__dict__, "folds": c.info, "speaker_dependent": speaker_dependent,
        "protocol": resolved.protocol, "classes": classes, "skipped": failed, "device": device,
        "feature_spec": spec.to_dict() if spec else None, "variants": list(variants), "final_model": final_info,
        "dropped_classes": dropped_classes,
    })
    write_json(out / "metrics.json", metrics)
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    record = ExperimentRecord(
        experiment_id=exp_id, folder=out, model=config.model, corpus=config.corpus, seed=config.seed,
        protocol=resolved.protocol, speaker_dependent=speaker_dependent, classes=tuple(classes), digests=digests,
        config=config.to_dict(), feature_label=feature_label(spec) if spec else "", metrics=metrics,
        artifacts=artifacts, model_folder="model", device=device, final_model=final_info,
        dropped_classes=dropped_classes)
    record.write()  # last: its presence marks a finished experiment
    return record


def recipe_summary(config: ExperimentConfig, resolved: Resolved) -> dict[str, Any]:
    """What every output says about the recipe: preset, normalisation, validation, refit, precise-BN and
    where evaluation's BatchNorm statistics come from (``bn_statistics``: train, or speaker = AdaBN),
    schedule, spectrogram and waveform augmentation and recipe notes (e.g. a from-scratch variant)."""
    p = resolved.plan
    neural = resolved.trainer.uses_view
    return {
        "preset": config.preset,
        "normalise": p.view.normalise if neural else "speaker z-norm (classic)" if p.hparams.get("speaker_norm") else "none",
        "validation": config.validation if neural else "n/a (fits on every non-test speaker)",
        "refit": bool(p.refit and resolved.trainer.refits), "final_model": config.final_model,
        "precise_bn": p.train.precise_bn if neural else False,
        "bn_statistics": p.train.bn_statistics if neural else "n/a", "optimizer": p.train.optimizer if neural else "n/a",
        "schedule": p.train.schedule if neural else "n/a", "label_smoothing": p.train.label_smoothing if neural else 0.0,
        "spec_augment": p.spec_augment.to_dict() if p.spec_augment else None,
        "waveform_augment": variant_names(resolved.augment), "notes": list(p.notes),
    }


def variant_names(augment: str) -> str:
    """The stored waveform variants training reads, e.g. ``orig, speed=0.9, speed=1.1`` (``orig`` alone: none)."""
    return ", ".join(variant_list(parse_augment(augment)))


def _save_model(model_dir: Path, outcome: FoldOutcome | None, config: ExperimentConfig, resolved: Resolved,
                classes: list[str], *, selected_by: str) -> None:
    """The model folder: the served model (the best fold's, or the final model on every speaker)."""
    model_dir.mkdir(parents=True, exist_ok=True)
    if outcome is None:
        return
    p = resolved.plan
    spec = resolved.features
    meta: dict[str, Any] = {
        "model": config.model, "trainer": p.entry.trainer, "classes": classes, "n_classes": len(classes),
        "hparams": p.hparams, "view": _saved_view(p.view, outcome).to_dict(), "feature_spec": spec.to_dict() if spec else None,
        "selected_by": selected_by, "fold": outcome.fold, "stage2_hparams": p.stage2_hparams,
    }
    if isinstance(outcome.model, torch.nn.Module):
        meta["in_channels"] = p.view.channels or (spec.channels if spec is not None else 3)
        meta["bn_statistics"] = p.train.bn_statistics  # the predictor scores as the folds were scored
        if outcome.stage2 is not None:
            meta["embed_dim"] = outcome.extra.get("embed_dim")
    save_model_folder(model_dir, write_ready(meta), model=outcome.model, stage2=outcome.stage2, stats=outcome.stats)


def _saved_view(view: Any, outcome: FoldOutcome) -> Any:
    """The view the saved fold used (its corpus-length ``frames`` resolved)."""
    frames = outcome.extra.get("view_frames")
    return view.replace(frames=int(frames), frames_quantile=0.0) if frames else view


def write_ready(obj: Any) -> Any:
    """``obj`` as plain JSON types (tuples to lists, numpy scalars to Python)."""
    return json.loads(json.dumps(obj, default=json_default))
