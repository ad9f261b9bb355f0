"""``ser bench train MODEL CORPUS``: the project's training step against a plain PyTorch loop, in one run.

Both sides train the same network (built from the same seed), with the same batch size and the same
optimiser, on the same training utterances of the protocol's first fold, for the same number of
epochs, on the same device:

- project: :func:`ser_pipeline.training.loop.fit` exactly as ``ser train`` runs it for the model
  entry's resolved recipe (``--preset cpu`` by default): the fold's preloaded, normalised tables,
  time pooling and corpus-length crops (:func:`ser_pipeline.training.trainers.neural.prepare`),
  the view built per batch with random crops, SpecAugment, label smoothing, class weights, the
  schedule, gradient clipping; without the per-epoch validation (``val=None``, as a refit runs).
  Figures: the loop's own timers (``items, data_s, step_s`` per epoch) and the wall time of ``fit``.
- plain: the evaluation view of the whole training table built once before the timed passes (one
  preloaded ``(N, ...)`` tensor, not timed), then ``for idx in randperm(N).split(B): x[idx] ->
  model -> cross_entropy -> backward -> step`` (gradient clipping when the recipe clips); batch
  preparation is only the index.

Two-stage models are measured on their first stage (the network that reads the view); those whose
recipe never trains stage 1 (``train.epochs`` 0: ``alexnet_sru_sru_only``, ``dcnn_blstm_att_no_pretrain``)
on their second, the only steps ``ser train`` runs for them: the stage-2 head on the sequence view of
the training utterances' stage-1 embeddings (computed once, untimed, as the trainer computes them:
the seeded network, precise-BN over the training table). Speaker pre-training models are measured on
the whole network. ``--steps N`` keeps ``N * batch_size`` training
utterances (a seeded subset), so that an epoch is ``N`` steps. Passes alternate (plain, project,
plain, project, ...) after one untimed warm-up step of each; every figure is the median over
passes. ``ratio`` = project utterances per wall second / plain ones (1.0 = as fast as the plain
loop; the target is at least 0.9). Both loops run under the malloc options ``fit`` sets (freed heap
memory kept from step to step: :mod:`ser_pipeline.heap`); ``heap_kept`` says whether
they were taken.
"""

from __future__ import annotations

import statistics
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from feature_store.store import FeatureStore
from ser_pipeline.dataset.spec_augment import SpecAugmentSpec
from ser_pipeline.dataset.tables import FeatureTable, FoldData, class_weights, index_batches
from ser_pipeline.dataset.views import ViewSpec, apply_view
from ser_pipeline.errors import ConfigError, StoreError
from ser_pipeline.experiments.config import ExperimentConfig, Resolved, resolve
from ser_pipeline.experiments.corpora import experiment_manifest
from ser_pipeline.experiments.runner import fold_validation
from ser_pipeline.features import feature_label
from ser_pipeline.heap import flush_denormals, keep_freed_memory
from ser_pipeline.inference.forward import STAGE2_VIEW, accepts_mask, precise_bn
from ser_pipeline.models import ReadsSegmentSequences
from ser_pipeline.splits import make_folds
from ser_pipeline.training.config import OPTIMIZERS, TrainConfig, resolve_device, seed_everything
from ser_pipeline.training.loop import fit
from ser_pipeline.training.trainers.base import FoldRun
from ser_pipeline.training.trainers.neural import prepare, stage2_tables
from ser_pipeline.workspace import Workspace


