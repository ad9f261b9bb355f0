"""The benchmarks' peak memory counts the child processes that start and end inside the measured
run, as featurize's worker processes do (they exit when the pool closes, before the run ends)."""

from __future__ import annotations

import subprocess
import sys

from benchmarks.featurize import PeakRSS

CHILD = """
import sys, time
held = bytearray(int(sys.argv[1]) << 20)  # zero-filled: every page touched
time.sleep(0.4)
"""


def _peak_mb_with_child(child_mb: int) -> float:
    with PeakRSS() as mem:
        subprocess.run([sys.executable, "-c", CHILD, str(child_mb)], check=True, timeout=60)
    return mem.peak_mb


def test_a_child_that_exits_inside_the_run_is_counted():
    small, large = _peak_mb_with_child(1), _peak_mb_with_child(300)
    assert large - small > 250, (small, large)
