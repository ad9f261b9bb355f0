"""Frozen self-supervised speech representations: every hidden layer of a WavLM, HuBERT,
wav2vec 2.0, data2vec-audio or Whisper encoder, per utterance, as ``(layers, hidden, frames)``.

``transformers`` is an optional dependency (``pip install -e ".[ssl]"``); this module imports it
only when a checkpoint is loaded. Checkpoints are local folders in Hugging Face format
(``save_pretrained`` / ``huggingface-cli download``). A hub id is resolved from the local Hugging
Face cache only, unless the caller allows a download (``allow_download=True``): nothing reaches
the network by default.

Identity: :func:`checkpoint_digest` hashes the *contents* of the weight and config files (names
relative to the folder), so a changed weight file is a new feature set and the same checkpoint
copied elsewhere keeps its key.

Long recordings are cut into windows with context on both sides (:func:`window_plan`): memory is
bounded by the window, not the recording, and each window contributes only its centre frames.
Windows of equal length are batched; on CUDA the forward pass runs under bf16 autocast.
"""

from __future__ import annotations

import functools
import hashlib
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ser_pipeline.errors import ConfigError

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt")
IDENTITY_FILES = ("config.json", "preprocessor_config.json")
# wav2vec 2.0-style convolutional front end: 320 samples per frame, 400 samples of receptive field.
CONV_STRIDE = 320
CONV_RECEPTIVE = 400


def _identity_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file() and (p.suffix in WEIGHT_SUFFIXES or p.name in IDENTITY_FILES))


_DIGESTS: dict[tuple[Any, ...], str] = {}


def checkpoint_digest(folder: str | Path) -> str:
    """sha256 (hex) over the relative names and bytes of a checkpoint's weight and config files.

    Cached per process by the files' names, sizes and modification times (a big checkpoint is hashed
    once, not at every digest)."""
    root = Path(folder)
    files = _identity_files(root) if root.is_dir() else []
    stamp = (str(root.resolve()), *((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in files))
    if stamp in _DIGESTS:
        return _DIGESTS[stamp]
    _DIGESTS[stamp] = _hash_files(folder, root, files)
    return _DIGESTS[stamp]


def _hash_files(folder: str | Path, root: Path, files: list[Path]) -> str:
    if not any(p.suffix in WEIGHT_SUFFIXES for p in files):
        raise ConfigError(f"ssl checkpoint {str(folder)!r}: no weight files ({', '.join('*' + s for s in WEIGHT_SUFFIXES)}) "
                          f"in that folder")
    digest = hashlib.sha256()
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def resolve_checkpoint(name: str, *, allow_download: bool = False) -> Path:
    """A local checkpoint folder for ``name`` (a folder, or a hub id found in the local cache).

    ConfigError when it is neither, saying how to point at a downloaded checkpoint.
    """
    path = Path(name).expanduser()
    if path.is_dir():
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download  # optional dependency of the ssl extra
    except ImportError:
        snapshot_download = None
    hub_id = name.count("/") == 1 and not name.startswith(("/", ".", "~"))  # "org/model", not a path
    if snapshot_download is not None and hub_id and not path.exists():
        try:
            return Path(snapshot_download(name, local_files_only=not allow_download))
        except Exception as exc:  # noqa: BLE001 - every hub failure becomes one clear message
            reason = f"{type(exc).__name__}"
        else:  # pragma: no cover
            reason = ""
    else:
        reason = "no such folder"
    raise ConfigError(f"ssl checkpoint {name!r}: {reason}; download it once (e.g. `huggingface-cli download {name} "
                      f"--local-dir DIR`) and set the feature spec's checkpoint to that folder")


@functools.lru_cache(maxsize=16)
def _config(folder: str) -> dict[str, Any]:
    path = resolve_checkpoint(folder) / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"ssl checkpoint {folder!r}: cannot read {path.name} ({exc})") from None


def checkpoint_shape(folder: str) -> tuple[int, int]:
    """``(hidden states, hidden size)`` from the checkpoint's config.json (no model loaded)."""
    config = _config(folder)
    if config.get("model_type") == "whisper":
        return int(config["encoder_layers"]) + 1, int(config["d_model"])
    return int(config["num_hidden_layers"]) + 1, int(config["hidden_size"])


def checkpoint_lineage(folder: str) -> dict[str, Any]:
    """What a feature set records of its checkpoint: content digest, model type and class, config."""
    config = _config(folder)
    return {"digest": checkpoint_digest(resolve_checkpoint(folder)), "path": str(resolve_checkpoint(folder)),
            "model_type": config.get("model_type", ""), "architectures": config.get("architectures", []),
            "config": config}


