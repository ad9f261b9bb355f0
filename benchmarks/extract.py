"""``ser bench extract``: the feature computation alone, numpy path vs the batched torch path (and an
SSL checkpoint when given), on the same decoded waves, in one run.

Waves are decoded and resampled once up front (not timed). Each backend gets a warm-up call (its
imports, FFT plans, CUDA context), then ``repeats`` alternating timed passes; medians are reported
as audio seconds per wall second, and the torch/numpy ratio from the medians.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ser_pipeline.extractors import extract_many
from ser_pipeline.features import FeatureSpec


def _timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_backends(waves: Sequence[np.ndarray], spec: FeatureSpec, *, repeats: int = 3, batch: int = 64,
                   torch_device: str | None = None) -> dict[str, Any]:
    """Medians over ``repeats`` alternating passes of numpy vs torch on ``waves`` (mono, ``spec.sample_rate``)."""
    from ser_pipeline.torch_features import default_device, extract_batch  # torch: this benchmark only

    device = torch_device or str(default_device())
    audio_s = sum(w.size for w in waves) / spec.sample_rate
    chunks = [waves[i : i + batch] for i in range(0, len(waves), batch)]
    runners = {
        "numpy": lambda: [extract_many(c, spec, backend="numpy") for c in chunks],
        "torch": lambda: [extract_batch(c, spec, device=device) for c in chunks],
    }
    for run in runners.values():
        run()  # warm-up: imports, plans, CUDA context
    times: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(repeats):
        for name, run in runners.items():
            times[name].append(_timed(run))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {
        "files": len(waves), "audio_seconds": round(audio_s, 2), "batch": batch, "torch_device": device,
        "repeats": repeats,
        **{k: {"seconds": round(med[k], 4), "audio_s_per_s": round(audio_s / med[k], 1)} for k in runners},
        "ratio_torch_over_numpy": round(med["numpy"] / med["torch"], 3),
    }


def bench_ssl(waves: Sequence[np.ndarray], checkpoint: str, *, repeats: int = 1, device: str | None = None) -> dict[str, Any]:
    """Throughput of SSL hidden-state extraction with ``checkpoint`` (audio s per wall s, median)."""
    from ser_pipeline.ssl_features import extract_ssl, load_encoder  # the ssl extra: this benchmark only

    encoder = load_encoder(checkpoint, device=device)
    audio_s = sum(w.size for w in waves) / encoder.sample_rate
    extract_ssl(encoder, waves[:1])  # warm-up
    seconds = statistics.median(_timed(lambda: extract_ssl(encoder, waves)) for _ in range(repeats))
    return {"checkpoint": checkpoint, "model_class": encoder.model_class, "layers": encoder.n_layers,
            "hidden": encoder.hidden, "device": str(encoder.device), "files": len(waves),
            "audio_seconds": round(audio_s, 2), "seconds": round(seconds, 3),
            "audio_s_per_s": round(audio_s / seconds, 2)}
