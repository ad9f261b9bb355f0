"""The neural trainer kinds: ``standard``, ``speaker_pretrain`` and ``two_stage``."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from torch import nn

from ser_pipeline.dataset.normalise import pool_table
from ser_pipeline.dataset.spec_augment import SpecAugmentSpec
from ser_pipeline.dataset.tables import FeatureTable, FoldData, concat_tables
from ser_pipeline.dataset.views import ViewSpec, frames_for
from ser_pipeline.errors import TrainingError
from ser_pipeline.inference.forward import (
    EMBEDDINGS,
    POSTERIORS,
    STAGE2_VIEW,
    precise_bn,
    predict_proba,
    sequence_table,
)
from ser_pipeline.models import LayerWeighted
from ser_pipeline.training.config import TrainConfig, refit_epoch_count, seed_everything
from ser_pipeline.training.loop import FitResult, fit, state_digest
from ser_pipeline.training.speaker import pretrain_speakers
from ser_pipeline.training.trainers.base import TRAINERS, FoldOutcome, FoldRun


def _build(run: FoldRun, data: FoldData) -> nn.Module:
    seed_everything(run.seed)
    p = run.plan
    in_channels = p.view.channels or data.train.shape[0]
    model = p.entry.build(n_classes=len(run.classes), in_channels=in_channels, **p.hparams)
    return model.to(run.device)


def _fit(run: FoldRun, model: nn.Module, train: FeatureTable, val: FeatureTable | None, *, view: ViewSpec,
         config: TrainConfig, tag: str = "", spec_aug: SpecAugmentSpec | None = None,
         stop_epoch: int | None = None) -> FitResult:
    return fit(model, train, val, view=view, config=config.replace(seed=run.seed), n_classes=len(run.classes),
               spec_augment=spec_aug, fold=run.name + tag, checkpoint_dir=run.workdir / (tag.strip("/") or "main"),
               callbacks=run.callbacks if tag in ("", "/stage1", "/refit", "/final") else (), stop_epoch=stop_epoch)


def fold_view(view: ViewSpec, data: FoldData) -> ViewSpec:
    """The fold's view: ``frames`` from the training lengths when ``frames_quantile`` is set."""
    return frames_for(view, data.train.lengths)


def pooled(view: ViewSpec, data: FoldData) -> tuple[ViewSpec, FoldData]:
    """Time pooling done once on the preloaded tables instead of every batch (a deterministic
    resize cached): the tables pooled by ``view.time_pool`` and the view without it. The model
    folder keeps the plan's view (with ``time_pool``), which gives the same input at prediction."""
    k = view.time_pool
    if k <= 1:
        return view, data
    val = pool_table(data.val, k) if data.val is not None else None
    data = FoldData(data.name, pool_table(data.train, k), val, pool_table(data.test, k),
                    data.classes, data.speaker_names, data.stats)
    return view.replace(time_pool=1), data


def prepare(run: FoldRun) -> tuple[ViewSpec, FoldData]:
    """The fold's tables and the view that reads them: corpus-length ``frames`` from the training
    lengths, then time pooling applied once to the tables (:func:`pooled`)."""
    data = run.fold_data()
    return pooled(fold_view(run.plan.view, data), data)


def _view_extra(view: ViewSpec, plan: Any) -> dict[str, Any]:
    return {"view_frames": view.frames, "normalise": view.normalise, "precise_bn": plan.train.precise_bn,
            "bn_statistics": plan.train.bn_statistics,
            "time_pool": plan.view.time_pool}


def _outcome(model: nn.Module, data: FoldData, result: FitResult, plan: Any, *, view: ViewSpec,
             **extra: Any) -> FoldOutcome:
    if plan.train.precise_bn:
        precise_bn(model, data.train, view, batch_size=plan.train.eval_batch_size, bf16=plan.train.bf16)
    probs = POSTERIORS[plan.train.bn_statistics](model, data.test, view, batch_size=plan.train.eval_batch_size,
                                                 bf16=plan.train.bf16)
    extra["extra"] = {**_view_extra(view, plan), **extra.get("extra", {})}
    if isinstance(model, LayerWeighted):  # ssl_probe: the learned weight of every stored layer
        weights = model.layer_weights().detach().cpu().tolist()
        extra["extra"].update({f"layer_weight_{i}": float(w) for i, w in enumerate(weights)})
    return FoldOutcome(probs, result.history, result.best_epoch, result.best_val_ua, model=model, timing=result.timing,
                       stats=data.stats, **extra)


