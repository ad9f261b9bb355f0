"""The experiment record: one typed description of a finished experiment folder.

The runner writes ``<root>/experiments/<experiment-id>/`` and, last, ``record.json``; tracking, the
pipeline stages and ``ser compare`` read it back with :meth:`ExperimentRecord.read`. Files::

    record.json          this record (its presence marks a finished experiment)
    config.json          {"experiment_id", "config", "resolved", "digests", "folds", "protocol", ...}
    metrics.json         {"folds": [...], "pooled", "mean", "std", "aggregation", "speaker_dependent", ...}
    history.json         {"<fold>": [{"epoch", "train_loss", "val_loss", "val_ua", ...}]}
    history_stage1.json  stage-1 histories (two-stage / speaker pre-training models)
    predictions.csv      utterance_id, fold, speaker, true, pred, p_<class>...
    confusion_<fold>.png/.csv, confusion_pooled.png/.csv, curves.png
    model/               the model folder (:mod:`ser_pipeline.inference.model_folder`)
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from ser_pipeline.errors import ConfigError
from ser_pipeline.manifest import atomic_write_bytes

RECORD = "record.json"
RECORD_VERSION = 1


def json_default(obj: Any) -> Any:
    """The one JSON fallback of experiment files: numpy scalars, tuples/sets, paths."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, tuple | set):
        return list(obj)
    return str(obj)


def write_json(path: Path, obj: Any) -> None:
    """Atomically write ``obj`` as indented, sorted JSON."""
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=json_default) + "\n").encode())


@dataclass(frozen=True)
class Digests:
    """Content digests of an experiment's inputs (MLflow tags ``ser.digest.*``)."""

    manifest: str
    features: str
    augment: str
    config: str


@dataclass(frozen=True)
class ExperimentRecord:
    """A finished experiment: where it is, what it ran, and its metrics.

    ``metrics`` is the content of ``metrics.json`` (``folds``, ``pooled``, ``mean``, ``std``, ...);
    ``artifacts`` maps artifact names (``predictions``, ``confusion_<fold>_png``, ``curves``, ...)
    to file names in ``folder``.
    """

    experiment_id: str
    folder: Path
    model: str
    corpus: str
    seed: int
    protocol: str
    speaker_dependent: bool
    classes: tuple[str, ...]
    digests: Digests
    config: dict[str, Any]  # the ExperimentConfig (to_dict)
    feature_label: str
    metrics: dict[str, Any]
    artifacts: dict[str, str] = field(default_factory=dict)
    model_folder: str = "model"
    device: str = "cpu"  # where it ran (a runtime fact, not part of the identity)
    # what the model folder serves: {"kind": "best_fold"|"all_speakers", "fold", "selected_by", ...}
    final_model: dict[str, Any] = field(default_factory=dict)
    # cross_corpus: the classes not shared by the training and test corpora, {corpus: [classes dropped]}
    dropped_classes: dict[str, list[str]] = field(default_factory=dict)
    version: int = RECORD_VERSION

    @property
    def folds(self) -> list[dict[str, Any]]:
        return list(self.metrics["folds"])

    @property
    def mean(self) -> dict[str, float]:
        return dict(self.metrics["mean"])

    def path(self, artifact: str) -> Path:
        """The file of one artifact (KeyError lists none: callers iterate :attr:`artifacts`)."""
        return self.folder / self.artifacts[artifact]

    def fold_scores(self, metric: str = "ua") -> dict[str, float]:
        """``{fold: metric}`` over the folds."""
        return {f["fold"]: float(f[metric]) for f in self.folds}

    def summary(self) -> dict[str, Any]:
        """Mean UA/WA/F1, std UA, pooled UA, folds, protocol, speaker-dependent flag."""
        mean, pooled = self.metrics["mean"], self.metrics["pooled"]
        return {"ua": mean["ua"], "ua_std": self.metrics["std"]["ua"], "wa": mean["wa"],
                "macro_f1": mean["macro_f1"], "pooled_ua": pooled["ua"], "folds": len(self.folds),
                "protocol": self.protocol, "speaker_dependent": self.speaker_dependent}

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["folder"] = str(self.folder)
        out["classes"] = list(self.classes)
        out.pop("metrics")  # metrics.json holds them
        return out

    def write(self) -> Path:
        """Write ``record.json`` (after every other file of the folder)."""
        path = self.folder / RECORD
        write_json(path, self.to_dict())
        return path

    @classmethod
    def read(cls, folder: str | Path) -> ExperimentRecord:
        """Read a finished experiment folder; ConfigError names a folder that is not one."""
        folder = Path(folder)
        path = folder / RECORD
        if not path.is_file():
            raise ConfigError(f"experiment {folder}: {RECORD} is missing; was the experiment completed?")
        data = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        data = {k: v for k, v in data.items() if k in known}
        data.update(folder=folder, classes=tuple(data["classes"]), digests=Digests(**data["digests"]),
                    metrics=json.loads((folder / "metrics.json").read_text()))
        return cls(**data)

    @classmethod
    def find(cls, folder: str | Path) -> ExperimentRecord | None:
        """The record of ``folder`` when the experiment there is finished, else None."""
        return cls.read(folder) if (Path(folder) / RECORD).is_file() else None