@dataclass
class BenchSetup:
    """What both loops train on: the fold's prepared training table and view, and the recipe."""

    model: str
    corpus: str
    preset: str
    resolved: Resolved
    run: FoldRun
    view: ViewSpec
    train: FeatureTable
    n_classes: int
    left_out: int
    stage: str = "network"  # what both loops train: "network" (stage 1 of a two-stage model) or "stage2"

    @property
    def config(self) -> TrainConfig:
        return stage_recipe(self.resolved, self.stage).replace(seed=self.run.seed)

    @property
    def spec_augment(self) -> SpecAugmentSpec | None:
        """The recipe's SpecAugment; none for a stage-2 head (its trainer passes none)."""
        return None if self.stage == "stage2" else self.resolved.plan.spec_augment

    def build(self) -> nn.Module:
        """A fresh network (or stage-2 head), the same weights every call (the trainer's seed)."""
        seed_everything(self.run.seed)
        p = self.resolved.plan
        if self.stage == "stage2":
            assert p.entry.stage2 is not None
            return p.entry.stage2(self.n_classes, int(self.train.shape[1]), **p.stage2_hparams).to(self.run.device)
        model = p.entry.build(n_classes=self.n_classes, in_channels=p.view.channels or self.train.shape[0], **p.hparams)
        return model.to(self.run.device)


def _features_present(resolved: Resolved, manifest: Any, workspace: Workspace, corpus: str) -> tuple[Any, Any]:
    """``(feature set, manifest rows that have features)``; StoreError when the set or every item is missing."""
    spec = resolved.features
    assert spec is not None
    how = f"run `ser featurize {corpus} --preset {spec.preset}`"
    try:
        fset = FeatureStore(workspace.features).open_set(spec)
    except StoreError:
        raise StoreError(f"features {feature_label(spec)} of corpus {corpus!r} are not in the store "
                         f"{workspace.features}; {how}") from None
    keys = fset.key_set()
    has = manifest["sha256"].map(lambda s: (s, "orig") in keys)
    if not has.any():
        raise StoreError(f"features {feature_label(spec)}: no utterance of corpus {corpus!r} is featurized; {how}")
    return fset, manifest[has].reset_index(drop=True)


def stage_recipe(resolved: Resolved, stage: str) -> TrainConfig:
    """The training recipe of what the bench trains: ``stage2``'s or the network's."""
    recipe = resolved.plan.stage2_train if stage == "stage2" else resolved.plan.train
    assert recipe is not None
    return recipe


def prepare_bench(config: ExperimentConfig, workspace: Workspace, *, device: str = "cpu",
                  steps: int | None = None) -> BenchSetup:
    """Resolve ``config`` as ``ser train`` does (``ser bench train`` builds it from its model, corpus,
    ``--preset``, ``--seed`` and ``--set`` options) and load its first fold.

    Errors (exit 2 on the CLI): ConfigError for an unknown or non-neural model, a preset the model
    lacks; ManifestError for a corpus that is not ingested; StoreError for missing features.
    """
    flush_denormals()  # both loops' float mode, set before torch starts its thread pool (which inherits it)
    model, corpus, preset, seed = config.model, config.corpus, config.preset, config.seed
    resolved = resolve(config)
    if not resolved.trainer.uses_view:
        raise ConfigError(f"model {model!r}: trainer {resolved.trainer.name!r} has no training step to benchmark "
                          f"(bench train takes neural models)")
    stage = "stage2" if resolved.plan.train.epochs < 1 and resolved.plan.stage2_train is not None else "network"
    if resolved.plan.train.epochs < 1 and stage != "stage2":
        raise ConfigError(f"model {model!r}: its recipe never trains the network that reads the view (train.epochs 0); "
                          f"nothing to benchmark")
    manifest = experiment_manifest(corpus, resolved.protocol, config.protocol_options, workspace)
    fset, usable = _features_present(resolved, manifest, workspace, corpus)
    fold = make_folds(resolved.protocol, usable, seed=seed, **config.protocol_options)[0]
    train_ids, val_ids, _ = fold_validation(usable, fold, seed, config.validation)
    classes = sorted(manifest["emotion"].unique())
    run = FoldRun(fold.name, 0, resolved.plan, usable, train_ids, val_ids, tuple(fold.test), classes,
                  resolve_device(device), workspace.root / "bench-unused", [], fset)
    view, data = prepare(run)
    train = _subset(data, steps * stage_recipe(resolved, stage).batch_size, seed) if steps else data.train
    if stage == "stage2":
        train, view = stage2_inputs(run, view, data.train, train), STAGE2_VIEW
    return BenchSetup(model, corpus, preset, resolved, run, view, train, len(classes), len(manifest) - len(usable),
                      stage)


