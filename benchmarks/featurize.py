"""``ser bench featurize``: the store's featurize against the obvious librosa loop, in one run.

Measured on the same files, page cache warmed first (both read from memory):

- naive: for each file ``librosa.load(sr=16000)``, 64-band log-Mel (25 ms Hamming, 10 ms hop,
  512-point FFT), delta and delta-delta (``librosa.feature.delta``), one ``.npy`` per file; in this
  process, after one warm-up file that pays librosa's imports and first calls (timed apart);
- store: :func:`materialise` into a fresh store where ``ser featurize`` would run it: for a corpus
  of up to 4,000 items on local worker processes forked from a fork server (its start, with the
  compute path's imports, timed apart: paid once per process), else on a Dask LocalCluster (cluster
  start-up, with the workers' imports, timed apart);
- two ratios: ``ratio`` (warm: start-up excluded on both sides) and ``ratio_cold`` (start-up
  included on both sides);
- no-op re-run of the store (nothing to compute) in this process;
- the single-thread cost of each step (read, hash, decode, resample, STFT, Mel, log, deltas,
  cast, write) in ms per audio second (:func:`benchmarks.stages.stage_profile`);
- peak memory (RSS of this process and its children; see :class:`PeakRSS`) at 1x and ``scale``x
  the corpus (default 4x: the corpus plus three copies whose bytes differ by one sample bit, so
  distinct items), both with the same task size, so only the corpus size differs.
"""

from __future__ import annotations

import shutil
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from feature_store.materialise import DEFAULT_BATCH_SIZE, dask_client, materialise, task_size
from feature_store.pools import fork_server_available, start_fork_server
from feature_store.store import FeatureStore
from ser_pipeline.audio import check_recording, file_sha256
from ser_pipeline.errors import AudioError, ConfigError
from ser_pipeline.experiments.features import choose_executor
from ser_pipeline.features import feature_spec

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


def _tree_pids() -> list[int]:
    """This process and all its live descendants."""
    import psutil

    proc = psutil.Process()
    return [proc.pid, *(child.pid for child in proc.children(recursive=True))]


def _vm_hwm_mb(pid: int) -> float | None:
    """The kernel's resident-memory high-water mark of ``pid`` (``VmHWM``, MB), None if unreadable."""
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e6
    except OSError:
        return None
    return None


def _reset_hwm(pid: int) -> bool:
    """Reset ``VmHWM`` of ``pid`` to its current RSS (Linux ``clear_refs`` 5); False if not possible."""
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def peak_memory_method() -> str:
    """How :class:`PeakRSS` measures on this machine."""
    with PeakRSS() as probe:
        pass
    return probe.method


class PeakRSS:
    """Context manager: peak resident memory of this process and all its children (MB).

    On Linux it resets each process's kernel high-water mark (``VmHWM``) on entry, reads the mark of
    every process of the tree every ``interval_s`` (a child that starts and ends inside, such as a
    featurize worker, is counted with the last mark read while it lived) and sums the marks on exit.
    The sum of per-process peaks is an upper bound of the tree's simultaneous peak (pages a worker
    shares with its fork server count in both). Elsewhere it samples the tree's RSS every
    ``interval_s``.
    """

    def __init__(self, interval_s: float = 0.05) -> None:
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self.method = "kernel high-water marks"
        self._marks: dict[int, float] = {}  # pid -> highest VmHWM read (MB)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> float:
        import psutil

        total = 0
        for pid in _tree_pids():
            try:
                total += psutil.Process(pid).memory_info().rss
            except psutil.Error:
                pass
        return total / 1e6

    def _read_marks(self) -> None:
        for pid in _tree_pids():
            mark = _vm_hwm_mb(pid)
            if mark is not None:
                self._marks[pid] = max(mark, self._marks.get(pid, 0.0))

    def _run(self, step: Callable[[], None]) -> None:
        while not self._stop.wait(self.interval_s):
            step()

    def _sample_peak(self) -> None:
        self.peak_mb = max(self.peak_mb, self._sample())

    def __enter__(self) -> PeakRSS:
        pids = _tree_pids()
        if all(_reset_hwm(pid) for pid in pids):
            self._read_marks()
            step = self._read_marks
        else:
            self.method = f"sampled every {self.interval_s:g} s"
            self.peak_mb = self._sample()
            step = self._sample_peak
        self._thread = threading.Thread(target=self._run, args=(step,), daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.method.startswith("kernel"):
            self._read_marks()
            self.peak_mb = sum(self._marks.values())
        else:
            self._sample_peak()


def tree_cpu_seconds() -> float:
    """User + system CPU seconds used so far by this process and its live descendants, each with the
    children it has reaped (``children_user``/``children_system``): worker processes that came and went
    between two readings (a process pool's, reaped by this process or by a live fork server) count."""
    import psutil

    proc = psutil.Process()
    total = sum(proc.cpu_times()[:4])
    for child in proc.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:4])
        except psutil.Error:
            pass
    return total


