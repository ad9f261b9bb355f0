"""Training flushes denormal floats to zero in every torch CPU thread (see ``heap.flush_denormals``).

Each check runs in a fresh interpreter: the mode belongs to the threads of a process, and a thread
pool started before it was set keeps the old mode in its other threads.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

PROBE = """
import sys, torch
torch.set_num_threads(2)
{setup}
x = torch.full((2_000_000,), 1e-39)  # a denormal float32
print(int(((x * 1.5) != 0).sum()), flush=True)  # both threads of the pool do half of this product
"""


def _denormals_left(setup: str) -> int:
    out = subprocess.run([sys.executable, "-c", PROBE.format(setup=setup)], capture_output=True, text=True,
                         timeout=120, check=True)
    return int(out.stdout.strip().splitlines()[-1])


def _supported() -> bool:
    out = subprocess.run([sys.executable, "-c", "import torch; print(torch.set_flush_denormal(True))"],
                         capture_output=True, text=True, timeout=120, check=True)
    return out.stdout.strip() == "True"


@pytest.fixture(autouse=True, scope="module")
def _needs_support() -> None:
    """Asked once, when a test of this file runs (not at collection: it starts an interpreter)."""
    if not _supported():
        pytest.skip("this CPU cannot flush denormals")


def test_without_the_mode_denormals_survive_and_with_it_every_thread_flushes_them() -> None:
    assert _denormals_left("") == 2_000_000
    assert _denormals_left("from ser_pipeline.heap import flush_denormals\nassert flush_denormals()") == 0


def test_run_experiment_sets_the_mode_before_anything_else_even_when_the_config_is_refused() -> None:
    setup = """
from ser_pipeline.errors import ConfigError
from ser_pipeline.experiments.config import ExperimentConfig
from ser_pipeline.experiments.runner import run_experiment
from ser_pipeline.workspace import Workspace
import tempfile
try:
    run_experiment(ExperimentConfig(model="no_such_model", corpus="c"), Workspace.resolve(tempfile.mkdtemp()))
except ConfigError:
    pass
else:
    raise SystemExit("expected a ConfigError")
"""
    assert _denormals_left(setup) == 0

