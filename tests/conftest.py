"""Shared fixtures: a temporary workspace and tiny generated recordings."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from ser_pipeline.workspace import Workspace

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("MLFLOW_ENABLE_TELEMETRY", "false")

SHARED_CORPORA = Path(__file__).resolve().parents[1].parent / "shared" / "corpora"


@pytest.fixture
def workspace(tmp_path: Path) -> Workspace:
    """An empty workspace under the test's temporary folder."""
    return Workspace.resolve(tmp_path / "ser-data")


def make_tone(
    seconds: float = 0.5, *, sample_rate: int = 16000, freq: float = 220.0, channels: int = 1, seed: int = 0
) -> np.ndarray:
    """A voiced-like test signal: a harmonic tone with a little noise. Shape ``(n,)`` or ``(n, channels)``."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    wave = sum(np.sin(2 * np.pi * freq * k * t) / k for k in range(1, 6)) * 0.2
    wave = (wave + 0.01 * rng.standard_normal(t.size)).astype(np.float32)
    return np.stack([wave] * channels, axis=1) if channels > 1 else wave


@pytest.fixture
def write_wav() -> Callable[..., Path]:
    """``write_wav(path, seconds=0.5, sample_rate=16000, freq=220, channels=1, silent=False, fmt=None)``."""

    def _write(
        path: Path,
        seconds: float = 0.5,
        *,
        sample_rate: int = 16000,
        freq: float = 220.0,
        channels: int = 1,
        silent: bool = False,
        seed: int = 0,
    ) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        data = make_tone(seconds, sample_rate=sample_rate, freq=freq, channels=channels, seed=seed)
        if silent:
            data = np.zeros_like(data)
        sf.write(str(path), data, sample_rate)
        return path

    return _write


@pytest.fixture
def shared_corpora() -> Path:
    """``../shared/corpora`` beside the checkout; tests that need it skip when it is absent."""
    if not SHARED_CORPORA.is_dir():
        pytest.skip(f"real corpora not present at {SHARED_CORPORA}")
    return SHARED_CORPORA


@pytest.fixture
def torch_one_thread():
    """Tiny models run fastest on one torch thread (and do not fight other processes for cores)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
