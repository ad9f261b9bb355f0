"""The trainer: one fold, one network, preloaded tables (no Prefect and no MLflow imports).

- Device: ``auto`` = CUDA when available, else CPU; ``cuda`` without CUDA is a TrainingError.
  bf16 autocast on CUDA.
- Seeded: the model is built after :func:`seed_everything`; shuffling, crops and spectrogram
  augmentation draw from one ``torch.Generator`` seeded from ``TrainConfig.seed``. On CPU a
  given seed reproduces the same weights and metrics.
- Optimisers (registry ``OPTIMIZERS``): ``adam``, ``sgd`` (momentum), ``nadam``. Schedules
  (``SCHEDULES``): ``none``, ``cosine``, ``step``, ``plateau``. Optional gradient clipping.
- Loss: class-weighted soft-target cross-entropy (weights from the training split's class
  frequencies), which is the mixed-label loss for Mixup-style augmentation.
- Early stopping and checkpoint selection on validation UA only (the test table never enters).
- Checkpoints: ``<dir>/last.pt`` after every epoch (atomic), ``<dir>/best.pt``; ``fit`` resumes
  from ``last.pt`` when its config digest matches. A non-finite loss raises TrainingError naming
  fold, epoch and batch, and leaves the last good checkpoint in place.
- Segment views ``(B, S, C, H, W)``: each segment carries its utterance's label in training;
  prediction averages the segment posteriors per utterance.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ser_pipeline.config import require
from ser_pipeline.dataset.spec_augment import SpecAugmentSpec, augment_batch, soft_cross_entropy
from ser_pipeline.dataset.tables import FeatureTable, class_weights, index_batches
from ser_pipeline.dataset.views import ViewBatch, ViewSpec, apply_view
from ser_pipeline.errors import TrainingError
from ser_pipeline.inference.forward import _autocast, forward_batch, predict_proba
from ser_pipeline.metrics import unweighted_average_recall
from ser_pipeline.training.config import OPTIMIZERS, SCHEDULES, TrainConfig

log = logging.getLogger(__name__)


class EpochCallback(Protocol):
    def __call__(self, fold: str, epoch: int, metrics: dict[str, float]) -> None: ...


@dataclass
class FitResult:
    """What :func:`fit` returns: per-epoch history and the selected checkpoint."""

    history: list[dict[str, float]]
    best_epoch: int
    best_val_ua: float
    stopped_early: bool
    checkpoint: str | None = None
    timing: dict[str, float] = field(default_factory=dict)



def evaluate_table(model: nn.Module, table: FeatureTable, view: ViewSpec, *, batch_size: int = 64,
                   bf16: bool = True) -> dict[str, float]:
    """Utterance-level NLL and UA on a (validation) table."""
    probs = predict_proba(model, table, view, batch_size=batch_size, bf16=bf16)
    labels = table.labels.cpu().numpy()
    nll = float(-np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, None)).mean())
    ua = unweighted_average_recall(labels, probs.argmax(axis=1), probs.shape[1])
    return {"val_loss": nll, "val_ua": ua}


# ----------------------------------------------------------------------------------------------
# Checkpoints


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def state_digest(model: nn.Module) -> str:
    """sha256 (16 hex) of a model's state dict bytes: the checkpoint digest of derived items."""
    h = hashlib.sha256()
    for key, value in sorted(model.state_dict().items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def _cpu_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------------------------
# The training loop


def _train_epoch(model, opt, table, view, config, weights, spec_aug, gen, device, *, fold, epoch) -> dict[str, float]:
    model.train()
    n_classes = int(weights.shape[0])
    total, seen, data_s, step_s = 0.0, 0, 0.0, 0.0
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for b, idx in enumerate(index_batches(len(table), config.batch_size, shuffle=True, generator=gen)):
        t0 = time.perf_counter()
        x, lengths = table.batch(idx)
        vb = apply_view(view, x.to(device, non_blocking=True), lengths.to(device), train=True, generator=gen)
        targets = F.one_hot(table.labels[idx.to(table.device)].to(device), n_classes).float()
        if spec_aug is not None:
            xs, targets, mask = augment_batch(vb.x, targets, spec_aug, mask=vb.mask, generator=gen)
            vb = ViewBatch(xs, mask)
        sync()
        t1 = time.perf_counter()
        with _autocast(device, config.bf16):
            logits, seg_mask = forward_batch(model, vb, view)
        logits = logits.float()
        if seg_mask is not None:
            S = logits.shape[1]
            logits = logits.reshape(-1, logits.shape[-1])[seg_mask.reshape(-1)]
            targets = targets.repeat_interleave(S, dim=0)[seg_mask.reshape(-1)]
        loss = soft_cross_entropy(logits, targets, weights)
        if not torch.isfinite(loss):
            raise TrainingError(f"fold {fold}: non-finite loss ({loss.item()}) at epoch {epoch}, batch {b}")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if config.grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sync()
        t2 = time.perf_counter()
        data_s += t1 - t0
        step_s += t2 - t0
        total += float(loss.item()) * len(idx)
        seen += len(idx)
    return {"train_loss": total / max(seen, 1), "data_s": data_s, "step_s": step_s, "items": seen}


def fit(
    model: nn.Module,
    train: FeatureTable,
    val: FeatureTable,
    *,
    view: ViewSpec,
    config: TrainConfig,
    n_classes: int,
    spec_augment: SpecAugmentSpec | None = None,
    fold: str = "fold",
    checkpoint_dir: str | os.PathLike[str] | None = None,
    callbacks: Sequence[EpochCallback] = (),
    resume: bool = True,
) -> FitResult:
    """Train ``model`` on ``train``, select the epoch with the best validation UA on ``val``.

    ``train``/``val`` must already live on the model's device. Returns the history
    (``epoch, train_loss, val_loss, val_ua, lr, seconds, utt_per_s, data_share``) and leaves the
    best weights loaded in ``model``.
    """
    device = next(model.parameters()).device
    gen = torch.Generator().manual_seed(config.seed)
    weights = (class_weights(train.labels, n_classes) if config.class_weighted else torch.ones(n_classes)).to(device)
    if spec_augment is not None and spec_augment.random_cut and view.crop != "random":
        view = view.replace(crop="random")
    params = [p for p in model.parameters() if p.requires_grad]
    require(len(params) > 0, "model", type(model).__name__, "has no trainable parameters")
    opt = OPTIMIZERS.get(config.optimizer)(params, config)
    sched = SCHEDULES.get(config.schedule)(opt, config)
    ckdir = Path(checkpoint_dir) if checkpoint_dir is not None else None
    last_path = ckdir / "last.pt" if ckdir else None
    digest = config.digest() + view.digest() + (spec_augment.digest() if spec_augment else "")

    history: list[dict[str, float]] = []
    best_state = _cpu_state(model)
    best_ua, best_epoch, start, bad_epochs, stopped = -math.inf, 0, 1, 0, False
    if resume and last_path is not None and last_path.exists():
        ck = torch.load(last_path, map_location="cpu", weights_only=False)
        if ck.get("digest") == digest and ck.get("fold") == fold:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            if sched is not None and ck.get("scheduler") is not None:
                sched.load_state_dict(ck["scheduler"])
            gen.set_state(ck["generator"])
            torch.set_rng_state(ck["torch_rng"])
            history, best_state = ck["history"], ck["best_state"]
            best_ua, best_epoch, bad_epochs, stopped = ck["best_ua"], ck["best_epoch"], ck["bad_epochs"], ck["stopped"]
            start = ck["epoch"] + 1
            log.info("fold %s: resumed from %s at epoch %d", fold, last_path, start)
        else:
            log.warning("fold %s: ignoring checkpoint %s (different config or fold)", fold, last_path)

    for epoch in range(start, config.epochs + 1):
        if stopped:
            break
        t0 = time.perf_counter()
        try:
            stats = _train_epoch(model, opt, train, view, config, weights, spec_augment, gen, device, fold=fold, epoch=epoch)
        except TrainingError as exc:
            kept = f"; last good checkpoint kept: {last_path}" if last_path and last_path.exists() else ""
            raise TrainingError(f"{exc}{kept}") from None
        val_metrics = evaluate_table(model, val, view, batch_size=config.eval_batch_size, bf16=config.bf16)
        seconds = time.perf_counter() - t0
        row = {
            "epoch": epoch,
            "train_loss": stats["train_loss"],
            **val_metrics,
            "lr": float(opt.param_groups[0]["lr"]),
            "seconds": seconds,
            "utt_per_s": stats["items"] / max(stats["step_s"], 1e-9),
            "data_share": stats["data_s"] / max(stats["step_s"], 1e-9),
        }
        history.append(row)
        if val_metrics["val_ua"] > best_ua:
            best_ua, best_epoch, bad_epochs = val_metrics["val_ua"], epoch, 0
            best_state = _cpu_state(model)
        else:
            bad_epochs += 1
        if sched is not None:
            sched.step(val_metrics["val_ua"]) if config.schedule == "plateau" else sched.step()
        if config.patience is not None and bad_epochs >= config.patience:
            stopped = True
        for cb in callbacks:
            cb(fold, epoch, dict(row))
        if last_path is not None:
            _atomic_save({
                "digest": digest, "fold": fold, "epoch": epoch, "model": model.state_dict(),
                "optimizer": opt.state_dict(), "scheduler": sched.state_dict() if sched is not None else None,
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                "best_state": best_state, "best_ua": best_ua, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                "stopped": stopped,
            }, last_path)
    model.load_state_dict(best_state)
    best_path = None
    if ckdir is not None:
        best_path = ckdir / "best.pt"
        _atomic_save({"model": best_state, "epoch": best_epoch, "val_ua": best_ua}, best_path)
    timing = _timing(history)
    return FitResult(history, best_epoch, float(best_ua) if history else float("nan"), stopped,
                     str(best_path) if best_path else None, timing)


def _timing(history: list[dict[str, float]]) -> dict[str, float]:
    if not history:
        return {}
    return {
        "utt_per_s": float(np.mean([h["utt_per_s"] for h in history])),
        "data_share": float(np.mean([h["data_share"] for h in history])),
        "epoch_seconds": float(np.mean([h["seconds"] for h in history])),
    }