def frame_from_dir(folder: Path) -> pd.DataFrame:
    """A minimal manifest (utterance_id, path, sha256, duration_s) of the usable audio files under ``folder``.

    A file that :func:`ser_pipeline.audio.check_recording` rejects (corrupt, truncated, silent...)
    is left out with a warning naming it and the reason; ConfigError when no usable file is left.
    """
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ConfigError(f"--path {folder}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    rows = []
    for p in files:
        try:
            data, rate = check_recording(p, min_duration_s=0.0)
        except AudioError as exc:
            warnings.warn(f"{exc}; left out of the benchmark", stacklevel=2)
            continue
        rows.append({"utterance_id": str(p.relative_to(folder)), "path": str(p), "sha256": file_sha256(p),
                     "duration_s": len(data) / rate})
    if not rows:
        raise ConfigError(f"--path {folder}: none of the {len(files)} audio files is usable (see the warnings)")
    return pd.DataFrame(rows)


def naive_loop_one(path: str, out: Path) -> None:
    """The obvious per-file baseline: librosa load, 64-band log-Mel, deltas, one .npy."""
    import librosa

    y, sr = librosa.load(path, sr=16000)
    mel = librosa.feature.melspectrogram(y=y, sr=sr, n_fft=512, win_length=400, hop_length=160, window="hamming",
                                         n_mels=64, fmin=20.0, fmax=8000.0)
    logmel = np.log(np.maximum(mel, 1e-10))
    feats = np.stack([logmel, librosa.feature.delta(logmel, width=5), librosa.feature.delta(logmel, width=5, order=2)])
    np.save(out, feats.astype(np.float32))


def naive_loop(paths: list[str], out_dir: Path, *, blas_threads: int | None = None) -> tuple[float, float]:
    """Run the baseline over ``paths``; returns ``(start-up seconds, loop wall seconds)``.

    Start-up is one warm-up file, which pays librosa's import and first-call costs (the naive
    counterpart of the store's cluster start). ``blas_threads`` caps BLAS threads (None: the
    libraries' default, as a user's loop would run).
    """
    from threadpoolctl import threadpool_limits

    out_dir.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(limits=blas_threads):
        start = time.perf_counter()
        naive_loop_one(paths[0], out_dir / "warmup.npy")
        startup = time.perf_counter() - start
        start = time.perf_counter()
        for i, path in enumerate(paths):
            naive_loop_one(path, out_dir / f"{i:06d}.npy")
        return startup, time.perf_counter() - start


def distinct_copies(frame: pd.DataFrame, folder: Path, copies: int) -> pd.DataFrame:
    """``copies`` re-written copies of every file, each differing by one sample's lowest bit."""
    out = []
    for k in range(1, copies + 1):
        for row in frame.itertuples():
            info = sf.info(row.path)
            data, rate = sf.read(row.path, dtype="int16", always_2d=True)
            data[min(k - 1, len(data) - 1), 0] ^= 1
            dest = folder / f"copy{k}" / f"{len(out):06d}{Path(row.path).suffix}"
            dest.parent.mkdir(parents=True, exist_ok=True)
            sf.write(str(dest), data, rate, subtype=info.subtype, format=info.format)
            out.append({"utterance_id": f"copy{k}/{row.utterance_id}", "path": str(dest), "sha256": file_sha256(dest),
                        "duration_s": row.duration_s})
    return pd.DataFrame(out)


def warm_page_cache(paths: list[str]) -> None:
    for path in paths:
        Path(path).read_bytes()


@dataclass(frozen=True)
class Pass:
    """One timed pass: wall seconds, CPU seconds of the process tree, peak memory (MB)."""

    seconds: float
    cpu_seconds: float
    peak_mb: float


def timed(fn: Callable[[], Any]) -> tuple[Any, Pass]:
    """Run ``fn`` once under wall clock, process-tree CPU time and :class:`PeakRSS`."""
    with PeakRSS() as mem:
        cpu0, start = tree_cpu_seconds(), time.perf_counter()
        result = fn()
        seconds, cpu = time.perf_counter() - start, tree_cpu_seconds() - cpu0
    return result, Pass(seconds, cpu, mem.peak_mb)


def _median(values: list[float]) -> float:
    return float(np.median(values))


def store_pass(
    frame: pd.DataFrame, spec: Any, folder: Path, workers: int | None, batch_size: int = DEFAULT_BATCH_SIZE
) -> tuple[Any, Pass, float, int]:
    """Featurize ``frame`` into a fresh store under ``folder`` where ``ser featurize`` would: in this
    process or on local worker processes for small jobs (the fork server's start is the start-up,
    paid once per process; forking the workers is in the pass), else on a fresh cluster (start timed).

    Returns ``(report, pass, start-up seconds, workers or processes)``.
    """
    executor = choose_executor(len(frame), workers=workers, dask_address=None, batch_size=batch_size)
    if executor.kind != "cluster":
        start = time.perf_counter()
        if executor.kind == "processes" and fork_server_available():
            start_fork_server()
        startup_s = time.perf_counter() - start
        report, run = timed(lambda: materialise(frame, spec, None, FeatureStore(folder), processes=executor.processes,
                                                batch_size=batch_size))
        return report, run, startup_s, executor.processes
    start = time.perf_counter()
    with dask_client(workers) as client:
        cluster_s = time.perf_counter() - start
        n_workers = len(client.scheduler_info()["workers"])
        report, run = timed(lambda: materialise(frame, spec, None, FeatureStore(folder), client=client,
                                                batch_size=batch_size))
    return report, run, cluster_s, n_workers


def bench_featurize(
    frame: pd.DataFrame, scratch: Path, *, workers: int | None = None, preset: str = "logmel64",
    overrides: dict[str, Any] | None = None, scale: int = 4,
    naive_blas_threads: int | None = None, repeats: int = 3, stages: bool = True,
) -> dict[str, Any]:
    """Run the whole benchmark (see module docstring); returns the figures as a dict.

    Naive and store passes alternate ``repeats`` times (each store pass on a fresh cluster, so the
    naive loop never shares the machine with idle workers) and every figure is the median over
    passes: a slow moment on a shared machine hits both sides and moves the median little.
    """
    if frame.empty:
        raise ConfigError("bench featurize: the manifest has no rows")
    if repeats < 1:
        raise ConfigError(f"repeats={repeats!r}: must be >= 1")
    frame = frame[["utterance_id", "path", "sha256", "duration_s"]].reset_index(drop=True)
    paths = frame["path"].tolist()
    audio_s = float(frame["duration_s"].sum())
    spec = feature_spec(preset, **(overrides or {}))  # the store's side; the naive loop is fixed
    warm_page_cache(paths)
    naive_runs: list[Pass] = []
    store_runs: list[Pass] = []
    cluster_starts: list[float] = []
    start = time.perf_counter()
    naive_loop_one(paths[0], scratch / "startup.npy")  # librosa's imports and first calls
    naive_startup_s = time.perf_counter() - start
    for k in range(repeats):
        (_, loop_s), naive = timed(lambda: naive_loop(paths, scratch / "naive", blas_threads=naive_blas_threads))
        naive_runs.append(Pass(loop_s, naive.cpu_seconds, naive.peak_mb))
        shutil.rmtree(scratch / "naive", ignore_errors=True)
        folder = scratch / f"store-1x-{k}"
        r1, run, cluster_s, n_workers = store_pass(frame, spec, folder, workers)
        store_runs.append(run)
        cluster_starts.append(cluster_s)
        if k < repeats - 1:
            shutil.rmtree(folder, ignore_errors=True)
    noop, noop_run = timed(lambda: materialise(frame, spec, None, FeatureStore(folder)))
    naive_s, store_s = _median([r.seconds for r in naive_runs]), _median([r.seconds for r in store_runs])
    naive_cpu, store_cpu = _median([r.cpu_seconds for r in naive_runs]), _median([r.cpu_seconds for r in store_runs])
    # a fresh cluster per pass: the median start; the fork server starts in the first pass only: that start
    pool = choose_executor(len(frame), workers=workers, dask_address=None, batch_size=DEFAULT_BATCH_SIZE).kind
    cluster_s = cluster_starts[0] if pool == "processes" else _median(cluster_starts)
    out: dict[str, Any] = {"files": len(frame), "audio_seconds": round(audio_s, 2), "preset": preset, "overrides": dict(overrides or {}),
                           "repeats": repeats, "memory_method": peak_memory_method()}
    out["naive"] = {"seconds": round(naive_s, 3), "audio_s_per_s": round(audio_s / naive_s, 1),
                    "peak_rss_mb": round(max(r.peak_mb for r in naive_runs), 1),
                    "blas_threads": naive_blas_threads or "default", "cpu_seconds": round(naive_cpu, 3),
                    "startup_s": round(naive_startup_s, 3), "cold_seconds": round(naive_startup_s + naive_s, 3),
                    "runs_s": [round(r.seconds, 3) for r in naive_runs]}
    store_cold = cluster_s + store_s
    out["store"] = {
        "workers": n_workers, "seconds": round(store_s, 3), "audio_s_per_s": round(audio_s / store_s, 1),
        "computed": r1.computed, "failed": len(r1.failed), "peak_rss_mb": round(max(r.peak_mb for r in store_runs), 1),
        "cluster_start_s": round(cluster_s, 3), "cold_seconds": round(store_cold, 3),
        "cold_audio_s_per_s": round(audio_s / store_cold, 1), "cpu_seconds": round(store_cpu, 3),
        "runs_s": [round(r.seconds, 3) for r in store_runs],
    }
    # CPU time does not depend on what else the machine runs: the fair figure on a shared machine.
    out["cpu"] = {"naive_audio_s_per_cpu_s": round(audio_s / naive_cpu, 1),
                  "store_audio_s_per_cpu_s": round(audio_s / store_cpu, 1),
                  "ratio": round(naive_cpu / store_cpu, 2),
                  "store_projected_audio_s_per_s_on_idle_workers": round(audio_s * n_workers / store_cpu, 1)}
    # Warm: start-up excluded on both sides (librosa import + first file; cluster start + worker imports).
    out["ratio"] = round(naive_s / store_s, 2)
    pass_ratios = [n.seconds / s.seconds for n, s in zip(naive_runs, store_runs, strict=True)]
    out["ratio_range"] = [round(min(pass_ratios), 2), round(max(pass_ratios), 2)]
    # Cold: start-up included on both sides, as a one-off script run would see it.
    out["ratio_cold"] = round((naive_startup_s + naive_s) / store_cold, 2)
    out["noop_rerun"] = {"seconds": round(noop_run.seconds, 3), "computed": noop.computed, "reused": noop.reused}
    if stages and spec.kind in ("logmel", "spectrogram"):
        from benchmarks.stages import stage_profile

        out["stages"] = stage_profile(frame, spec, scratch, workers=n_workers)
    if scale > 1:
        scaled = pd.concat([frame, distinct_copies(frame, scratch / "copies", scale - 1)], ignore_index=True)
        warm_page_cache(scaled["path"].tolist())
        # Same task size as the 1x passes, so that only the corpus size differs between the two.
        batch_1x = task_size(len(frame), DEFAULT_BATCH_SIZE, n_workers)
        rn, run_n, _, _ = store_pass(scaled, spec, scratch / "store-scaled", workers, batch_size=batch_1x)
        out["scale"] = {"factor": scale, "1x_items": r1.computed, "1x_peak_rss_mb": out["store"]["peak_rss_mb"],
                        "scaled_items": rn.computed, "scaled_peak_rss_mb": round(run_n.peak_mb, 1),
                        "scaled_seconds": round(run_n.seconds, 3),
                        "scaled_audio_s_per_s": round(scale * audio_s / run_n.seconds, 1)}
    return out
