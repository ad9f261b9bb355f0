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
import inspect
import io
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ser_pipeline.config import Spec, require
from ser_pipeline.data import FeatureTable, _pack, class_weights, index_batches
from ser_pipeline.errors import ConfigError, TrainingError
from ser_pipeline.metrics import unweighted_average_recall
from ser_pipeline.registry import Registry
from ser_pipeline.spec_augment import SpecAugmentSpec, augment_batch, soft_cross_entropy
from ser_pipeline.views import ViewBatch, ViewSpec, apply_view, flatten_segments, mean_segment_posteriors

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig(Spec):
    """Optimisation settings for one network (a model recipe overrides the defaults).

    ``patience``: epochs without a validation-UA gain before stopping (None: run all epochs).
    ``device``: ``auto`` | ``cpu`` | ``cuda`` (or ``cuda:N``).
    """

    CODE_VERSION = "1"

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "adam"
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "none"
    grad_clip: float = 0.0
    patience: int | None = 8
    class_weighted: bool = True
    seed: int = 0
    device: str = "auto"
    bf16: bool = True
    eval_batch_size: int = 64

    def validate(self) -> None:
        require(self.epochs >= 0, "epochs", self.epochs, "must be >= 0")
        require(self.batch_size >= 1, "batch_size", self.batch_size, "must be >= 1")
        require(self.eval_batch_size >= 1, "eval_batch_size", self.eval_batch_size, "must be >= 1")
        require(self.lr > 0, "lr", self.lr, "must be positive")
        require(self.optimizer in OPTIMIZERS, "optimizer", self.optimizer, f"valid names: {OPTIMIZERS.names()}")
        require(self.schedule in SCHEDULES, "schedule", self.schedule, f"valid names: {SCHEDULES.names()}")
        require(self.grad_clip >= 0, "grad_clip", self.grad_clip, "must be >= 0")
        require(self.patience is None or self.patience >= 1, "patience", self.patience, "must be >= 1 or None")
        require(self.device == "auto" or self.device == "cpu" or self.device.startswith("cuda"), "device",
                self.device, "must be auto, cpu or cuda[:N]")

    @classmethod
    def from_recipe(cls, recipe: dict[str, Any], **overrides: Any) -> TrainConfig:
        """Fields of a model recipe (unknown recipe keys such as ``speaker_lr`` are ignored)."""
        names = set(cls.__dataclass_fields__)
        data = {k: v for k, v in recipe.items() if k in names}
        data.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(data)


# ----------------------------------------------------------------------------------------------
# Registries

OPTIMIZERS: Registry[Callable[..., torch.optim.Optimizer]] = Registry("optimizer")
OPTIMIZERS.add("adam", lambda p, c: torch.optim.Adam(p, lr=c.lr, weight_decay=c.weight_decay))
OPTIMIZERS.add("sgd", lambda p, c: torch.optim.SGD(p, lr=c.lr, momentum=c.momentum, weight_decay=c.weight_decay))
OPTIMIZERS.add("nadam", lambda p, c: torch.optim.NAdam(p, lr=c.lr, weight_decay=c.weight_decay))

