"""A featurize task's memory does not grow with its number of recordings (numpy log-Mel).

Measured with tracemalloc, which numpy reports its array buffers to. A task reads and computes its
recordings in groups of :data:`~feature_store.materialise.WAVE_GROUP_BYTES` of decoded audio, and
the batch writer encodes the items chunk by chunk as they come, so its peak is one group of waves
and their features, one recording's scratch and one chunk. Before, every decoded wave of the task,
every item and their concatenation were held until the batch was written (a task of 256
three-second recordings: 49 MB of float32 waves alone; on CASIA a worker's peak RSS was 135-142 MB).
"""

from __future__ import annotations

import tracemalloc

import numpy as np

from feature_store.materialise import WAVE_GROUP_BYTES, WorkItem, run_task
from ser_pipeline.extractors import extractor
from ser_pipeline.features import FeatureSpec


def _peak_bytes_of_task(set_path: str, spec: FeatureSpec, work: list[WorkItem]) -> int:
    """Peak traced bytes while ``run_task`` computes and commits ``work``."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        result = run_task(set_path, spec.to_dict(), work)
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    assert result.computed == len(work) and not result.failed
    return peak


def test_a_task_of_four_times_the_recordings_peaks_at_the_same_memory(tmp_path, make_corpus):
    frame = make_corpus(120, seconds=4.0)
    work = [WorkItem(r.utterance_id, r.path, r.sha256, ("orig",)) for r in frame.itertuples()]
    spec = FeatureSpec()
    assert extractor(spec, "numpy").per_wave
    run_task(str(tmp_path / "warm"), spec.to_dict(), work[:1])  # imports, templates and caches
    small = _peak_bytes_of_task(str(tmp_path / "small"), spec, work[:30])
    large = _peak_bytes_of_task(str(tmp_path / "large"), spec, work)
    waves = 4 * 16000 * 4.0 * len(work)  # float32 at 16 kHz: 30 MB for the large task
    assert small > WAVE_GROUP_BYTES  # a group of waves is held, and 30 recordings fill several groups
    assert large < 1.3 * small, (small, large)  # before: about 4x, every wave and item held
    assert large < waves / 3, (large, waves)


def test_recordings_read_through_the_reused_buffer_are_their_own_bytes(tmp_path):
    """The thread's read buffer is reused from file to file: a short file after a long one, an empty
    file, and a file too large to keep a buffer for all read back exactly."""
    from feature_store.recordings import READ_BUFFER_MAX, read_into_buffer

    rng = np.random.default_rng(6)
    sizes = [300_000, 17, 0, 2_000_000, 5, READ_BUFFER_MAX + 3, 1_000]
    for i, size in enumerate(sizes):
        path = tmp_path / f"f{i}.bin"
        content = rng.integers(0, 256, size, dtype=np.uint8).tobytes()
        path.write_bytes(content)
        assert bytes(read_into_buffer(str(path))) == content, size
