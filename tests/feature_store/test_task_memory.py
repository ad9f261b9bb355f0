"""A featurize task holds one group of decoded recordings at a time (numpy log-Mel), not the whole
task's.

Measured with tracemalloc, which numpy reports its array buffers to: the task's peak is the stored
features (the items, then their concatenation for the batch) plus one group of waves
(:data:`~feature_store.materialise.WAVE_GROUP_BYTES`) and one recording's scratch, whatever the
number of recordings. Before, every decoded wave of the task was kept until the batch was written
(a task of 256 three-second recordings: 49 MB of float32 waves per worker; on CASIA a worker's peak
RSS was 135-142 MB, 95-97 MB one recording at a time).
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from feature_store.materialise import WAVE_GROUP_BYTES, WorkItem, run_task
from ser_pipeline.extractors import extractor
from ser_pipeline.features import FeatureSpec


def _peak_bytes_of_task(set_path: str, spec: FeatureSpec, work: list[WorkItem]) -> tuple[int, int]:
    """``(peak traced bytes during run_task, frames stored)``."""
    run_task(set_path, spec.to_dict(), work[:1])  # imports, templates and caches outside the measurement
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = run_task(set_path, spec.to_dict(), work)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert result.computed == len(work) and not result.failed
    return peak, round(result.audio_seconds * spec.sample_rate / spec.hop_length)


def test_a_numpy_task_never_holds_all_its_decoded_waves(tmp_path, make_corpus):
    n, seconds = 60, 4.0
    frame = make_corpus(n, seconds=seconds)
    work = [WorkItem(r.utterance_id, r.path, r.sha256, ("orig",)) for r in frame.itertuples()]
    spec = FeatureSpec()
    assert extractor(spec, "numpy").per_wave
    peak, frames = _peak_bytes_of_task(str(tmp_path / "set"), spec, work)
    waves = 4 * sum(int(round((seconds + 0.01 * i) * spec.sample_rate)) for i in range(n))  # float32, as written
    stored = frames * spec.channels * spec.bands * np.dtype(spec.dtype).itemsize
    assert waves > 6 * WAVE_GROUP_BYTES  # 15 MB of waves: holding them all cannot pass below
    # The stored items and their concatenation, one group of waves, one recording's frames and spectrum.
    assert peak - 2 * stored < WAVE_GROUP_BYTES + waves / 4, (peak, stored, waves)
