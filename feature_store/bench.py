"""``ser bench featurize``: the store's featurize against the obvious librosa loop, in one run.

Measured on the same files, page cache warmed first (both read from memory):

- naive: for each file ``librosa.load(sr=16000)``, 64-band log-Mel (25 ms Hamming, 10 ms hop,
  512-point FFT), delta and delta-delta (``librosa.feature.delta``), one ``.npy`` per file; in this
  process, after one warm-up file (librosa's lazy imports and JIT are not counted);
- store: :func:`materialise` into a fresh store on a Dask LocalCluster (cluster start-up is timed
  apart and also reported end to end);
- no-op re-run of the store (nothing to compute) in this process;
- peak memory (RSS of this process and its children, sampled) at 1x and 4x the corpus, 4x being the
  corpus plus three copies whose bytes differ by one sample bit (distinct items).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import soundfile as sf

from feature_store.materialise import dask_client, materialise
from feature_store.store import FeatureStore
from ser_pipeline.audio import file_sha256
from ser_pipeline.errors import ConfigError
from ser_pipeline.features import feature_spec

AUDIO_SUFFIXES = (".wav", ".flac", ".ogg", ".aiff", ".aif")


class PeakRSS:
    """Context manager sampling the resident memory of this process and all its children (MB)."""

    def __init__(self, interval_s: float = 0.02) -> None:
        self.interval_s = interval_s
        self.peak_mb = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> float:
        import psutil

        proc = psutil.Process()
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            try:
                total += child.memory_info().rss
            except psutil.Error:
                pass
        return total / 1e6

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_mb = max(self.peak_mb, self._sample())
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakRSS:
        self.peak_mb = self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak_mb = max(self.peak_mb, self._sample())


def tree_cpu_seconds() -> float:
    """User + system CPU seconds used so far by this process and its live children."""
    import psutil

    proc = psutil.Process()
    total = sum(proc.cpu_times()[:2])
    for child in proc.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.Error:
            pass
    return total


def frame_from_dir(folder: Path) -> pd.DataFrame:
    """A minimal manifest (utterance_id, path, sha256, duration_s) of the audio files under ``folder``."""
    files = sorted(p for p in Path(folder).rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    if not files:
        raise ConfigError(f"--path {folder}: no audio files ({', '.join(AUDIO_SUFFIXES)})")
    rows = [{"utterance_id": str(p.relative_to(folder)), "path": str(p), "sha256": file_sha256(p),
             "duration_s": sf.info(str(p)).duration} for p in files]
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


def naive_loop(paths: list[str], out_dir: Path, *, blas_threads: int | None = None) -> float:
    """Run the baseline over ``paths`` (after one untimed warm-up); returns wall seconds.

    ``blas_threads`` caps BLAS threads (None: the libraries' default, as a user's loop would run).
    """
    from threadpoolctl import threadpool_limits

    out_dir.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(limits=blas_threads):
        naive_loop_one(paths[0], out_dir / "warmup.npy")
        start = time.perf_counter()
        for i, path in enumerate(paths):
            naive_loop_one(path, out_dir / f"{i:06d}.npy")
        return time.perf_counter() - start


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


def bench_featurize(
    frame: pd.DataFrame, scratch: Path, *, workers: int | None = None, preset: str = "logmel64", scale: bool = True,
    naive_blas_threads: int | None = None,
) -> dict[str, Any]:
    """Run the whole benchmark (see module docstring); returns the figures as a dict."""
    if frame.empty:
        raise ConfigError("bench featurize: the manifest has no rows")
    frame = frame[["utterance_id", "path", "sha256", "duration_s"]].reset_index(drop=True)
    paths = frame["path"].tolist()
    audio_s = float(frame["duration_s"].sum())
    spec = feature_spec(preset)
    warm_page_cache(paths)
    with PeakRSS() as naive_mem:
        cpu0 = tree_cpu_seconds()
        naive_s = naive_loop(paths, scratch / "naive", blas_threads=naive_blas_threads)
        naive_cpu = tree_cpu_seconds() - cpu0
    out: dict[str, Any] = {"files": len(frame), "audio_seconds": round(audio_s, 2), "preset": preset}
    out["naive"] = {"seconds": round(naive_s, 3), "audio_s_per_s": round(audio_s / naive_s, 1),
                    "peak_rss_mb": round(naive_mem.peak_mb, 1), "blas_threads": naive_blas_threads or "default",
                    "cpu_seconds": round(naive_cpu, 3)}
    start = time.perf_counter()
    with dask_client(workers) as client:
        cluster_s = time.perf_counter() - start
        n_workers = len(client.scheduler_info()["workers"])
        store = FeatureStore(scratch / "store-1x")
        with PeakRSS() as mem1:
            cpu0 = tree_cpu_seconds()
            r1 = materialise(frame, spec, None, store, client=client)
            store_cpu = tree_cpu_seconds() - cpu0
        t0 = time.perf_counter()
        noop = materialise(frame, spec, None, store)
        noop_s = time.perf_counter() - t0
        if scale:
            frame4 = pd.concat([frame, distinct_copies(frame, scratch / "copies", 3)], ignore_index=True)
            warm_page_cache(frame4["path"].tolist())
            with PeakRSS() as mem4:
                r4 = materialise(frame4, spec, None, FeatureStore(scratch / "store-4x"), client=client)
    end_to_end = cluster_s + r1.seconds
    out["store"] = {
        "workers": n_workers, "seconds": round(r1.seconds, 3), "audio_s_per_s": round(audio_s / r1.seconds, 1),
        "computed": r1.computed, "failed": len(r1.failed), "peak_rss_mb": round(mem1.peak_mb, 1),
        "cluster_start_s": round(cluster_s, 3), "end_to_end_s": round(end_to_end, 3),
        "end_to_end_audio_s_per_s": round(audio_s / end_to_end, 1), "cpu_seconds": round(store_cpu, 3),
    }
    # CPU time does not depend on what else the machine runs: the fair figure on a shared machine.
    out["cpu"] = {"naive_audio_s_per_cpu_s": round(audio_s / naive_cpu, 1),
                  "store_audio_s_per_cpu_s": round(audio_s / store_cpu, 1),
                  "ratio": round(naive_cpu / store_cpu, 2),
                  "store_projected_audio_s_per_s_on_idle_workers": round(audio_s * n_workers / store_cpu, 1)}
    out["ratio"] = round(naive_s / r1.seconds, 2)
    out["ratio_end_to_end"] = round(naive_s / end_to_end, 2)
    out["noop_rerun"] = {"seconds": round(noop_s, 3), "computed": noop.computed, "reused": noop.reused}
    if scale:
        out["scale"] = {"1x_items": r1.computed, "1x_peak_rss_mb": round(mem1.peak_mb, 1),
                        "4x_items": r4.computed, "4x_peak_rss_mb": round(mem4.peak_mb, 1),
                        "4x_seconds": round(r4.seconds, 3), "4x_audio_s_per_s": round(4 * audio_s / r4.seconds, 1)}
    return out
