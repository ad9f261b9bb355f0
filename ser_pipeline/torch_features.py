"""The :class:`~ser_pipeline.features.FeatureSpec` computed with torch on batches of waves.

The same pipeline as :func:`ser_pipeline.features.extract` (pre-emphasis, periodic Hamming window,
zero-padded power FFT without centring, Slaney Mel bank, log floor, regression deltas with edge
replication), vectorised over a batch of equal-rate waves of different lengths, on CUDA when
present and on the CPU otherwise. It matches the numpy path within float32 rounding (the tests
assert max abs difference < 1e-3 on log values); it is not bit-identical to it, so the store keeps
one backend per feature set (see ``docs/ARCHITECTURE.md``).

Waves are padded at the end to the batch's longest; because frames are not centred, padding never
changes a wave's first ``spec.frames_for(n)`` frames, and deltas replicate each wave's own last
frame through a clamped gather, so every item equals its unbatched computation.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np
import torch

from ser_pipeline.errors import ConfigError
from ser_pipeline.features import FeatureSpec, check_wave, mel_filterbank


def default_device() -> torch.device:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.lru_cache(maxsize=16)
def _constants(spec: FeatureSpec, device: str) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Window ``(win,)`` and Mel bank ``(bins, n_mels)`` (None for ``spectrogram``) on ``device``."""
    n = torch.arange(spec.win_length, dtype=torch.float64)
    window = (0.54 - 0.46 * torch.cos(2 * torch.pi * n / spec.win_length)).to(torch.float32)
    bank = None
    if spec.kind == "logmel":
        bank = torch.from_numpy(mel_filterbank(spec.sample_rate, spec.fft_size, spec.n_mels, spec.fmin, spec.fmax)).T
        bank = bank.contiguous().to(device)
    return window.to(device), bank


def pad_batch(waves: Sequence[np.ndarray], *, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Mono waves ``(n_i,)`` -> padded ``(B, N)`` float32 on ``device`` and lengths ``(B,)`` int64."""
    if not waves:
        raise ConfigError("waves: empty batch")
    checked = [check_wave(w) for w in waves]
    lengths = torch.tensor([w.size for w in checked], dtype=torch.int64)
    out = np.zeros((len(checked), int(lengths.max())), dtype=np.float32)
    for row, wave in zip(out, checked, strict=True):
        row[: wave.size] = wave
    return torch.from_numpy(out).to(device, non_blocking=True), lengths.to(device)


def _normalise_waves(x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Zero-mean, unit-variance per wave over its own samples (padding stays zero). ``(B, N)``."""
    valid = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
    count = lengths.to(x.dtype)[:, None]
    mean = (x * valid).sum(dim=1, keepdim=True) / count
    var = (((x - mean) * valid) ** 2).sum(dim=1, keepdim=True) / count
    return ((x - mean) / (var.sqrt() + 1e-8)) * valid


def _preemphasis(x: torch.Tensor, coef: float) -> torch.Tensor:
    """``y[t] = x[t] - coef x[t-1]``, ``y[0] = x[0]`` per row of ``(B, N)``."""
    if coef == 0.0:
        return x
    return torch.cat([x[:, :1], x[:, 1:] - coef * x[:, :-1]], dim=1)


def _hold_last(x: torch.Tensor, frames: torch.Tensor) -> torch.Tensor:
    """``(B, F, T)`` with every frame past an item's own last one replaced by that last frame."""
    t = torch.arange(x.shape[-1], device=x.device)
    last = (frames - 1).clamp(min=0)
    tail = torch.gather(x, 2, last[:, None, None].expand(-1, x.shape[1], 1))  # (B, F, 1)
    return torch.where(t[None, None, :] < frames[:, None, None], x, tail)


def _deltas(x: torch.Tensor, frames: torch.Tensor, width: int) -> torch.Tensor:
    """Regression deltas along time of ``(B, F, T)``, replicating each item's own last frame: the
    frames past it are held at it, then one replicate-padded convolution over time."""
    held = _hold_last(x, frames)
    b, f, t = held.shape
    weights = torch.arange(-width, width + 1, dtype=x.dtype, device=x.device) / (2 * sum(n * n for n in range(1, width + 1)))
    padded = torch.nn.functional.pad(held.reshape(b * f, 1, t), (width, width), mode="replicate")
    return torch.nn.functional.conv1d(padded, weights.view(1, 1, -1)).reshape(b, f, t)


def extract_padded(x: torch.Tensor, lengths: torch.Tensor, spec: FeatureSpec) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of padded waves ``(B, N)`` with ``lengths`` ``(B,)``: ``(B, C, F, T_max)`` float32 and
    frames ``(B,)``. Frames past an item's own count are undefined (slice them off)."""
    spec.validate()
    window, bank = _constants(spec, str(x.device))
    if spec.normalize_waveform:
        x = _normalise_waves(x, lengths)
    x = _preemphasis(x, spec.preemphasis)
    # Pre-emphasis leaks one sample into the padding; numpy pads a wave shorter than a window with zeros.
    x = x * (torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None])
    if x.shape[1] < spec.win_length:
        x = torch.nn.functional.pad(x, (0, spec.win_length - x.shape[1]))
    frames = 1 + (lengths - spec.win_length).clamp(min=0) // spec.hop_length  # (B,)
    framed = x.unfold(1, spec.win_length, spec.hop_length) * window  # (B, T, win)
    spectrum = torch.fft.rfft(framed, n=spec.fft_size, dim=-1)  # (B, T, bins)
    power = spectrum.real.square() + spectrum.imag.square()
    if bank is not None:
        power = power @ bank  # (B, T, n_mels)
    static = power.clamp_min(spec.log_floor).log().transpose(1, 2)  # (B, F, T)
    if not spec.deltas:
        return static[:, None], frames
    d1 = _deltas(static, frames, spec.delta_width)
    d2 = _deltas(d1, frames, spec.delta_width)
    return torch.stack([static, d1, d2], dim=1), frames


def extract_batch(waves: Sequence[np.ndarray], spec: FeatureSpec, *, device: torch.device | str | None = None,
                  max_batch: int = 32) -> list[np.ndarray]:
    """Features of each mono wave ``(n_i,)`` at ``spec.sample_rate``: a list of ``(C, F, T_i)`` float32,
    as :func:`ser_pipeline.features.extract` gives for each wave alone (within float32 rounding).

    Waves are sorted by length and computed ``max_batch`` at a time, so padding stays small; the
    result keeps the input order."""
    target = torch.device(device) if device is not None else default_device()
    order = sorted(range(len(waves)), key=lambda i: np.asarray(waves[i]).size)
    out: list[np.ndarray | None] = [None] * len(waves)
    for start in range(0, len(order), max_batch):
        group = order[start : start + max_batch]
        x, lengths = pad_batch([waves[i] for i in group], device=target)
        with torch.no_grad():
            feats, frames = extract_padded(x, lengths, spec)
        host = feats.cpu().numpy()
        for i, f, t in zip(group, host, frames.tolist(), strict=True):
            out[i] = np.ascontiguousarray(f[..., :t])
    if not waves:
        raise ConfigError("waves: empty batch")
    return out  # type: ignore[return-value]
