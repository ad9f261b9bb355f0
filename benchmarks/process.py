"""``ser bench process``: whole-process featurize against a plain librosa script, as a user waits.

Both sides are fresh processes over the same files, run in turn (store, script, store, ...) after
``warmup`` untimed pairs, so a drifting machine affects both alike:

- store: ``ser featurize NAME --workers N`` into an empty scratch store (the manifest copied to a
  scratch workspace; the user's store is never written), start-up, imports and exit included;
- script: ``benchmarks/plain_librosa.py`` over the manifest's files, BLAS limited to one thread;
- wall seconds of each run and CPU seconds of the process and every child it reaped (user + system,
  ``resource.getrusage(RUSAGE_CHILDREN)``, as ``/usr/bin/time`` counts them);
- medians, and the ratio script wall / store wall per pair (its median: the figure to quote);
- then ``runs`` no-op re-runs of the store side (every item stored: nothing to compute), as a user
  re-running the command waits.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ser_pipeline.errors import ConfigError
from ser_pipeline.workspace import Workspace

PLAIN_SCRIPT = Path(__file__).with_name("plain_librosa.py")
ONE_BLAS_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


@dataclass(frozen=True)
class Run:
    """One finished process: ``wall_s`` and ``cpu_s`` (its own and its reaped children's)."""

    wall_s: float
    cpu_s: float


def timed_run(command: list[str], env: dict[str, str]) -> Run:
    """Run ``command`` to its end; ConfigError with its last error line when it fails."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["(no output)"])[-1]
        raise ConfigError(f"bench process: `{' '.join(command[1:4])} ...` exited {done.returncode}: {last}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Run(round(wall, 4), round(cpu, 4))


def scratch_workspace(source: Workspace, name: str, folder: Path) -> Workspace:
    """A workspace under ``folder`` holding only manifest ``name``'s files (copied), no features."""
    files = sorted(source.manifests.glob(f"{name}.*"))
    if not source.manifest_path(name).exists():
        raise ConfigError(f"no manifest named {name!r} under {source.manifests}; run `ser ingest` first")
    scratch = Workspace(folder)
    scratch.manifests.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copy2(f, scratch.manifests / f.name)
    return scratch


def _summary(runs: list[Run]) -> dict[str, Any]:
    return {"wall_s": round(statistics.median(r.wall_s for r in runs), 3),
            "cpu_s": round(statistics.median(r.cpu_s for r in runs), 3),
            "runs_wall_s": [r.wall_s for r in runs], "runs_cpu_s": [r.cpu_s for r in runs]}


def bench_process(source: Workspace, name: str, paths: list[str], audio_seconds: float, folder: Path, *,
                  workers: int, runs: int = 3, warmup: int = 1) -> dict[str, Any]:
    """Time both sides ``warmup + runs`` times in turn under ``folder`` (see the module docstring)."""
    if runs < 1 or warmup < 0:
        raise ConfigError(f"runs={runs!r}, warmup={warmup!r}: need runs >= 1 and warmup >= 0")
    scratch = scratch_workspace(source, name, folder / "workspace")
    listing = folder / "files.txt"
    listing.write_text("\n".join(paths) + "\n")
    store_cmd = [sys.executable, "-m", "ser_pipeline.cli", "featurize", name, "--workers", str(workers),
                 "--root", str(scratch.root)]
    plain_cmd = [sys.executable, str(PLAIN_SCRIPT), str(listing), str(folder / "plain-out")]
    env = {k: v for k, v in os.environ.items() if k != "SER_ROOT"}
    store_runs: list[Run] = []
    plain_runs: list[Run] = []
    for i in range(warmup + runs):
        shutil.rmtree(scratch.features, ignore_errors=True)  # a first featurize every time
        store = timed_run(store_cmd, env)
        plain = timed_run(plain_cmd, {**env, **ONE_BLAS_THREAD})
        if i >= warmup:
            store_runs.append(store)
            plain_runs.append(plain)
    noop_runs = [timed_run(store_cmd, env) for _ in range(runs)]  # the store now holds every item
    ratios = [p.wall_s / s.wall_s for s, p in zip(store_runs, plain_runs, strict=True)]
    return {"manifest": name, "files": len(paths), "audio_seconds": round(audio_seconds, 2), "workers": workers,
            "runs": runs, "warmup": warmup, "store": _summary(store_runs), "plain": _summary(plain_runs),
            "noop": _summary(noop_runs),
            "ratio": round(statistics.median(ratios), 3), "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
            "store_command": " ".join(["ser", *store_cmd[3:]]), "plain_command": "python plain_librosa.py LIST OUT"}


def process_text(r: dict[str, Any]) -> str:
    """The human-readable report."""
    s, p = r["store"], r["plain"]
    return "\n".join([
        f"corpus {r['manifest']}: {r['files']} files, {r['audio_seconds']:.1f} audio s; whole processes, "
        f"medians of {r['runs']} alternating runs after {r['warmup']} warm-up",
        f"ser featurize (--workers {r['workers']}, empty store) : {s['wall_s']:.2f} s wall, {s['cpu_s']:.2f} s CPU",
        f"plain librosa script (one BLAS thread)  : {p['wall_s']:.2f} s wall, {p['cpu_s']:.2f} s CPU",
        f"ratio script / store (wall)              : {r['ratio']:.2f}x (runs {r['ratio_range'][0]:.2f}-"
        f"{r['ratio_range'][1]:.2f}x)",
        f"no-op re-run of ser featurize            : {r['noop']['wall_s']:.2f} s wall, {r['noop']['cpu_s']:.2f} s CPU",
    ])
