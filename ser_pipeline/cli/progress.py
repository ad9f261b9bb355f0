"""What ``ser train`` says while it works, and its tracking step.

:class:`TrainProgress` prints at once what the command is about to do (model, corpus, protocol,
folds, epochs, the features it loads), then, through the training loop's epoch callback, ``fold
i/N`` when a fold starts reporting, one line per epoch with an ETA, and ``resumed fold X from
epoch k`` when the loop picked up a checkpoint after a kill.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import typer

from ser_pipeline.experiments.config import ExperimentConfig, resolve
from ser_pipeline.experiments.corpora import experiment_manifest
from ser_pipeline.experiments.runner import FoldStarted
from ser_pipeline.splits import make_folds
from ser_pipeline.workspace import Workspace


def duration(seconds: float) -> str:
    """``42s``, ``3m05s``, ``1h02m``."""
    s = int(round(max(seconds, 0)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def speakers(names: tuple[str, ...], *, most: int = 3) -> str:
    """``spk01, spk02`` or ``12 speakers`` when there are more than ``most``."""
    return ", ".join(names) if len(names) <= most else f"{len(names)} speakers"


@dataclass
class TrainProgress:
    """Progress lines on stderr (``say`` is the printer; tests pass a list's append)."""

    folds: list[str]
    epochs: int
    say: Callable[[str], None] = field(default=lambda line: typer.echo(line, err=True))
    refit: bool = False  # each fold ends with a refit of at most ``epochs`` epochs
    stages: dict[str, int] = field(default_factory=dict)  # phases run before the main one: {"stage1": epochs}
    seen: dict[str, int] = field(default_factory=dict)
    announced: set[str] = field(default_factory=set)
    epoch_seconds: list[float] = field(default_factory=list)
    last: float = field(default_factory=time.perf_counter)

    def fold_begins(self, event: FoldStarted) -> None:
        """The runner's fold hook: ``fold i/N`` with its speakers, before any feature of it is read."""
        self.announced.add(event.name)
        self.last = time.perf_counter()
        val = f", validation {speakers(event.val_speakers)}: {event.n_val}" if event.n_val else ""
        self.say(f"fold {event.index + 1}/{event.total}: {event.name} (train {event.n_train} utterances{val}; "
                 f"test {speakers(event.test_speakers)}: {event.n_test})")

    def __call__(self, fold: str, epoch: int, metrics: dict[str, float]) -> None:
        now = time.perf_counter()
        base, _, phase = fold.partition("/")
        if fold not in self.seen:
            self.seen[fold] = epoch
            if base not in self.announced:
                index = self.folds.index(base) + 1 if base in self.folds else len(self.announced) + 1
                self.say(f"fold {index}/{len(self.folds)}: {base}")
                self.announced.add(base)
            if epoch > 1:
                self.say(f"resumed fold {fold} from epoch {epoch}")
            if phase == "refit":
                self.say(f"{base}: refit on train + validation speakers for the epochs chosen on validation")
        seconds = float(metrics.get("seconds") or (now - self.last))
        self.last = now
        self.epoch_seconds.append(seconds)
        per_epoch = sum(self.epoch_seconds[-10:]) / len(self.epoch_seconds[-10:])
        index = self.folds.index(base) if base in self.folds else len(self.announced) - 1
        left = self._left_in_fold(phase, epoch) + (len(self.folds) - index - 1) * sum(self._budgets().values())
        scores = (f"val_loss {metrics.get('val_loss', float('nan')):.4f} val_ua {metrics.get('val_ua', float('nan')):.3f}"
                  if phase != "refit" else "(no validation in a refit)")
        of = f"/{self.stages.get(phase, self.epochs)}" if phase != "refit" else ""
        self.say(f"{fold} epoch {epoch}{of}: train_loss {metrics.get('train_loss', float('nan')):.4f} {scores}"
                 f"  ({seconds:.1f} s/epoch, ETA {duration(left * per_epoch)} at most; early stopping can end sooner)")

    def _budgets(self) -> dict[str, int]:
        """Epochs of each phase of a fold, in order: earlier stages, the main fit, the refit."""
        return {**self.stages, "": self.epochs, **({"refit": self.epochs} if self.refit else {})}

    def _left_in_fold(self, phase: str, epoch: int) -> int:
        """Epochs at most left in this fold after ``epoch`` of ``phase`` (an unknown phase counts as the main fit)."""
        budgets = self._budgets()
        order = list(budgets)
        key = phase if phase in budgets else ""
        return budgets[key] - epoch + sum(budgets[p] for p in order[order.index(key) + 1:])


def announce(config: ExperimentConfig, ws: Workspace, device: str,
             say: Callable[[str], None] | None = None) -> TrainProgress:
    """Print what ``ser train`` will do (before any feature is loaded) and return the epoch printer."""
    say = say or (lambda line: typer.echo(line, err=True))
    resolved = resolve(config)
    manifest = experiment_manifest(config.corpus, resolved.protocol, config.protocol_options, ws)
    folds = [f.name for f in make_folds(resolved.protocol, manifest, seed=config.seed, **config.protocol_options)]
    folds = folds[: config.max_folds] if config.max_folds else folds
    epochs = resolved.plan.train.epochs
    stage2 = resolved.plan.stage2_train  # two-stage: stage 1 prints as ".../stage1", stage 2 as the main fit
    per_fold = f"up to {epochs} epoch(s) each" if resolved.trainer.uses_view else "one fit each"
    if stage2 is not None:
        per_fold = f"up to {epochs} stage-1 and {stage2.epochs} stage-2 epoch(s) each"
    say(f"train {config.model} on {config.corpus} ({len(manifest)} utterances): protocol {resolved.protocol}, "
        f"{len(folds)} fold(s), {per_fold}, device {device if resolved.trainer.uses_device else 'cpu'}")
    if resolved.features is not None:
        from ser_pipeline.augment import parse_augment
        from ser_pipeline.features import feature_label

        variants = parse_augment(resolved.augment).variants
        say(f"loading features: {len(manifest)} items ({feature_label(resolved.features)}"
            + (f"; augmented variants {', '.join(v for v in variants if v != 'orig')} for training utterances"
               if len(variants) > 1 else "") + "), computing any that are missing")
    return TrainProgress(folds, stage2.epochs if stage2 is not None else epochs, say,
                         refit=bool(resolved.plan.refit and resolved.trainer.refits),
                         stages={"stage1": epochs} if stage2 is not None else {})


def track_record(record: Any, ws: Workspace, uri: str | None) -> dict[str, Any]:
    """Log a finished experiment to MLflow as ``ser run`` does (experiment ``<corpus>-<protocol>``)."""
    from ser_pipeline.tracking.runs import log_experiment  # mlflow: only when something is tracked

    return log_experiment(record, experiment=f"{record.corpus}-{record.protocol}", uri=uri,
                          manifest_path=ws.manifest_path(record.corpus))