def refit_on_all(run: FoldRun, chosen_epoch: int, view: ViewSpec) -> tuple[nn.Module, FoldData, FitResult]:
    """A fresh model (same seed) trained on every non-test utterance (train + validation) for
    ``chosen_epoch`` epochs (picked on validation, or the whole budget: :func:`refit_epoch_count`),
    on the same schedule; no validation is used."""
    p = run.plan
    view, full = pooled(view.replace(time_pool=p.view.time_pool), run.fold_data(with_val=True))
    model = _build(run, full)
    result = _fit(run, model, full.train, None, view=view, config=p.train, spec_aug=p.spec_augment, tag="/refit",
                  stop_epoch=chosen_epoch)
    return model, full, result


def refit_record(config: TrainConfig, epochs: int, n_fit: int, refit: FitResult, *, stage: str | None = None
                 ) -> dict[str, Any]:
    """What the experiment record says of a refit: that it ran, for how many epochs and how they
    were chosen (``config.refit_epochs``), on how many items, its last training loss, and which
    stage it trained (two-stage and speaker pre-training models refit stage 2 only)."""
    record: dict[str, Any] = {"refit": True, "refit_epochs": epochs, "refit_epoch_choice": config.refit_epochs,
                              "n_fit": n_fit,
                              "refit_train_loss": refit.history[-1]["train_loss"] if refit.history else None}
    if stage is not None:
        record["refit_stage"] = stage
    return record


class NeuralTrainer:
    """What every neural trainer kind can do (the :class:`~ser_pipeline.training.trainers.base.Trainer`
    flags): it reads its feature set, takes the entry's view and the requested device, refits on
    the training and validation speakers, and trains a final model on every speaker unless it says
    otherwise (:class:`NoFinalModel`)."""

    name: ClassVar[str]
    reads_features: ClassVar[bool] = True
    uses_view: ClassVar[bool] = True
    uses_device: ClassVar[bool] = True
    refits: ClassVar[bool] = True
    fits_final: ClassVar[bool] = True


@dataclass(frozen=True)
class StandardTrainer(NeuralTrainer):
    """One network end to end on the view."""

    name: ClassVar[str] = "standard"

    def run(self, fold: FoldRun) -> FoldOutcome:
        p = fold.plan
        view, data = prepare(fold)
        model = _build(fold, data)
        result = _fit(fold, model, data.train, data.val, view=view, config=p.train, spec_aug=p.spec_augment)
        if not p.refit or result.best_epoch < 1:
            return _outcome(model, data, result, p, view=view, extra={"refit": False, "n_fit": len(data.train)})
        epochs = refit_epoch_count(p.train, result.best_epoch, len(result.history))
        del model, data  # the refit loads every non-test speaker again: the fold's tables go first
        model, full, refit = refit_on_all(fold, epochs, view)
        out = _outcome(model, full, result, p, view=view, extra=refit_record(p.train, epochs, len(full.train), refit))
        out.timing = {**result.timing, "refit_epoch_seconds": refit.timing.get("epoch_seconds", 0.0)}
        return out

    def fit_final(self, run: FoldRun, epochs: int) -> FoldOutcome:
        """One network on every speaker for ``epochs`` epochs (the folds' choice), on the same
        schedule and augmentation; corpus-length ``frames`` from all training lengths."""
        p = run.plan
        data = run.final_data()
        view, data = pooled(fold_view(p.view, data), data)
        model = _build(run, data)
        result = _fit(run, model, data.train, None, view=view, config=p.train, spec_aug=p.spec_augment, tag="/final",
                      stop_epoch=epochs)
        if p.train.precise_bn:
            precise_bn(model, data.train, view, batch_size=p.train.eval_batch_size, bf16=p.train.bf16)
        return FoldOutcome(np.zeros((0, len(run.classes))), result.history, epochs, float("nan"), model=model,
                           stats=data.stats, timing=result.timing, fold=run.name,
                           extra={**_view_extra(view, p), "n_fit": len(data.train)})


