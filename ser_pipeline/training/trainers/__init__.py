"""Trainer kinds behind one protocol (:class:`Trainer`), registered by name in :data:`TRAINERS`.

A model entry names its kind (``ModelEntry.trainer``); nothing else in the package checks trainer
names: what differs between kinds (does it read the feature store, does it use the view, does it
run on the requested device) is declared on the trainer.
"""

from __future__ import annotations

from ser_pipeline.training.trainers import classic, neural  # noqa: F401  (register the kinds)
from ser_pipeline.training.trainers.base import TRAINERS, FoldOutcome, FoldRun, Trainer, TrainingPlan

__all__ = ["TRAINERS", "FoldOutcome", "FoldRun", "Trainer", "TrainingPlan"]
