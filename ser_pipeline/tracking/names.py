"""Run names that say what differs, and the clean parameter set of a run (no mlflow import, so the
pipeline's stage table and ``ser train`` can name runs without loading MLflow).

A run name is the model, then what the experiment changes from the model's registered defaults
(the fields of its ExperimentConfig that are not the defaults), then the short config digest::

    cnn · 3f2a91
    cnn · n_mels=48 · dropout=0.4 · 3f2a91
    att_res · protocol=loso_val · epochs=3 · seed=1 · 77c0de
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from ser_pipeline.experiments.config import ExperimentConfig

SEP = " · "
DIGEST_CHARS = 6
MAX_DIFFS = 6
EQUIVALENT_DEFAULTS = {("protocol", "loso")}  # the protocol an empty value resolves to (preset default)
IDENTITY = ("model", "corpus")  # named elsewhere (the name's head, the MLflow experiment)
# Every ExperimentConfig field's default (a field added later never shows up in names as "changed").
DEFAULTS: dict[str, Any] = {
    f.name: f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
    for f in dataclasses.fields(ExperimentConfig) if f.name not in IDENTITY}


def _leaves(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings to ``{"a.b.c": value}`` leaves (lists and scalars are leaves)."""
    if isinstance(obj, dict):
        out: dict[str, Any] = {}
        for key in sorted(obj):
            out.update(_leaves(obj[key], f"{prefix}{key}."))
        return out
    return {prefix[:-1]: obj}


def _text(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "[" + ",".join(_text(v) for v in value) + "]"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def _registered_preset(model: str) -> str | None:
    """The model's registered feature preset (naming it again is not a change), None if unknown."""
    from ser_pipeline.models import get_model  # the registry imports torch: only when naming a run

    try:
        return get_model(model).feature_preset
    except Exception:  # noqa: BLE001 - an unknown or unloadable model just keeps the preset in the name
        return None


def config_changes(config: dict[str, Any]) -> dict[str, str]:
    """``{short name: value}`` of the fields of an ExperimentConfig dict that differ from the defaults,
    in a stable order. Short names are the last path part (``hparams.dropout`` -> ``dropout``)
    unless two fields would share one (then the full path)."""
    changed: dict[str, Any] = {}
    registered = _registered_preset(str(config.get("model", "")))
    order = [k for k in DEFAULTS if k in config] + sorted(k for k in config if k not in DEFAULTS)
    for key in order:  # the ExperimentConfig field order: features first, then protocol, ..., hparams
        value = config[key]
        if key in IDENTITY or value == DEFAULTS.get(key, object()) or value in (None, "", {}) or \
                (key, str(value)) in EQUIVALENT_DEFAULTS or (key == "features" and value in ("auto", registered)):
            continue
        changed.update(_leaves(value, f"{key}.") if isinstance(value, dict) else {key: value})
    changed = {k: v for k, v in changed.items() if v is not None}
    last = [k.split(".")[-1] for k in changed]
    named = {}
    for key, value in changed.items():
        short = key.split(".")[-1]
        named[short if last.count(short) == 1 else key] = _text(value)
    return named


def run_name(config: dict[str, Any], config_digest: str) -> str:
    """``<model> · <change>=<value> ... · <digest6>`` (at most :data:`MAX_DIFFS` changes, then ``+N``)."""
    changes = [f"{k}={v}" for k, v in config_changes(config).items()]
    if len(changes) > MAX_DIFFS:
        changes = [*changes[:MAX_DIFFS], f"+{len(changes) - MAX_DIFFS} more"]
    return SEP.join([str(config.get("model", "model")), *changes, config_digest[:DIGEST_CHARS]])


def run_params(config: dict[str, Any], resolved: dict[str, Any] | None, *, protocol: str,
               features_label: str) -> dict[str, str]:
    """The params of a run: the resolved values only, flattened with stable dotted names, no ``None``,
    each once. ``resolved`` is ``config.json``'s ``resolved`` section (None for older folders: the
    requested config is used, without its empty and ``None`` fields)."""
    if resolved:
        model = resolved.get("model") or {}
        data: dict[str, Any] = {
            "model": config.get("model"), "trainer": model.get("trainer"), "corpus": config.get("corpus"),
            "seed": config.get("seed"), "protocol": protocol, "protocol_options": config.get("protocol_options"),
            "max_folds": config.get("max_folds"), "preset": config.get("preset"),
            "features": {"label": features_label, **(resolved.get("feature_spec") or {})},
            "augment": resolved.get("augment") or "none", "hparams": resolved.get("hparams"),
            "view": resolved.get("view"), "train": resolved.get("train"),
            "spec_augment": resolved.get("spec_augment"),
            "stage2": {"hparams": resolved.get("stage2_hparams"), "train": resolved.get("stage2_train")},
            "speaker_train": resolved.get("speaker_train"), "speaker_freeze": resolved.get("speaker_freeze"),
        }
    else:
        data = {**{k: v for k, v in config.items() if v not in (None, "", {})}, "protocol": protocol,
                "features": {"label": features_label}}
    flat = {}
    for key, value in _leaves(data).items():
        if value is None or value == {} or key.endswith("experiment_id"):
            continue
        flat[key] = (json.dumps(value) if isinstance(value, list | tuple) else str(value))[:6000]
    return flat
