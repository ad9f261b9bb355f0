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


def _faults_of_steps(steps: int, n_tensors: int, nbytes: int) -> int:
    """Minor page faults of this thread over ``steps`` steps, written by this thread alone (one torch
    thread; threads left by other tests in the process touch memory of their own)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _step(n_tensors, nbytes)  # the heap grows once to the step's peak
        before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
        for _ in range(steps):
            _step(n_tensors, nbytes)
        return resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before
    finally:
        torch.set_num_threads(threads)


def test_freed_step_memory_is_reused_without_page_faults() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # once per process; a second call changes nothing
    size = MMAP_THRESHOLD // 2  # 16 MiB: under the mmap threshold, from the heap
    faults = _faults_of_steps(3, 8, size)  # 128 MiB per step
    pages = 3 * 8 * size // resource.getpagesize()  # what the steps touch: ~98k pages when handed back
    assert faults < pages // 20, (faults, pages)
