"""The training process keeps freed heap memory from step to step (glibc's malloc options).

Read from glibc's own accounting (``mallinfo2``): after a step's tensors are freed, the heap still
holds them as free memory for the next step. Page-fault counts were tried first and are not a sound
measure here: the kernel may reclaim idle pages of a process (e.g. DAMON on this VM), which faults
them in again whatever malloc does.
"""

from __future__ import annotations

import ctypes
import platform
import subprocess
import sys

import pytest

from ser_pipeline.heap import MMAP_THRESHOLD, keep_freed_memory

pytestmark = pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                                reason="the malloc options are glibc's")

STEP_PROBE = """
import ctypes, sys, torch
class Info(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()]
libc = ctypes.CDLL("libc.so.6"); libc.mallinfo2.restype = Info
if sys.argv[1] == "keep":
    from ser_pipeline.heap import keep_freed_memory
    assert keep_freed_memory()
torch.set_num_threads(1)
held = [torch.ones({size} // 4) for _ in range(8)]  # one 'training step': 8 large tensors alive at once
assert all(float(t[-1]) == 1.0 for t in held)
del held
print(libc.mallinfo2().fordblks)  # bytes the heap holds free after the step
"""


def _has_mallinfo2() -> bool:
    try:
        ctypes.CDLL("libc.so.6").mallinfo2  # noqa: B018 - glibc >= 2.33
    except (OSError, AttributeError):
        return False
    return True


def _free_after_step(mode: str, size: int) -> int:
    """Free heap bytes after one step of 8 tensors of ``size`` bytes, in a fresh process."""
    out = subprocess.run([sys.executable, "-c", STEP_PROBE.format(size=size), mode], capture_output=True, text=True,
                         check=True, timeout=120)
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not _has_mallinfo2(), reason="mallinfo2 needs glibc >= 2.33")
def test_freed_step_memory_stays_in_the_heap_for_the_next_step() -> None:
    size = MMAP_THRESHOLD // 2  # 16 MiB: under the mmap threshold, from the heap
    step_bytes = 8 * size
    kept = _free_after_step("keep", size)
    default = _free_after_step("default", size)
    assert kept >= 0.9 * step_bytes, (kept, step_bytes)  # the step's memory stays, ready for the next step
    assert default < 0.5 * step_bytes, (default, step_bytes)  # glibc's defaults hand it back to the system


def test_the_options_are_set_once_per_process() -> None:
    assert keep_freed_memory() is True
    assert keep_freed_memory() is True  # cached: a second call changes nothing
