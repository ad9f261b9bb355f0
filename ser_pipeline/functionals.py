"""openSMILE functionals as a feature kind (``FeatureSpec(kind="functionals")``).

One recording gives one vector of utterance-level statistics (the ``functional_set``):
IS09 (emotion challenge, 384), IS10 (paralinguistics, 1582), eGeMAPSv02 (88) and ComParE_2016
(6373). The store keeps it like every other feature set, keyed by the spec's digest, as a
``(1, D, 1)`` float32 array (one channel, D "bands", one frame), so LOSO folds, re-runs and
``ser featurize`` never recompute it and ``ser store ls/verify/gc`` treat it like log-Mel sets.

``opensmile`` is an optional extra (``pip install ser-pipeline[opensmile]``); without it the kind
is still listed and fails with a clear ConfigError when used. It is imported only here, only when
functionals are computed (Dask workers that compute log-Mels never load it).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from ser_pipeline.errors import ConfigError

# Set name -> dimension D of its functionals vector.
FUNCTIONAL_SETS: dict[str, int] = {"IS09": 384, "IS10": 1582, "eGeMAPSv02": 88, "ComParE_2016": 6373}


def functional_dim(functional_set: str) -> int:
    """D of ``functional_set``'s vector; ConfigError lists the valid sets."""
    if functional_set not in FUNCTIONAL_SETS:
        raise ConfigError(f"functional_set={functional_set!r}: valid sets: {', '.join(FUNCTIONAL_SETS)}")
    return FUNCTIONAL_SETS[functional_set]


def smile(functional_set: str) -> Any:
    """The openSMILE extractor of ``functional_set`` (one per thread and set: the store's thread
    pool never shares one)."""
    return _smile(functional_set, threading.get_ident())


@functools.lru_cache(maxsize=16)
def _smile(functional_set: str, thread: int) -> Any:
    functional_dim(functional_set)
    try:
        import opensmile  # the optional opensmile extra
    except ModuleNotFoundError:
        raise ConfigError("feature kind 'functionals' (model 'svm') needs openSMILE: "
                          "pip install 'ser-pipeline[opensmile]'") from None
    return opensmile.Smile(feature_set=getattr(opensmile.FeatureSet, functional_set),
                           feature_level=opensmile.FeatureLevel.Functionals)


def extract_functionals(waves: Sequence[np.ndarray], functional_set: str, sample_rate: int) -> list[np.ndarray]:
    """Functionals of each mono wave ``(n_i,)`` at ``sample_rate``: a list of ``(1, D, 1)`` float32.

    A vector with a non-finite value raises ValueError (the store sets the recording aside with
    that reason) rather than storing NaNs that would reach the classifier.
    """
    extractor = smile(functional_set)
    out: list[np.ndarray] = []
    for wave in waves:
        try:
            vec = extractor.process_signal(np.asarray(wave, dtype=np.float32), sample_rate).to_numpy()[0]
        except (RuntimeError, OSError) as exc:  # openSMILE's own failures: the item is set aside
            raise ValueError(f"openSMILE {functional_set}: {exc}") from exc
        if not np.isfinite(vec).all():
            raise ValueError(f"{functional_set} functionals not finite ({int((~np.isfinite(vec)).sum())} values)")
        out.append(vec.astype(np.float32).reshape(1, -1, 1))
    return out