SCHEDULES: Registry[Callable[..., Any]] = Registry("schedule")
SCHEDULES.add("none", lambda opt, c: None)
SCHEDULES.add("cosine", lambda opt, c: torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, c.epochs)))
SCHEDULES.add("step", lambda opt, c: torch.optim.lr_scheduler.StepLR(opt, step_size=max(1, c.epochs // 3), gamma=0.1))
SCHEDULES.add("plateau", lambda opt, c: torch.optim.lr_scheduler.ReduceLROnPlateau(opt, mode="max", factor=0.5, patience=2))


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available else CPU; ``cuda`` without CUDA -> TrainingError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise TrainingError(f"device={name!r} requested but CUDA is not available on this machine (use cpu or auto)")
    try:
        return torch.device(name)
    except RuntimeError as exc:
        raise ConfigError(f"device={name!r}: {exc}") from None


def seed_everything(seed: int) -> torch.Generator:
    """Seed torch's global RNG (weight init, dropout) and return a CPU generator for data order."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


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


# ----------------------------------------------------------------------------------------------
# Forward passes


def _accepts_mask(model: nn.Module) -> bool:
    try:
        return "mask" in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False


def forward_batch(model: nn.Module, batch: ViewBatch, view: ViewSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Logits for a view batch: ``(B, K)``, or ``(B, S, K)`` with the segment mask for segment views."""
    if view.segmented:
        xs, mask = flatten_segments(batch)
        B, S = batch.x.shape[:2]
        return model(xs).reshape(B, S, -1), mask.reshape(B, S)
    if batch.mask is not None and _accepts_mask(model):
        return model(batch.x, mask=batch.mask), None
    return model(batch.x), None


def _autocast(device: torch.device, enabled: bool):
    return torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=enabled and device.type == "cuda")


@torch.no_grad()
def predict_proba(model: nn.Module, table: FeatureTable, view: ViewSpec, *, batch_size: int = 64,
                  bf16: bool = True) -> np.ndarray:
    """Utterance posteriors ``(N, K)`` float64 (segment views: mean of valid segment posteriors)."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for idx in index_batches(len(table), batch_size, shuffle=False):
        x, lengths = table.batch(idx)
        vb = apply_view(view, x.to(device), lengths.to(device), train=False)
        with _autocast(device, bf16):
            logits, mask = forward_batch(model, vb, view)
        probs = torch.softmax(logits.float(), dim=-1)
        if mask is not None:
            probs = mean_segment_posteriors(probs, mask)
        out.append(probs.double().cpu())
    return torch.cat(out).numpy()


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


# ----------------------------------------------------------------------------------------------
# Two-stage training: stage-1 embeddings as sequences for stage 2


@torch.no_grad()
def embed_table(model: nn.Module, table: FeatureTable, view: ViewSpec, *, batch_size: int = 64,
                bf16: bool = True) -> list[np.ndarray]:
    """Stage-1 embeddings per item: ``(S_i, D)`` float32 (valid segments only; ``S_i = 1`` for
    non-segment views). ``model`` must expose ``embed(x) -> (N, D)``."""
    require(hasattr(model, "embed"), "model", type(model).__name__, "needs embed(x) for two-stage training")
    model.eval()
    device = next(model.parameters()).device
    out: list[np.ndarray] = []
    for idx in index_batches(len(table), batch_size, shuffle=False):
        x, lengths = table.batch(idx)
        vb = apply_view(view, x.to(device), lengths.to(device), train=False)
        if view.segmented:
            xs, mask = flatten_segments(vb)
            B, S = vb.x.shape[:2]
        else:
            xs, mask, B, S = vb.x, torch.ones(vb.x.shape[0], dtype=torch.bool, device=device), vb.x.shape[0], 1
        with _autocast(device, bf16):
            z = model.embed(xs)
        z = z.float().reshape(B, S, -1).cpu()
        m = mask.reshape(B, S).cpu()
        out.extend(z[i][m[i]].numpy().astype(np.float32) for i in range(B))
    return out


def sequence_table(table: FeatureTable, embeddings: Sequence[np.ndarray]) -> FeatureTable:
    """A table of stage-2 inputs: item ``i`` is ``embeddings[i].T[None]``, i.e. ``(1, D, S_i)``,
    read by the ``sequence`` view as ``(B, S, D)``. Labels and speakers are kept."""
    require(len(embeddings) == len(table), "embeddings", len(embeddings), f"need one per item ({len(table)})")
    arrays = [np.ascontiguousarray(e.T[None]) for e in embeddings]
    return _pack(arrays, table.labels.cpu(), table.speakers.cpu(), table.utterance_ids, table.variants,
                 table.speaker_names, device=table.device)


# ----------------------------------------------------------------------------------------------
# Speaker pre-training: stage 1 on training speakers, freeze the backbone, train the rest


class SpeakerClassifier(nn.Module):
    """Stage-1 wrapper: ``(B, C, H, W) -> (B, n_speakers)`` through the backbone's speaker path.

    Uses ``model.speaker_logits`` after ``model.speaker_head(n)`` when the model defines them,
    else a new linear layer on ``model.embed``.
    """

    def __init__(self, model: nn.Module, n_speakers: int) -> None:
        super().__init__()
        self.model = model
        if hasattr(model, "speaker_head"):
            self.head = model.speaker_head(n_speakers)
        else:
            require(hasattr(model, "embed"), "model", type(model).__name__, "needs embed(x) for speaker pre-training")
            dim = getattr(model, "embed_dim", None)
            require(dim is not None, "model", type(model).__name__, "needs an embed_dim attribute")
            self.head = nn.Linear(int(dim), n_speakers)
        self.head.to(next(model.parameters()).device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.model, "speaker_logits"):
            return self.model.speaker_logits(x)
        return self.head(self.model.embed(x))


def freeze_backbone(model: nn.Module) -> list[str]:
    """Freeze everything but the emotion path: ``model.freeze_backbone()`` when defined, else all
    parameters except ``model.head``. Returns the names of the trainable parameters left."""
    if hasattr(model, "freeze_backbone"):
        model.freeze_backbone()
    else:
        require(hasattr(model, "head"), "model", type(model).__name__, "needs a head or freeze_backbone()")
        head_ids = {id(p) for p in model.head.parameters()}
        for p in model.parameters():
            p.requires_grad_(id(p) in head_ids)
    return [n for n, p in model.named_parameters() if p.requires_grad]


def speaker_holdout(table: FeatureTable, *, fraction: float = 0.2, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Boolean masks ``(N,)`` (train, val) over a training table for speaker identification:
    per speaker about ``fraction`` of its utterances (all variants of one utterance together)."""
    rng = np.random.default_rng(seed)
    uids = np.array(table.utterance_ids)
    spk = table.speakers.cpu().numpy()
    val_ids: set[str] = set()
    for s in np.unique(spk):
        ids = np.unique(uids[spk == s])
        n = min(max(1, int(round(fraction * len(ids)))), len(ids) - 1) if len(ids) > 1 else 0
        val_ids.update(rng.permutation(ids)[:n].tolist())
    val = torch.tensor([u in val_ids for u in table.utterance_ids])
    return ~val, val


def speaker_labels(table: FeatureTable) -> tuple[torch.Tensor, list[int]]:
    """Speaker indices of ``table`` remapped to ``0..n_speakers-1`` and the original indices."""
    speakers = sorted(set(table.speakers.cpu().tolist()))
    lookup = {s: i for i, s in enumerate(speakers)}
    return torch.tensor([lookup[s] for s in table.speakers.cpu().tolist()], dtype=torch.long), speakers


def pretrain_speakers(
    model: nn.Module,
    train: FeatureTable,
    *,
    view: ViewSpec,
    config: TrainConfig,
    fold: str,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    callbacks: Sequence[EpochCallback] = (),
) -> FitResult:
    """Stage 1 of ``speaker_pretrain``: speaker identification on the training speakers only
    (a per-speaker hold-out of training utterances selects the checkpoint), then the backbone is
    frozen. The emotion validation and test speakers are never seen."""
    labels, speakers = speaker_labels(train)
    require(len(speakers) >= 2, "speakers", len(speakers), "speaker pre-training needs >= 2 training speakers")
    table = train.with_labels(labels)
    tr_mask, va_mask = speaker_holdout(table, seed=config.seed)
    wrapper = SpeakerClassifier(model, len(speakers))
    result = fit(wrapper, table.select(tr_mask), table.select(va_mask), view=view, config=config,
                 n_classes=len(speakers), fold=f"{fold}/speaker", checkpoint_dir=checkpoint_dir,
                 callbacks=callbacks)
    freeze_backbone(model)
    return result


def model_bytes(model: nn.Module) -> bytes:
    """The state dict serialised with ``torch.save`` (for experiment outputs)."""
    buf = io.BytesIO()
    torch.save(_cpu_state(model), buf)
    return buf.getvalue()