class NoFinalModel(NeuralTrainer):
    """For trainer kinds that cannot train one model on every speaker (``final_model=best_fold``
    only; :func:`ser_pipeline.experiments.config.resolve` refuses the other value up front)."""

    fits_final: ClassVar[bool] = False

    def fit_final(self, run: FoldRun, epochs: int) -> FoldOutcome:
        raise TrainingError(f"trainer {self.name!r}: no final model on every speaker (final_model=best_fold)")


@dataclass(frozen=True)
class SpeakerPretrainTrainer(NoFinalModel):
    """Stage 1: speaker identification on the training speakers; freeze the backbone (or keep it
    trainable, ``plan.speaker_freeze=False``); stage 2: the emotion layers on the same training data.

    With ``plan.refit`` (the default), after the stage-2 epoch count is chosen on validation, stage 2
    starts again from the same point (the speaker-trained backbone, the same untrained emotion
    layers, the same seed and schedule) on every non-test speaker (train + validation) for that many
    epochs, and that model is tested. Stage 1 is not repeated: it never sees the validation speakers.
    """

    name: ClassVar[str] = "speaker_pretrain"

    def run(self, fold: FoldRun) -> FoldOutcome:
        p = fold.plan
        assert p.speaker_train is not None
        view, data = prepare(fold)
        model = _build(fold, data)
        stage1 = pretrain_speakers(model, data.train, view=view, config=p.speaker_train.replace(seed=fold.seed),
                                   fold=fold.name, checkpoint_dir=fold.workdir / "speaker", freeze=p.speaker_freeze)
        start = copy.deepcopy(model.state_dict())  # speaker-trained backbone, untrained emotion layers
        result = _fit(fold, model, data.train, data.val, view=view, config=p.train, spec_aug=p.spec_augment)
        extra: dict[str, Any] = {"speaker_val_acc": stage1.best_val_ua, "speaker_freeze": p.speaker_freeze,
                                 "refit": False, "n_fit": len(data.train)}
        if p.refit and result.best_epoch >= 1:
            epochs = refit_epoch_count(p.train, result.best_epoch, len(result.history))
            del data  # the refit loads every non-test speaker again: the fold's tables go first
            _, data = pooled(view.replace(time_pool=p.view.time_pool), fold.fold_data(with_val=True))
            model.load_state_dict(start)
            refit = _fit(fold, model, data.train, None, view=view, config=p.train, spec_aug=p.spec_augment,
                         tag="/refit", stop_epoch=epochs)
            extra.update(refit_record(p.train, epochs, len(data.train), refit, stage="stage2"))
        return _outcome(model, data, result, p, view=view, stage1_history=stage1.history, extra=extra)


@dataclass(frozen=True)
class TwoStageTrainer(NoFinalModel):
    """Stage 1 on segments; its embeddings for every utterance of the fold go to the store as
    derived items keyed by the stage-1 checkpoint digest; stage 2 trains on ``(B, S, D)``.

    With ``plan.refit`` (the default), after the stage-2 epoch count is chosen on validation, a fresh
    stage-2 head (same seed, same schedule) trains on the embeddings of every non-test speaker for
    that many epochs (:func:`refit_epoch_count`) and is tested: the training table plus the
    validation table (the validation speakers' original recordings: their augmented variants are
    never embedded). Stage 1 is kept as validated; it never saw the validation speakers, so their
    embeddings look to stage 2 as the unseen test speaker's do.
    """

    name: ClassVar[str] = "two_stage"

    def run(self, fold: FoldRun) -> FoldOutcome:
        p = fold.plan
        assert p.stage2_train is not None and p.entry.stage2 is not None
        view, data = prepare(fold)
        model = _build(fold, data)
        stage1 = _fit(fold, model, data.train, data.val, view=view, config=p.train, spec_aug=p.spec_augment,
                      tag="/stage1")
        if p.train.precise_bn:
            precise_bn(model, data.train, view, batch_size=p.train.eval_batch_size, bf16=p.train.bf16)
        digest = state_digest(model)
        seq = stage2_tables(fold, model, view, data.tables(), digest)
        dim = int(seq["train"].shape[1])
        head, result = _fit_stage2(fold, dim, seq["train"], seq["val"])
        extra: dict[str, Any] = {"stage1_checkpoint_digest": digest, "embed_dim": dim, "refit": False,
                                 "n_fit": len(seq["train"])}
        if p.refit and result.best_epoch >= 1:
            epochs = refit_epoch_count(p.stage2_train, result.best_epoch, len(result.history))
            everyone = concat_tables(seq["train"], seq["val"])
            head, refit = _fit_stage2(fold, dim, everyone, None, tag="/refit", stop_epoch=epochs)
            extra.update(refit_record(p.stage2_train, epochs, len(everyone), refit, stage="stage2"))
        probs = predict_proba(head, seq["test"], STAGE2_VIEW, batch_size=p.stage2_train.eval_batch_size,
                              bf16=p.train.bf16)
        return FoldOutcome(probs, result.history, result.best_epoch, result.best_val_ua, model=model, stage2=head,
                           stage1_history=stage1.history, timing=result.timing,
                           extra={**extra, **_view_extra(view, p)}, stats=data.stats)