@torch.no_grad()
def stage2_inputs(run: FoldRun, view: ViewSpec, fold_train: FeatureTable, train: FeatureTable) -> FeatureTable:
    """The sequence table ``(1, D, S_i)`` per item of ``train``: stage-1 embeddings as the two-stage
    trainer makes them (:func:`stage2_tables` of the network built with the fold's seed, after
    precise-BN over the fold's training table when the recipe asks for it); the store is not used."""
    p = run.plan
    seed_everything(run.seed)
    network = p.entry.build(n_classes=len(run.classes), in_channels=p.view.channels or train.shape[0],
                            **p.hparams).to(run.device)
    if p.train.precise_bn:
        precise_bn(network, fold_train, view, batch_size=p.train.eval_batch_size, bf16=p.train.bf16)
    return stage2_tables(run, network, view, {"train": train}, digest="")["train"]


def _subset(data: FoldData, n: int, seed: int) -> FeatureTable:
    """A seeded subset of ``n`` training items (all of them when the table is smaller)."""
    table = data.train
    if n >= len(table):
        return table
    keep = torch.zeros(len(table), dtype=torch.bool)
    keep[torch.randperm(len(table), generator=torch.Generator().manual_seed(seed))[:n]] = True
    return table.select(keep)


@dataclass(frozen=True)
class Pass:
    """One timed pass: utterances, wall and CPU seconds (this process), and the loop's own
    batch-preparation / whole-step seconds."""

    items: int
    wall_s: float
    cpu_s: float
    data_s: float
    step_s: float


def project_pass(setup: BenchSetup, epochs: int) -> Pass:
    """``epochs`` epochs of the project's loop (``fit`` without validation) on a fresh network."""
    model = setup.build()
    start, cpu0 = time.perf_counter(), time.process_time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = setup.config if setup.config.epochs >= epochs else setup.config.replace(epochs=epochs)
        result = fit(model, setup.train, None, view=setup.view, config=config, n_classes=setup.n_classes,
                     spec_augment=setup.spec_augment, fold=setup.run.name, checkpoint_dir=None, resume=False,
                     stop_epoch=epochs)
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu0
    h = result.history
    return Pass(sum(int(r["items"]) for r in h), wall, cpu, sum(r["data_s"] for r in h), sum(r["step_s"] for r in h))


@dataclass
class Preloaded:
    """The plain loop's input: the evaluation view of the whole training table, built once."""

    x: torch.Tensor  # (N, C, H, W) or (N, S, C, H, W)
    mask: torch.Tensor | None
    labels: torch.Tensor  # (N,)


@torch.no_grad()
def preload(setup: BenchSetup, chunk: int = 256) -> Preloaded:
    """The deterministic (evaluation) view of every training item, concatenated."""
    view = setup.view.replace(crop="centre") if setup.view.crop == "random" else setup.view  # deterministic
    xs, masks = [], []
    for idx in index_batches(len(setup.train), chunk, shuffle=False):
        x, lengths = setup.train.batch(idx)
        vb = apply_view(view, x, lengths, train=False)
        xs.append(vb.x)
        masks.append(vb.mask)
    if view.kind in ("full", "windows") and len(xs) > 1:  # widths differ per chunk: pad to the widest
        width = max(int(x.shape[-1 if view.kind == "full" else 1]) for x in xs)
        xs, masks = _pad_chunks(xs, masks, width, view.kind)
    mask = torch.cat(masks) if all(m is not None for m in masks) else None
    return Preloaded(torch.cat(xs).contiguous(), mask, setup.train.labels.clone())


def _pad_chunks(xs: list[torch.Tensor], masks: list[Any], width: int, kind: str) -> tuple[list[Any], list[Any]]:
    if kind == "full":
        return ([F.pad(x, (0, width - x.shape[-1])) for x in xs],
                [F.pad(m, (0, width - m.shape[-1])) for m in masks])
    pad_x = [torch.cat([x, x.new_zeros(x.shape[0], width - x.shape[1], *x.shape[2:])], 1) for x in xs]
    return pad_x, [F.pad(m, (0, width - m.shape[-1])) for m in masks]


