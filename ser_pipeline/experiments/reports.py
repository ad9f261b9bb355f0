"""Report files of an experiment: confusion matrices (PNG with counts and percentages, CSV) and
training curves (PNG), drawn with matplotlib's Agg backend (no display needed)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ser_pipeline.metrics import row_normalise


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt: Any, fig: Any, path: str | Path, *, dpi: int) -> Path:
    """Lay out, write and close ``fig``; returns ``path``."""
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def confusion_frame(cm: np.ndarray, classes: Sequence[str]) -> pd.DataFrame:
    """Counts ``(K, K)`` as a frame: index ``true_<class>``, columns ``pred_<class>``."""
    return pd.DataFrame(np.asarray(cm, dtype=np.int64), index=[f"true_{c}" for c in classes],
                        columns=[f"pred_{c}" for c in classes])


def write_confusion_csv(cm: np.ndarray, classes: Sequence[str], path: str | Path) -> Path:
    """Write the counts with class names on both axes; returns ``path``."""
    path = Path(path)
    confusion_frame(cm, classes).to_csv(path, index_label="true\\pred")
    return path


def write_confusion_png(cm: np.ndarray, classes: Sequence[str], path: str | Path, *, title: str = "") -> Path:
    """Heat map of the row-normalised matrix; each cell shows the count and the row percentage."""
    plt = _pyplot()
    cm = np.asarray(cm, dtype=np.int64)
    norm = row_normalise(cm)
    k = len(classes)
    size = max(4.0, 0.8 * k + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    ax.set_xticks(range(k), labels=list(classes), rotation=45, ha="right")
    ax.set_yticks(range(k), labels=list(classes))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    for i in range(k):
        for j in range(k):
            colour = "white" if norm[i, j] > 0.5 else "black"
            ax.text(j, i, f"{cm[i, j]}\n{100 * norm[i, j]:.1f}%", ha="center", va="center", fontsize=8, color=colour)
    return _save(plt, fig, path, dpi=90)


def write_curves_png(history: Mapping[str, Sequence[Mapping[str, Any]]], path: str | Path) -> Path | None:
    """Train/validation loss and validation UA per epoch for every fold; None without history."""
    if not any(history.values()):
        return None
    plt = _pyplot()
    fig, (ax_loss, ax_ua) = plt.subplots(1, 2, figsize=(10, 4))
    for fold, rows in history.items():
        epochs = [r["epoch"] for r in rows]
        ax_loss.plot(epochs, [r["train_loss"] for r in rows], label=f"{fold} train")
        ax_loss.plot(epochs, [r["val_loss"] for r in rows], "--", label=f"{fold} val")
        ax_ua.plot(epochs, [r["val_ua"] for r in rows], label=str(fold))
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_ua.set(xlabel="epoch", ylabel="UA", title="validation UA")
    ax_loss.legend(fontsize=6)
    ax_ua.legend(fontsize=6)
    return _save(plt, fig, path, dpi=80)


def layer_weights(rows: Sequence[Mapping[str, Any]]) -> dict[str, list[float]]:
    """``{fold: [w_0, ..., w_{L-1}]}`` from fold rows carrying ``layer_weight_<i>`` (ssl_probe); empty otherwise."""
    out: dict[str, list[float]] = {}
    for row in rows:
        keys = sorted((k for k in row if k.startswith("layer_weight_")), key=lambda k: int(k.rsplit("_", 1)[1]))
        if keys:
            out[str(row["fold"])] = [float(row[k]) for k in keys]
    return out


def write_layer_weights_png(weights: Mapping[str, Sequence[float]], path: str | Path) -> Path | None:
    """Bars of the learned weight of every stored layer, one group per fold; None without weights."""
    if not weights:
        return None
    plt = _pyplot()
    folds = list(weights)
    n_layers = max(len(w) for w in weights.values())
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * n_layers + 3), 3.5))
    width = 0.8 / len(folds)
    for j, fold in enumerate(folds):
        ax.bar([i + j * width for i in range(len(weights[fold]))], weights[fold], width=width, label=fold)
    ax.set(xlabel="layer (0 = front end)", ylabel="softmax weight", title="learned layer weights")
    ax.legend(fontsize=6)
    return _save(plt, fig, path, dpi=80)
