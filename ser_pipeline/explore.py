"""Corpus exploration: what a manifest holds, as a JSON summary and PNG plots (``ser explore``).

Pure functions over a manifest frame, its rejects and (optionally) per-utterance static log-Mel
features; :func:`write_exploration` writes::

    explore.json              summary (see :func:`corpus_summary`)
    class_counts.png          utterances per class, overall
    class_by_speaker.png      utterances per class and speaker (stacked bars)
    duration_by_class.png     duration distribution per class (box plot)
    mean_logmel_by_class.png  mean static log-Mel per class (only when features are given)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ser_pipeline.config import canonical_json
from ser_pipeline.manifest import atomic_write_bytes


def _pyplot() -> Any:
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib  # heavy optional import: only when plotting

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _reason_key(reason: str) -> str:
    """The reason's kind without the file-specific detail (``"too short: 0.004 s < 0.25 s"`` -> ``"too short"``)."""
    return reason.split(":")[0].strip()


def corpus_summary(manifest: pd.DataFrame, rejects: pd.DataFrame | None = None) -> dict[str, Any]:
    """Counts overall and per speaker, duration statistics per class, sample rates, channels, rejects.

    Returns ``{"utterances", "speakers", "classes" {class: n}, "per_speaker" {speaker: {class: n}},
    "duration_s" {class: {"mean", "median", "p10", "p90", "min", "max"}}, "sample_rates" {rate: n},
    "channels" {n_channels: n}, "rejected", "rejects_by_reason" {reason: n}, "total_duration_s"}``.
    """
    durations: dict[str, dict[str, float]] = {}
    for emotion, values in manifest.groupby("emotion")["duration_s"]:
        d = values.to_numpy(dtype=float)
        durations[str(emotion)] = {"mean": round(float(d.mean()), 3), "median": round(float(np.median(d)), 3),
                                   "p10": round(float(np.percentile(d, 10)), 3), "p90": round(float(np.percentile(d, 90)), 3),
                                   "min": round(float(d.min()), 3), "max": round(float(d.max()), 3)}
    per_speaker = {str(s): {str(k): int(v) for k, v in sorted(g["emotion"].value_counts().items())}
                   for s, g in manifest.groupby("speaker")}
    reasons: dict[str, int] = {}
    if rejects is not None:
        for reason in rejects.get("reason", pd.Series(dtype=str)):
            reasons[_reason_key(str(reason))] = reasons.get(_reason_key(str(reason)), 0) + 1
    return {
        "utterances": int(len(manifest)),
        "speakers": int(manifest["speaker"].nunique()),
        "classes": {str(k): int(v) for k, v in sorted(manifest["emotion"].value_counts().items())},
        "per_speaker": per_speaker,
        "duration_s": durations,
        "total_duration_s": round(float(manifest["duration_s"].sum()), 3),
        "sample_rates": {str(k): int(v) for k, v in sorted(manifest["sample_rate"].value_counts().items())},
        "channels": {str(k): int(v) for k, v in sorted(manifest["channels"].value_counts().items())},
        "rejected": int(0 if rejects is None else len(rejects)),
        "rejects_by_reason": dict(sorted(reasons.items())),
    }


def mean_logmel_by_class(features: Mapping[str, np.ndarray], labels: Mapping[str, str]) -> dict[str, np.ndarray]:
    """Per class, the mean over utterances of each utterance's time-averaged static band energies.

    ``features``: utterance id -> ``(C, F, T)`` (channel 0 is used); returns class -> ``(F,)``.
    """
    sums: dict[str, np.ndarray] = {}
    counts: dict[str, int] = {}
    for utt, feats in features.items():
        label = labels[utt]
        profile = np.asarray(feats[0], dtype=np.float64).mean(axis=1)
        sums[label] = sums.get(label, 0.0) + profile
        counts[label] = counts.get(label, 0) + 1
    return {label: (sums[label] / counts[label]).astype(np.float32) for label in sorted(sums)}


def _bar(ax: Any, names: list[str], values: list[int]) -> None:
    ax.bar(names, values, color="#4c72b0")
    ax.tick_params(axis="x", rotation=45)
    for i, v in enumerate(values):
        ax.text(i, v, str(v), ha="center", va="bottom", fontsize=8)


def write_exploration(
    manifest: pd.DataFrame,
    out_dir: str | Path,
    *,
    rejects: pd.DataFrame | None = None,
    features: Mapping[str, np.ndarray] | None = None,
    title: str = "",
) -> dict[str, Any]:
    """Write ``explore.json`` and the plots into ``out_dir``; returns the summary with ``"files"``."""
    plt = _pyplot()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary = corpus_summary(manifest, rejects)
    files: list[str] = []

    def save(fig: Any, name: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=90)
        plt.close(fig)
        files.append(name)

    classes = list(summary["classes"])
    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(classes) + 2), 3.5))
    _bar(ax, classes, [summary["classes"][c] for c in classes])
    ax.set_title(f"{title} utterances per class".strip())
    save(fig, "class_counts.png")

    speakers = list(summary["per_speaker"])
    fig, ax = plt.subplots(figsize=(max(5, 0.35 * len(speakers) + 3), 4))
    bottom = np.zeros(len(speakers))
    for c in classes:
        values = np.array([summary["per_speaker"][s].get(c, 0) for s in speakers], dtype=float)
        ax.bar(speakers, values, bottom=bottom, label=c)
        bottom += values
    ax.tick_params(axis="x", rotation=90)
    ax.legend(fontsize=7, ncol=2)
    ax.set_title("utterances per speaker and class")
    save(fig, "class_by_speaker.png")

    fig, ax = plt.subplots(figsize=(max(4, 0.7 * len(classes) + 2), 3.5))
    ax.boxplot([manifest.loc[manifest.emotion == c, "duration_s"].to_numpy() for c in classes], showfliers=False)
    ax.set_xticks(range(1, len(classes) + 1), labels=classes, rotation=45)
    ax.set_ylabel("duration (s)")
    ax.set_title("duration per class")
    save(fig, "duration_by_class.png")

    if features:
        profiles = mean_logmel_by_class(features, dict(zip(manifest.utterance_id, manifest.emotion, strict=True)))
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, profile in profiles.items():
            ax.plot(profile, label=label)
        ax.set_xlabel("Mel band")
        ax.set_ylabel("mean log energy")
        ax.legend(fontsize=7)
        ax.set_title("mean log-Mel per class")
        save(fig, "mean_logmel_by_class.png")
        summary["mean_logmel_by_class"] = {k: [round(float(v), 4) for v in p] for k, p in profiles.items()}

    summary["files"] = [*files, "explore.json"]
    atomic_write_bytes(out / "explore.json", canonical_json(summary).encode())
    return summary
