"""The training process keeps freed heap memory from step to step (glibc's malloc options)."""

from __future__ import annotations

import platform
import resource

import pytest
import torch

from ser_pipeline.training.heap import MMAP_THRESHOLD, keep_freed_memory

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the malloc options are glibc's")


def _step(n_tensors: int, nbytes: int) -> None:
    """One 'training step': several large tensors alive at once, written, then all freed."""
    held = [torch.ones(nbytes // 4) for _ in range(n_tensors)]
    assert all(float(t[-1]) == 1.0 for t in held)
    del held


def test_freed_step_memory_is_reused_without_page_faults() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # once per process; a second call changes nothing
    size = MMAP_THRESHOLD // 2  # 16 MiB: under the mmap threshold, from the heap
    _step(8, size)  # the heap grows once to the step's peak (128 MiB)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(3):
        _step(8, size)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
    pages = 3 * 8 * size // resource.getpagesize()  # what the steps touch: ~98k pages when handed back
    assert faults < pages // 20, (faults, pages)
