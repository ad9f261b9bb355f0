"""The one place a feature spec is decided (``ser featurize``, ``ser train``, ``ser run``).

Light on purpose (no torch): ``ser featurize`` imports it at start-up.
"""

from __future__ import annotations

from typing import Any

from ser_pipeline.config import require
from ser_pipeline.features import FeatureSpec, feature_spec
from ser_pipeline.models import get_model

AUTO_PRESET = "auto"  # each model's registered feature preset


def resolve_feature_spec(model: str | None, preset: str | None = None,
                         overrides: dict[str, Any] | None = None, *, where: str = "features") -> FeatureSpec:
    """``preset`` empty or ``auto`` takes ``model``'s registered preset (importing the model
    families, hence torch, only then). ``overrides`` are FeatureSpec fields. The preset is a label:
    two specs with equal parameters have equal digests."""
    if not preset or preset == AUTO_PRESET:
        require(bool(model), where, preset, "give a feature preset or a model")
        preset = get_model(str(model)).feature_preset
    return feature_spec(preset, where=where, **dict(overrides or {}))