def stage2_tables(fold: FoldRun, model: nn.Module, view: ViewSpec, tables: dict[str, FeatureTable],
                  digest: str) -> dict[str, FeatureTable]:
    """Stage-2 inputs of ``tables``: each item's stage-1 embeddings ``(S, D)`` as a sequence table
    (:func:`sequence_table`), through the store's derived set of checkpoint ``digest`` when there is
    a store (items already there are read, not written again). Under AdaBN (``bn_statistics=speaker``)
    every speaker is embedded under its own BatchNorm statistics."""
    p = fold.plan
    embed = EMBEDDINGS[p.train.bn_statistics]
    embeddings = {name: embed(model, t, view, batch_size=p.train.eval_batch_size, bf16=p.train.bf16)
                  for name, t in tables.items()}
    if fold.store is not None:
        embeddings = _through_store(fold, embedding_key(digest, p.train.bn_statistics), tables, embeddings)
    return {name: sequence_table(t, embeddings[name]) for name, t in tables.items()}


def _fit_stage2(fold: FoldRun, dim: int, train: FeatureTable, val: FeatureTable | None, *, tag: str = "",
                stop_epoch: int | None = None) -> tuple[nn.Module, FitResult]:
    """A fresh stage-2 head (seeded ``fold.seed + 1``) on ``dim``-d sequences, trained on ``train``
    (validated on ``val``, or for ``stop_epoch`` epochs without validation in a refit)."""
    p = fold.plan
    assert p.stage2_train is not None and p.entry.stage2 is not None
    seed_everything(fold.seed + 1)
    head = p.entry.stage2(len(fold.classes), dim, **p.stage2_hparams).to(fold.device)
    result = _fit(fold, head, train, val, view=STAGE2_VIEW, config=p.stage2_train, tag=tag, stop_epoch=stop_epoch)
    return head, result


def embedding_key(checkpoint_digest: str, bn_statistics: str) -> str:
    """The derived set's key of stage-1 embeddings: the checkpoint digest, plus where BatchNorm
    statistics came from when not the checkpoint's own (the same weights embed differently under
    AdaBN, so those embeddings are a set of their own)."""
    return checkpoint_digest if bn_statistics == "train" else f"{checkpoint_digest}-bn-{bn_statistics}"


def _through_store(fold: FoldRun, digest: str, tables: dict[str, FeatureTable],
                   embeddings: dict[str, list[Any]]) -> dict[str, list[Any]]:
    """Write the embeddings as derived items (once per checkpoint digest) and read them back."""
    derived = fold.store.derived(fold.feature_digest, digest)
    items = {}
    for name, t in tables.items():
        for uid, var, emb in zip(t.utterance_ids, t.variants, embeddings[name], strict=True):
            items[(uid, var)] = emb
    todo = {k: v for k, v in items.items() if not derived.has(*k)}
    if todo:
        derived.write(todo)
    return {name: [derived.read(uid, var) for uid, var in zip(t.utterance_ids, t.variants, strict=True)]
            for name, t in tables.items()}


for _trainer in (StandardTrainer(), SpeakerPretrainTrainer(), TwoStageTrainer()):
    TRAINERS.add(_trainer.name, _trainer)
