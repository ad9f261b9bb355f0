"""The process heap of training and of featurize's worker processes: keep freed memory for the next
step or item (glibc only).

Every training step allocates the same large tensors (the batch's view, its masked copy, the
activations) and frees them at the end of the step. glibc's malloc hands big freed blocks back to
the operating system (``munmap``, or trimming the top of the heap), so the next step takes them
again page by page: on a CPU box those page faults cost as much as building the batch (measured
with ``ser bench train``: tens of thousands of minor faults per step for ``dcnn_blstm_att``, and
its batch preparation twice as long). :func:`keep_freed_memory` sets two malloc options once per
process so that blocks up to :data:`MMAP_THRESHOLD` come from the heap and the heap keeps up to
:data:`TRIM_THRESHOLD` of free memory; the process's resident size then stays at its peak instead
of shrinking between steps. Featurize's worker processes (:mod:`feature_store.materialise`) set the
same options: a fresh process otherwise maps and faults in every large frame matrix of every item.
Elsewhere than glibc it does nothing.
"""

from __future__ import annotations

import ctypes
import functools
import logging
from typing import Any

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # mallopt parameters (glibc <malloc.h>)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD = 32 << 20
"""Blocks up to this size (32 MiB, glibc's largest allowed on 64-bit systems) come from the heap."""
TRIM_THRESHOLD = 1 << 30
"""Free memory the heap keeps at its top before handing it back (1 GiB)."""


@functools.cache
def keep_freed_memory() -> bool:
    """Set glibc's ``M_MMAP_THRESHOLD`` and ``M_TRIM_THRESHOLD`` once for this process (see the
    module docstring). True when both options were taken; False without glibc."""
    mallopt = _libc_mallopt()
    if mallopt is None:
        return False
    done = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD)) and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    log.debug("malloc: keep freed memory (mmap threshold %d, trim threshold %d): %s", MMAP_THRESHOLD,
              TRIM_THRESHOLD, done)
    return done


def _libc_mallopt() -> Any:
    """glibc's ``mallopt(int, int) -> int``, or None where there is none.

    Looked up in the symbols the process has loaded already (``dlopen(NULL)``: the C library is
    always among them), not with ``ctypes.util.find_library``, which runs ``ldconfig -p`` in a
    subprocess: 56 ms, paid by every featurize worker process as it started.
    """
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


@functools.cache
def flush_denormals() -> bool:
    """Flush denormal floats to zero in this process's torch CPU arithmetic (FTZ and DAZ), once.

    Training on CPU slows as it goes without it: Adam's second moments and the gradients of
    near-idle units fall below float32's normal range (a fifth of the Adam state of a
    ``dcnn_blstm_att_no_pretrain`` refit, by epoch 18), and arithmetic on denormals is slow. Measured
    on CASIA fold 1 of that model, one thread, same seed: 8.6-9.9 s per epoch rising to 11.1-13.2 s from
    epoch 17 without it, 8.9-10.4 s with it. The values lost are below 1.2e-38.

    The mode is per thread; threads started later inherit it. So ``run_experiment`` and ``ser bench
    train`` call this first, before torch starts its CPU thread pool (a pool already running keeps
    its mode in its other threads); ``fit`` calls it too. True when the CPU supports it.
    """
    import torch  # training only: featurize's processes never import torch

    return bool(torch.set_flush_denormal(True))