def ssl_frames(folder: str, n_samples: int) -> int:
    """Output frames of the checkpoint's encoder for ``n_samples`` (see :meth:`SslEncoder.frames_for`)."""
    if _config(folder).get("model_type") == "whisper":
        return max(1, -(-n_samples // CONV_STRIDE))
    return max(1, 1 + (n_samples - CONV_RECEPTIVE) // CONV_STRIDE)


@dataclass
class SslEncoder:
    """A loaded encoder and what the extraction needs to know about it."""

    model: torch.nn.Module
    family: str  # "wav2vec2" (WavLM, HuBERT, wav2vec 2.0, data2vec-audio) or "whisper"
    sample_rate: int
    n_layers: int  # hidden states returned: the front end's output plus every transformer layer
    hidden: int
    max_window: int  # samples per forward pass the model accepts (Whisper: its fixed input)
    normalize: bool  # zero-mean unit-variance input (the feature extractor's do_normalize)
    feature_extractor: Any
    device: torch.device
    digest: str
    model_class: str
    config: dict[str, Any]

    @property
    def frame_rate(self) -> float:
        """Output frames per second (50 at 16 kHz for every supported family)."""
        return self.sample_rate / CONV_STRIDE

    def frames_for(self, n_samples: int) -> int:
        """Output frames of a ``n_samples`` input (at least 1)."""
        if self.family == "whisper":
            return max(1, -(-n_samples // CONV_STRIDE))
        return max(1, 1 + (n_samples - CONV_RECEPTIVE) // CONV_STRIDE)


_LOADED: dict[tuple[str, str], SslEncoder] = {}
_LOCK = threading.Lock()


def load_encoder(folder: str | Path, *, device: str | torch.device | None = None) -> SslEncoder:
    """The checkpoint's encoder in eval mode on ``device``, loaded once per process (cached by digest)."""
    root = resolve_checkpoint(str(folder))
    digest = checkpoint_digest(root)
    target = torch.device(device) if device is not None else torch.device("cuda" if torch.cuda.is_available() else "cpu")
    key = (digest, str(target))
    with _LOCK:
        if key not in _LOADED:
            _LOADED[key] = _load(root, digest, target)
        return _LOADED[key]


def _load(root: Path, digest: str, device: torch.device) -> SslEncoder:
    try:
        from transformers import (  # optional: pip install -e ".[ssl]"
            AutoConfig,
            AutoFeatureExtractor,
            AutoModel,
        )
    except ImportError as exc:
        raise ConfigError('feature kind "ssl" needs the transformers package: pip install -e ".[ssl]"') from exc
    config = AutoConfig.from_pretrained(root, local_files_only=True)
    model = AutoModel.from_pretrained(root, local_files_only=True)
    family = "whisper" if config.model_type == "whisper" else "wav2vec2"
    try:
        extractor = AutoFeatureExtractor.from_pretrained(root, local_files_only=True)
    except (OSError, ValueError):
        if family == "whisper":
            raise ConfigError(f"ssl checkpoint {str(root)!r}: a Whisper checkpoint needs its preprocessor_config.json") from None
        extractor = None
    if family == "whisper":
        model = model.get_encoder()
        n_layers, hidden = config.encoder_layers + 1, config.d_model
        max_window = config.max_source_positions * 2 * extractor.hop_length
        sample_rate, normalize = int(extractor.sampling_rate), False
    else:
        n_layers, hidden = config.num_hidden_layers + 1, config.hidden_size
        max_window = 0
        sample_rate = int(getattr(extractor, "sampling_rate", 16000) or 16000)
        normalize = bool(getattr(extractor, "do_normalize", True))
    model.eval().requires_grad_(False).to(device)
    return SslEncoder(model=model, family=family, sample_rate=sample_rate, n_layers=n_layers, hidden=hidden,
                      max_window=max_window, normalize=normalize, feature_extractor=extractor, device=device,
                      digest=digest, model_class=type(model).__name__,
                      config=json.loads(config.to_json_string(use_diff=False)))


@dataclass(frozen=True)
class Window:
    """One forward pass: input samples ``[start, stop)``, keeping global frames ``[keep_from, keep_to)``."""

    start: int
    stop: int
    keep_from: int
    keep_to: int


def window_plan(n_samples: int, total_frames: int, *, window: int, context: int) -> list[Window]:
    """Windows of at most ``window`` samples covering a recording, each with ``context`` samples of
    left and right context whose frames are discarded. ``window`` and ``context`` are multiples of
    the 320-sample frame step; a recording no longer than ``window`` is one window."""
    if window % CONV_STRIDE or context % CONV_STRIDE:
        raise ConfigError(f"ssl window={window}, context={context}: must be multiples of {CONV_STRIDE} samples")
    if n_samples <= window:
        return [Window(0, n_samples, 0, total_frames)]
    hop = window - 2 * context
    if hop <= 0:
        raise ConfigError(f"ssl window={window} samples: must exceed twice the context ({context})")
    plan = []
    for centre in range(0, n_samples, hop):
        start = max(0, centre - context)
        stop = min(n_samples, centre + hop + context)
        keep_from, keep_to = centre // CONV_STRIDE, min(total_frames, (centre + hop) // CONV_STRIDE)
        if keep_to > keep_from:
            plan.append(Window(start, stop, keep_from, keep_to))
    return plan


def _forward(encoder: SslEncoder, batch: np.ndarray) -> torch.Tensor:
    """Hidden states ``(B, layers, frames, hidden)`` float32 of equal-length waves ``(B, n)``."""
    if encoder.family == "whisper":
        feats = encoder.feature_extractor(list(batch), sampling_rate=encoder.sample_rate, return_tensors="pt")
        inputs = {"input_features": feats["input_features"].to(encoder.device)}
    else:
        x = torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        if encoder.normalize:
            x = (x - x.mean(dim=1, keepdim=True)) / torch.sqrt(x.var(dim=1, keepdim=True, unbiased=False) + 1e-7)
        inputs = {"input_values": x.to(encoder.device)}
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if encoder.device.type == "cuda" else _null()
    with torch.inference_mode(), autocast:
        out = encoder.model(**inputs, output_hidden_states=True)
    return torch.stack([h.float() for h in out.hidden_states], dim=1)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def extract_ssl(
    encoder: SslEncoder,
    waves: Sequence[np.ndarray],
    *,
    layers: Sequence[int] | None = None,
    window_s: float = 20.0,
    context_s: float = 2.0,
    batch_size: int = 8,
) -> list[np.ndarray]:
    """Hidden states of each mono wave ``(n_i,)`` at ``encoder.sample_rate``: a list of
    ``(L, hidden, frames_i)`` float32, ``L`` = ``len(layers)`` or every layer (0 = the front end's
    output). Windows of equal length are batched ``batch_size`` at a time."""
    keep = list(range(encoder.n_layers)) if layers is None else [int(i) for i in layers]
    bad = [i for i in keep if not -encoder.n_layers <= i < encoder.n_layers]
    if bad:
        raise ConfigError(f"ssl layers={bad}: this checkpoint has layers 0..{encoder.n_layers - 1}")
    window = _to_step(window_s * encoder.sample_rate)
    if encoder.max_window:
        window = min(window, encoder.max_window)
    context = _to_step(context_s * encoder.sample_rate)
    short = [i for i, w in enumerate(waves) if w.size < CONV_RECEPTIVE]
    if short:
        raise ConfigError(f"ssl input {short[0]}: {waves[short[0]].size} samples, fewer than one frame ({CONV_RECEPTIVE})")
    outs = [np.zeros((len(keep), encoder.hidden, encoder.frames_for(w.size)), dtype=np.float32) for w in waves]
    jobs: dict[int, list[tuple[int, Window]]] = {}
    for i, wave in enumerate(waves):
        for win in window_plan(wave.size, outs[i].shape[2], window=window, context=context):
            jobs.setdefault(win.stop - win.start, []).append((i, win))
    for length in sorted(jobs):
        group = jobs[length]
        for b in range(0, len(group), batch_size):
            part = group[b : b + batch_size]
            states = _forward(encoder, np.stack([waves[i][w.start : w.stop] for i, w in part]))[:, keep]
            for (i, w), state in zip(part, states, strict=True):
                first = w.start // CONV_STRIDE
                got = state[:, w.keep_from - first : w.keep_to - first].transpose(1, 2)  # (L, hidden, kept)
                outs[i][:, :, w.keep_from : w.keep_from + got.shape[2]] = got.cpu().numpy()
    return outs


def _to_step(samples: float) -> int:
    """Round a sample count down to a multiple of the frame step (at least one step)."""
    return max(CONV_STRIDE, int(samples) // CONV_STRIDE * CONV_STRIDE)