def plain_pass(setup: BenchSetup, data: Preloaded, epochs: int) -> Pass:
    """``epochs`` epochs of the plain loop over ``data`` on a fresh network (same seed, batch size, optimiser)."""
    model = setup.build()
    config = setup.config
    device = setup.run.device
    sequences = setup.view.segmented and isinstance(model, ReadsSegmentSequences)  # one logit row per utterance
    segmented = setup.view.segmented and not sequences
    takes_mask = not segmented and data.mask is not None and accepts_mask(model)
    weights = (class_weights(data.labels, setup.n_classes) if config.class_weighted
               else torch.ones(setup.n_classes)).to(device)
    opt = OPTIMIZERS.get(config.optimizer)([p for p in model.parameters() if p.requires_grad], config)
    gen = torch.Generator().manual_seed(config.seed)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    items, data_s, step_s = 0, 0.0, 0.0
    model.train()
    start, cpu0 = time.perf_counter(), time.process_time()
    for _ in range(epochs):
        for idx in torch.randperm(len(data.labels), generator=gen).split(config.batch_size):
            t0 = time.perf_counter()
            x, y = data.x[idx], data.labels[idx]
            if segmented:
                y = y.repeat_interleave(x.shape[1])
                x = x.reshape(-1, *x.shape[2:])
            mask = data.mask[idx] if takes_mask else None
            sync()
            t1 = time.perf_counter()
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=config.bf16 and device.type == "cuda"):
                logits = model(x, mask=mask) if takes_mask else model(x)
            loss = F.cross_entropy(logits.float(), y, weight=weights, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if config.grad_clip > 0:
                nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
            opt.step()
            sync()
            t2 = time.perf_counter()
            data_s += t1 - t0
            step_s += t2 - t0
            items += len(idx)
            loss.item()
    return Pass(items, time.perf_counter() - start, time.process_time() - cpu0, data_s, step_s)


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


def _summary(runs: list[Pass]) -> dict[str, Any]:
    wall = _median([r.wall_s for r in runs])
    step = _median([r.step_s for r in runs])
    cpu = _median([r.cpu_s for r in runs])
    items = runs[0].items
    return {"items": items, "wall_s": round(wall, 4), "step_s": round(step, 4), "cpu_s": round(cpu, 4),
            "utt_per_s": round(items / wall, 2), "utt_per_step_s": round(items / step, 2),
            "utt_per_cpu_s": round(items / cpu, 2),
            "data_share": round(_median([r.data_s / r.step_s for r in runs]), 4),
            "runs_wall_s": [round(r.wall_s, 4) for r in runs]}


def bench_train(setup: BenchSetup, *, epochs: int = 1, repeats: int = 3, threads: int | None = None) -> dict[str, Any]:
    """Run the benchmark (see module docstring); returns the figures as a dict. ``threads``: torch
    threads for both loops (None: torch's default)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if epochs < 1:
        raise ConfigError(f"epochs={epochs!r}: must be >= 1")
    if repeats < 1:
        raise ConfigError(f"repeats={repeats!r}: must be >= 1")
    heap_kept = keep_freed_memory()  # as ``fit`` does: both loops run under the same malloc options
    t0 = time.perf_counter()
    data = preload(setup)
    preload_s = time.perf_counter() - t0
    warm = BenchSetup(**{**setup.__dict__, "train": _first(setup.train, setup.config.batch_size)})
    plain_pass(warm, preload(warm), 1)  # first-call costs (allocator, kernel choice) on both sides
    project_pass(warm, 1)
    plain_runs: list[Pass] = []
    project_runs: list[Pass] = []
    for _ in range(repeats):
        plain_runs.append(plain_pass(setup, data, epochs))
        project_runs.append(project_pass(setup, epochs))
    plan = setup.resolved.plan
    plain, project = _summary(plain_runs), _summary(project_runs)
    pass_ratios = [(p.items / p.wall_s) / (q.items / q.wall_s) for p, q in zip(project_runs, plain_runs, strict=True)]
    return {
        "model": setup.model, "corpus": setup.corpus, "preset": setup.preset, "fold": setup.run.name,
        "device": str(setup.run.device), "torch_threads": torch.get_num_threads(),
        "train_items": len(setup.train), "left_out": setup.left_out, "epochs": epochs, "repeats": repeats,
        "batch_size": setup.config.batch_size, "optimizer": setup.config.optimizer,
        "steps_per_epoch": -(-len(setup.train) // setup.config.batch_size),
        "view": view_summary(setup.view, plan.view.time_pool if setup.stage != "stage2" else 1),
        "input_shape": list(data.x.shape[1:]), "stage": setup.stage,
        "spec_augment": setup.spec_augment.to_dict() if setup.spec_augment else None,
        "preload_s": round(preload_s, 3), "heap_kept": heap_kept,
        "project": project, "plain": plain,
        "ratio": round(project["utt_per_s"] / plain["utt_per_s"], 3),
        # CPU time barely depends on what else the machine runs: the fairer figure on a shared machine.
        "ratio_cpu": round(project["utt_per_cpu_s"] / plain["utt_per_cpu_s"], 3),
        "ratio_range": [round(min(pass_ratios), 3), round(max(pass_ratios), 3)],
        "target": 0.9,
    }


VIEW_FIELDS = {"fixed": ("frames",), "segments": ("n_segments", "frames"), "windows": ("frames", "window", "shift"),
               "full": ("frames",), "sequence": ()}


def view_summary(view: ViewSpec, time_pool: int) -> dict[str, Any]:
    """The fields of ``view`` that shape its batches (``time_pool``: the recipe's, applied once to the tables)."""
    out: dict[str, Any] = {"kind": view.kind, **{k: getattr(view, k) for k in VIEW_FIELDS[view.kind]}}
    out.update({"channels": view.channels, "resize": list(view.resize) if view.resize else None, "time_pool": time_pool})
    return out


def _first(table: FeatureTable, n: int) -> FeatureTable:
    keep = torch.zeros(len(table), dtype=torch.bool)
    keep[: min(n, len(table))] = True
    return table.select(keep)


def bench_text(r: dict[str, Any]) -> str:
    """The human table of :func:`bench_train`'s figures."""
    p, q = r["project"], r["plain"]
    view = ", ".join(f"{k}={v}" for k, v in r["view"].items())
    row = lambda name, s: (f"{name:<14}{s['utt_per_s']:>9.1f}{s['utt_per_step_s']:>12.1f}{s['data_share']:>12.1%}"  # noqa: E731
                           f"{s['wall_s']:>10.2f}{s['items']:>8d}")
    lines = [
        f"{r['model']}{' (stage 2: its recipe never trains stage 1)' if r['stage'] == 'stage2' else ''} on "
        f"{r['corpus']} (preset {r['preset']}, fold {r['fold']}, {r['device']}, "
        f"{r['torch_threads']} torch threads): {r['train_items']} training utterances, batch {r['batch_size']}, "
        f"{r['optimizer']}, {r['epochs']} epoch(s) x {r['steps_per_epoch']} steps; medians of {r['repeats']} "
        f"alternating passes",
        f"view {view}; model input {tuple(r['input_shape'])}",
        f"{'loop':<14}{'utt/s':>9}{'utt/step-s':>12}{'data share':>12}{'wall s':>10}{'utts':>8}",
        row("ser train", p),
        row("plain torch", q),
        f"ratio ser train / plain: {r['ratio']:.2f} (passes {r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}; "
        f"target >= {r['target']:.2f}: {'reached' if r['ratio'] >= r['target'] else 'NOT reached'}); "
        f"per CPU second {r['ratio_cpu']:.2f}",
    ]
    return "\n".join(lines)

