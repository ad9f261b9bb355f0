"""What every featurize worker would otherwise build on its first batch, built once in the fork server.

Imported by the fork server only (it is in :data:`feature_store.pools.FORK_SERVER_PRELOAD`): the
workers forked from it inherit the results. Measured in a 2-worker pass over CASIA (6 tasks), each
worker spent 54-84 ms building the Zarr template of its first batch, and about 10-40 ms on the
default spec's Mel bank and window: Zarr creates the template through its event-loop thread, and two
workers doing so at once on two busy cores wait on each other's thread hand-offs (17 ms alone).

Only pure results are built here (documents, numpy arrays): nothing that holds a thread or a file
across the fork (Zarr resets its own loop in a forked child; Blosc's threads are left unstarted).
A warm-up that fails (no writable temp folder...) is skipped: the workers then build what they need
themselves, as before.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

WARM_DTYPES = ("<f2", "<f4")
"""Batch dtypes whose Zarr template is built: float16 (spectral sets) and float32 (the others)."""


def warm_worker_caches() -> None:
    """Fill the per-process caches of the writer and of the default feature spec's computation."""
    from feature_store.writer import zarr_template
    from ser_pipeline.features import FeatureSpec, _window, mel_segments

    scratch = Path(tempfile.gettempdir())
    for dtype in WARM_DTYPES:
        zarr_template(dtype, 3, scratch)
    spec = FeatureSpec()
    _window(spec.win_length)
    mel_segments(spec.sample_rate, spec.fft_size, spec.n_mels, spec.fmin, spec.fmax)


try:
    warm_worker_caches()
except Exception:  # noqa: BLE001 - an optimisation only: the workers build these themselves
    pass
