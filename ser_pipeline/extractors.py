"""One entry point for computing a FeatureSpec on a list of waves, whatever its kind and backend.

``extract_many(waves, spec, backend=)`` -> one array per wave. Registry :data:`EXTRACTORS` keyed by
``"<kind>:<backend>"``:

- ``logmel`` / ``spectrogram`` on ``numpy``: :func:`ser_pipeline.features.extract` per wave
  ``(C, F, T)`` (bit-identical in any process on one machine);
- ``logmel`` / ``spectrogram`` on ``torch``: :func:`ser_pipeline.torch_features.extract_batch`, the
  same computation batched on CUDA (or the CPU), equal to numpy within 1e-3;
- ``ssl`` (any backend): the checkpoint's hidden states ``(L, H, T)``
  (:mod:`ser_pipeline.ssl_features`), the encoder loaded once per process;
- ``functionals`` (any backend): openSMILE utterance functionals ``(1, D, 1)``
  (:mod:`ser_pipeline.functionals`).

The backend is a runtime choice like the device: it never enters a feature set's digest. torch and
transformers are imported only when their backend is used (Dask workers start faster without).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from ser_pipeline.errors import ConfigError
from ser_pipeline.features import FeatureSpec, extract
from ser_pipeline.registry import Registry

BACKENDS = ("numpy", "torch", "auto")

Compute = Callable[[Sequence[np.ndarray], FeatureSpec], list[np.ndarray]]


@dataclass(frozen=True)
class Extractor:
    """``compute(waves, spec)`` -> one array per wave; ``per_wave``: each wave is computed alone, so
    a caller gains nothing by holding many waves for one call (the store then computes each
    recording as soon as it is read, and holds only its features)."""

    compute: Compute
    per_wave: bool


EXTRACTORS: Registry[Extractor] = Registry("feature extractor")


def _numpy(waves: Sequence[np.ndarray], spec: FeatureSpec) -> list[np.ndarray]:
    return [extract(w, spec) for w in waves]


def _torch(waves: Sequence[np.ndarray], spec: FeatureSpec) -> list[np.ndarray]:
    from ser_pipeline.torch_features import extract_batch  # torch: only for this backend

    return extract_batch(waves, spec)


def _ssl(waves: Sequence[np.ndarray], spec: FeatureSpec) -> list[np.ndarray]:
    from ser_pipeline.ssl_features import extract_ssl, load_encoder  # transformers: the optional ssl extra

    encoder = load_encoder(spec.checkpoint)
    if encoder.sample_rate != spec.sample_rate:
        raise ConfigError(f"sample_rate={spec.sample_rate}: checkpoint {spec.checkpoint!r} expects "
                          f"{encoder.sample_rate} Hz audio")
    return extract_ssl(encoder, waves, layers=spec.layers, window_s=spec.window_s, context_s=spec.context_s)


def _functionals(waves: Sequence[np.ndarray], spec: FeatureSpec) -> list[np.ndarray]:
    from ser_pipeline.functionals import extract_functionals  # opensmile: the optional opensmile extra

    return extract_functionals(waves, spec.functional_set, spec.sample_rate)


for _kind in ("logmel", "spectrogram"):
    EXTRACTORS.add(f"{_kind}:numpy", Extractor(_numpy, per_wave=True))
    EXTRACTORS.add(f"{_kind}:torch", Extractor(_torch, per_wave=False))  # batches of waves on the device
for _backend in ("numpy", "torch"):
    EXTRACTORS.add(f"ssl:{_backend}", Extractor(_ssl, per_wave=False))
    EXTRACTORS.add(f"functionals:{_backend}", Extractor(_functionals, per_wave=False))


def resolve_backend(backend: str) -> str:
    """``numpy`` or ``torch``; ``auto`` is torch when a CUDA device is visible (torch imported only then)."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend={backend!r}: valid: {', '.join(BACKENDS)}")
    if backend != "auto":
        return backend
    try:
        import torch  # only to ask whether a GPU is there
    except ImportError:  # pragma: no cover - torch is a dependency
        return "numpy"
    return "torch" if torch.cuda.is_available() else "numpy"


def extractor(spec: FeatureSpec, backend: str = "numpy") -> Extractor:
    """The registered extractor of ``spec.kind`` on ``backend`` (``auto`` resolved)."""
    return EXTRACTORS.get(f"{spec.kind}:{resolve_backend(backend)}")


def extract_many(waves: Sequence[np.ndarray], spec: FeatureSpec, *, backend: str = "numpy") -> list[np.ndarray]:
    """Features of each wave ``(n_i,)`` at ``spec.sample_rate``: a list of float32 arrays
    (``(C, F, T_i)`` for log-Mel and spectrograms, ``(L, H, T_i)`` for ``ssl``, ``(1, D, 1)`` for
    ``functionals``)."""
    if not waves:
        return []
    return extractor(spec, backend).compute(waves, spec)
