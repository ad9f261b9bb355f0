"""Model registry (DESIGN.md convention 5): every model registers its builder, reference, input
view, feature preset, training recipe, default hyperparameters and ablation switches.

Contract for builders::

    build(n_classes: int, in_channels: int, **hparams) -> torch.nn.Module

``forward`` takes ``(B, C, F, T)`` (or ``(B, C, H, W)`` after a resize view) and returns logits
``(B, n_classes)``. Segment models take ``(B*S, C, H, W)`` segments; the engine averages the
segment posteriors per utterance.

Trainers (``ModelEntry.trainer``), the kinds registered in ``ser_pipeline.training.trainers``
(checked when an experiment is resolved):

- ``"standard"``: one network trained end to end on the view.
- ``"two_stage"``: stage 1 trains ``build`` on segments (each segment carries its utterance's
  label); the module must expose ``embed(x) -> (B, D)``. Its embeddings for every utterance are
  written to the feature store as derived items keyed by the checkpoint digest; stage 2 trains
  ``stage2(n_classes, embed_dim, **stage2_hparams)`` on ``(B, S, D)`` sequences.
- ``"speaker_pretrain"``: stage 1 trains ``build`` to classify training speakers, with a
  speaker head sized by the number of training speakers (module exposes ``embed`` and accepts
  ``speaker_head(n_speakers)``); the backbone is then frozen and the emotion head is trained.
- ``"classic"``: a non-neural estimator (``build`` returns a scikit-learn estimator) on
  functionals.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from ser_pipeline.registry import Registry


@dataclass(frozen=True)
class ModelEntry:
    """Everything the engine and the CLI need to know about one registered model."""

    name: str
    build: Callable[..., Any]
    reference: str
    feature_preset: str = "logmel64"
    view: dict[str, Any] = field(default_factory=dict)  # ViewSpec fields
    recipe: dict[str, Any] = field(default_factory=dict)  # optimizer, lr, batch_size, epochs, ...
    defaults: dict[str, Any] = field(default_factory=dict)  # builder hyperparameters
    ablations: dict[str, str] = field(default_factory=dict)  # switch -> what it changes
    trainer: str = "standard"
    stage2: Callable[..., Any] | None = None
    stage2_defaults: dict[str, Any] = field(default_factory=dict)
    stage2_recipe: dict[str, Any] = field(default_factory=dict)
    protocol: str = "loso"  # the paper's protocol; the engine's default stays speaker-independent
    augment: str = ""  # the paper's waveform augmentation, in `ser featurize --augment` syntax
    spec_augment: dict[str, Any] = field(default_factory=dict)
    cpu: dict[str, Any] = field(default_factory=dict)  # preset cpu: {"hparams", "view", "train", "stage2_*", "augment"}
    # the from-scratch variant's {"hparams", "train"} over the default and cpu recipes when the paper's
    # pretrained weights (hparam ``weights``) are not given; the user's settings still win
    scratch: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        """JSON-ready description for ``ser models --json``."""
        return {
            "name": self.name,
            "reference": self.reference,
            "trainer": self.trainer,
            "feature_preset": self.feature_preset,
            "view": self.view,
            "recipe": self.recipe,
            "defaults": self.defaults,
            "stage2_defaults": self.stage2_defaults,
            "stage2_recipe": self.stage2_recipe,
            "ablations": self.ablations,
            "protocol": self.protocol,
            "augment": self.augment,
            "spec_augment": self.spec_augment,
            "cpu": self.cpu,
            "scratch": self.scratch,
        }


@runtime_checkable
class LayerWeighted(Protocol):
    """A model that learns weights over stored layers (``ssl_probe``): ``layer_weights() -> (L,)``
    tensor summing to 1. The trainer records them per fold; tracking logs a metric per layer."""

    def layer_weights(self) -> Any: ...


@runtime_checkable
class ReadsItems(Protocol):
    """A model that reads a ``full`` view's items where the preloaded table keeps them
    (``ssl_probe``): ``forward_items(items: ItemFrames) -> (B, K)`` logits, equal to its forward
    of ``items.padded()`` and the frame mask. :func:`~ser_pipeline.inference.forward.forward_batch`
    calls it when a view batch carries items, so the padded batch is never built."""

    def forward_items(self, items: Any) -> Any: ...


@runtime_checkable
class ReadsSegmentSequences(Protocol):
    """A model that reads all of an utterance's segments at once (``dcnn_blstm_att_no_pretrain``):
    ``forward_segments(x (B, S, C, H, W), mask (B, S) bool or None) -> (B, K)`` logits, one per
    utterance. :func:`~ser_pipeline.inference.forward.forward_batch` calls it for segment views
    instead of scoring each segment and averaging the posteriors."""

    def forward_segments(self, x: Any, mask: Any) -> Any: ...


MODELS: Registry[ModelEntry] = Registry("model")

# Modules that register models when imported; one file per family.
MODEL_MODULES = (
    "ser_pipeline.models.baselines",
    "ser_pipeline.models.resnet",
    "ser_pipeline.models.alexnet",
    "ser_pipeline.models.classic",
    "ser_pipeline.models.rescnn",
    "ser_pipeline.models.att_res",
    "ser_pipeline.models.res_trans",
    "ser_pipeline.models.alexnet_sru",
    "ser_pipeline.models.dcnn_blstm_att",
    "ser_pipeline.models.ssl_probe",
)


def register_model(name: str, **entry_fields: Any) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Decorator: register ``build`` under ``name`` with the :class:`ModelEntry` fields given."""

    def decorator(build: Callable[..., Any]) -> Callable[..., Any]:
        entry = ModelEntry(name=name, build=build, **entry_fields)
        MODELS.add(name, entry)
        return build

    return decorator


_loaded = False


def load_all() -> Registry[ModelEntry]:
    """Import every model module once (missing optional modules are skipped) and return the registry."""
    global _loaded
    if not _loaded:
        for module in MODEL_MODULES:
            try:
                importlib.import_module(module)
            except ModuleNotFoundError as exc:
                if exc.name != module:
                    raise
        _loaded = True
    return MODELS


def get_model(name: str) -> ModelEntry:
    return load_all().get(name)


def build_model(name: str, n_classes: int, in_channels: int, **hparams: Any) -> Any:
    """Build a registered model with its defaults overridden by ``hparams``."""
    entry = get_model(name)
    return entry.build(n_classes=n_classes, in_channels=in_channels, **{**entry.defaults, **hparams})
