"""The model folder (``<experiment>/model/``): the one contract between the experiment runner,
which writes it, and the predictor, which reads it::

    model.json          model, trainer, classes, n_classes, hparams, view, feature_spec, fold,
                        selected_by, stage2_hparams, in_channels (neural), embed_dim (two-stage),
                        normalisation_file (global normalisation), bn_statistics (neural:
                        ``train``, or ``speaker`` = AdaBN: each scored speaker's own statistics)
    weights.pt          the network's state dict (neural models)
    stage2.pt           the stage-2 head (two-stage models)
    normalisation.pt    ``{"mean", "std"}`` ``(C, F)`` training statistics
    estimator.json      a classic estimator's fitted numbers (scaler, SVM coefficients): no pickle
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ser_pipeline.errors import ConfigError
from ser_pipeline.manifest import atomic_write_bytes
from ser_pipeline.models import get_model

META = "model.json"


def _cpu(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu() for k, v in module.state_dict().items()}


def save_model_folder(folder: Path, meta: dict[str, Any], *, model: Any = None, stage2: nn.Module | None = None,
                      stats: dict[str, torch.Tensor] | None = None) -> Path:
    """Write ``folder`` (see the module docstring); ``meta`` is written last as ``model.json``."""
    folder.mkdir(parents=True, exist_ok=True)
    meta = dict(meta)
    if stats:
        torch.save(stats, folder / "normalisation.pt")
        meta["normalisation_file"] = "normalisation.pt"
    if isinstance(model, nn.Module):
        torch.save(_cpu(model), folder / "weights.pt")
        if stage2 is not None:
            torch.save(_cpu(stage2), folder / "stage2.pt")
    elif model is not None:  # a classic estimator: its numbers as JSON, never a pickle
        state = model.state_dict()
        (folder / "estimator.json").write_text(json.dumps(state, sort_keys=True))
        meta["estimator_file"] = "estimator.json"
    atomic_write_bytes(folder / META, (json.dumps(meta, indent=2, sort_keys=True) + "\n").encode())
    return folder


def predicts_from_audio(model_dir: str | Path) -> bool:
    """Whether ``model_dir`` holds a network that predicts from audio (``model.json`` present and not
    a classic estimator's ``estimator.json``, whose functionals ``ser predict`` does not compute)."""
    meta_path = Path(model_dir) / META
    return meta_path.is_file() and not json.loads(meta_path.read_text()).get("estimator_file")


def load_trained_model(model_dir: str | Path, *, device: str = "cpu") -> tuple[nn.Module, nn.Module | None, dict[str, Any]]:
    """Rebuild ``(network, stage2 or None, meta)`` from a model folder.

    ``meta`` holds ``model.json`` and, for ``normalise="global"``, ``meta["normalisation"] =
    {"mean", "std"}`` ``(C, F)`` training statistics (apply with
    :func:`ser_pipeline.dataset.normalise.normalise_with`).
    """
    model_dir = Path(model_dir)
    meta_path = model_dir / META
    if not meta_path.exists():
        raise ConfigError(f"{meta_path}: not a trained model folder (model.json missing)")
    meta = json.loads(meta_path.read_text())
    if meta.get("estimator_file"):
        raise ConfigError(f"{model_dir}: model {meta['model']!r} is a classic estimator ({meta['estimator_file']}); "
                          "prediction from audio serves neural models only")
    entry = get_model(meta["model"])
    hparams = {k: tuple(v) if isinstance(v, list) else v for k, v in meta["hparams"].items()}
    if hparams.get("weights"):  # the pretrained start is in weights.pt: the file need not be here
        hparams["weights"] = None
    model = entry.build(n_classes=meta["n_classes"], in_channels=meta["in_channels"], **hparams)
    model.load_state_dict(torch.load(model_dir / "weights.pt", map_location=device, weights_only=True))
    stage2 = None
    if (model_dir / "stage2.pt").exists() and entry.stage2 is not None:
        stage2 = entry.stage2(meta["n_classes"], meta["embed_dim"], **meta.get("stage2_hparams", {}))
        stage2.load_state_dict(torch.load(model_dir / "stage2.pt", map_location=device, weights_only=True))
    if meta.get("normalisation_file"):
        meta["normalisation"] = torch.load(model_dir / meta["normalisation_file"], weights_only=True)
    return model.to(device).eval(), (stage2.to(device).eval() if stage2 is not None else None), meta
