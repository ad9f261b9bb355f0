"""CLI commands: the ``ser bench`` group (``featurize``, ``extract``, ``train``)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Annotated, Any

import typer

from ser_pipeline.cli.common import JsonOption, RootOption, emit, workspace

bench_app = typer.Typer(help="Benchmarks users can run (not timed tests).", no_args_is_help=True)


def _bench_text(r: dict[str, Any]) -> str:
    n, s = r["naive"], r["store"]
    lines = [
        f"corpus {r['corpus']}: {r['files']} files, {r['audio_seconds']:.1f} audio s, preset {r['preset']}; "
        f"medians of {r['repeats']} alternating passes",
        f"naive librosa loop : {n['seconds']:.2f} s  {n['audio_s_per_s']:.1f} audio s/s  peak {n['peak_rss_mb']:.0f} MB"
        f"  (start-up {n['startup_s']:.2f} s: librosa import + first file)",
        f"store featurize    : {s['seconds']:.2f} s  {s['audio_s_per_s']:.1f} audio s/s  peak {s['peak_rss_mb']:.0f} MB"
        f"  ({s['workers']} worker process(es); start-up {s['cluster_start_s']:.2f} s: fork server or cluster, with "
        f"their imports; 0 in this process)",
        f"ratio store/naive  : {r['ratio']:.2f}x warm (start-up excluded on both sides; passes "
        f"{r['ratio_range'][0]:.2f}-{r['ratio_range'][1]:.2f}x); {r['ratio_cold']:.2f}x cold (included on both sides)",
        f"CPU time           : naive {n['cpu_seconds']:.2f} s, store {s['cpu_seconds']:.2f} s -> "
        f"{r['cpu']['ratio']:.2f}x less CPU per audio second (load-independent)",
        f"no-op re-run       : {r['noop_rerun']['seconds']:.3f} s (computed {r['noop_rerun']['computed']})",
    ]
    if "stages" in r:
        st = r["stages"]
        parts = ", ".join(f"{k} {v:.3f}" for k, v in st["ms_per_audio_s"].items())
        lines.append(f"per step, 1 thread: {st['total_ms_per_audio_s']:.3f} ms per audio s = {parts}")
    if "scale" in r:
        c = r["scale"]
        lines.append(f"peak memory        : 1x {c['1x_peak_rss_mb']:.0f} MB ({c['1x_items']} items), {c['factor']}x "
                     f"{c['scaled_peak_rss_mb']:.0f} MB ({c['scaled_items']} items, {c['scaled_audio_s_per_s']:.1f} audio s/s)")
    return "\n".join(lines)


@bench_app.command("featurize")
def featurize(
    name: Annotated[str, typer.Argument(help="Manifest name (default: demo).")] = "demo",
    path: Annotated[Path | None, typer.Option("--path", help="Benchmark the audio files under DIR instead.")] = None,
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Dask workers (default: CPU count).")] = None,
    preset: Annotated[str, typer.Option("--preset")] = "logmel64",
    sets: Annotated[list[str] | None, typer.Option("--set", help="Override a FeatureSpec field of the store side: "
                                                   "resample_quality=HQ, n_mels=48 ...")] = None,
    scale: Annotated[int, typer.Option("--scale", min=1, help="Corpus multiple for the memory run (1 = skip).")] = 4,
    no_scale: Annotated[bool, typer.Option("--no-scale", help="Skip the scaled-corpus memory run (= --scale 1).")] = False,
    naive_blas_threads: Annotated[
        int | None, typer.Option("--naive-blas-threads", min=1, help="Cap BLAS threads in the naive loop.")
    ] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Alternating naive/store passes; medians are reported.")] = 3,
    scratch: Annotated[Path | None, typer.Option("--scratch", help="Scratch folder (default: a temp dir, removed).")] = None,
    stages: Annotated[bool, typer.Option("--stages/--no-stages", help="Time each step (read ... write) on one thread.")] = True,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Store featurize vs the naive librosa loop: audio s per wall s, ratio, peak memory, no-op re-run."""
    # benchmarks/ sits outside the library's import graph: imported only when a benchmark runs
    from benchmarks.featurize import bench_featurize, frame_from_dir
    from ser_pipeline.manifest import read_manifest  # pandas: when the command runs

    overrides: dict[str, Any] = {}
    if sets:
        from ser_pipeline.cli.train_cmds import apply_sets  # yaml: only when --set is given

        overrides = apply_sets({}, sets)
    frame = frame_from_dir(path) if path is not None else read_manifest(name, workspace(root))
    folder = Path(tempfile.mkdtemp(prefix="ser-bench-", dir=scratch))
    try:
        result = bench_featurize(frame, folder, workers=workers, preset=preset, overrides=overrides,
                                 scale=1 if no_scale else scale,
                                 naive_blas_threads=naive_blas_threads, repeats=repeats, stages=stages)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    result["corpus"] = str(path) if path is not None else name
    emit(result, as_json, _bench_text)


@bench_app.command("process")
def process(
    name: Annotated[str, typer.Argument(help="Manifest name (default: demo).")] = "demo",
    workers: Annotated[int | None, typer.Option("--workers", min=1, help="Workers of `ser featurize` "
                                                "(default: CPU count).")] = None,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed runs of each side, alternating.")] = 3,
    warmup: Annotated[int, typer.Option("--warmup", min=0, help="Untimed runs of each side first.")] = 1,
    scratch: Annotated[Path | None, typer.Option("--scratch", help="Scratch folder (default: a temp dir, removed).")] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Whole processes, as a user waits: `ser featurize` into an empty scratch store vs a plain
    librosa script over the same files; wall and CPU seconds, ratio. The user's store is not written."""
    import os

    from benchmarks.process import bench_process, process_text  # outside the library's import graph
    from ser_pipeline.manifest import read_manifest  # pandas: when the command runs

    ws = workspace(root)
    frame = read_manifest(name, ws)
    folder = Path(tempfile.mkdtemp(prefix="ser-bench-process-", dir=scratch))
    try:
        result = bench_process(ws, name, frame["path"].tolist(), float(frame["duration_s"].sum()), folder,
                               workers=workers or os.cpu_count() or 1, runs=runs, warmup=warmup)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    emit(result, as_json, process_text)


def register(app: typer.Typer) -> None:
    """Add the ``bench`` group to the ser app."""
    app.add_typer(bench_app, name="bench")


def _extract_text(r: dict[str, Any]) -> str:
    lines = [f"{r['files']} files, {r['audio_seconds']:.1f} audio s, preset {r['preset']}; medians of {r['repeats']} passes"]
    if "numpy" in r:
        lines += [f"numpy path        : {r['numpy']['seconds']:.3f} s  {r['numpy']['audio_s_per_s']:.1f} audio s/s",
                  f"torch path ({r['torch_device']:<4}) : {r['torch']['seconds']:.3f} s  {r['torch']['audio_s_per_s']:.1f} "
                  f"audio s/s (batches of {r['batch']})",
                  f"ratio torch/numpy : {r['ratio_torch_over_numpy']:.2f}x"]
    if "ssl" in r:
        s = r["ssl"]
        lines.append(f"ssl {s['model_class']} ({s['layers']} layers x {s['hidden']}) on {s['device']}: "
                     f"{s['seconds']:.2f} s, {s['audio_s_per_s']:.2f} audio s/s")
    return "\n".join(lines)


@bench_app.command("extract")
def extract(
    name: Annotated[str, typer.Argument(help="Manifest name (default: demo).")] = "demo",
    preset: Annotated[str, typer.Option("--preset")] = "logmel64",
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many recordings.")] = 400,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Alternating passes; medians are reported.")] = 3,
    batch: Annotated[int, typer.Option("--batch", min=1, help="Waves per torch batch.")] = 64,
    device: Annotated[str | None, typer.Option("--device", help="torch device (default: cuda when present).")] = None,
    checkpoint: Annotated[str | None, typer.Option("--ssl-checkpoint", help="Also time SSL extraction with this "
                                                   "local checkpoint folder.")] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """Feature computation alone: the numpy path vs the batched torch path (CUDA when present), and
    optionally an SSL checkpoint, on the same decoded waves."""
    from benchmarks.extract import bench_backends, bench_ssl  # outside the library's import graph
    from feature_store.recordings import load_checked
    from ser_pipeline.features import feature_spec
    from ser_pipeline.manifest import read_manifest  # pandas: when the command runs

    frame = read_manifest(name, workspace(root)).head(limit)
    spec = feature_spec(preset)
    waves = [load_checked(p, s, spec.sample_rate, quality=spec.resample_quality)
             for p, s in zip(frame.path, frame.sha256, strict=True)]
    report: dict[str, Any] = {"manifest": name, "preset": preset, "files": len(waves),
                              "audio_seconds": round(sum(w.size for w in waves) / spec.sample_rate, 2), "repeats": repeats}
    report.update(bench_backends(waves, spec, repeats=repeats, batch=batch, torch_device=device))
    if checkpoint:
        report["ssl"] = bench_ssl(waves, checkpoint, device=device)
    emit(report, as_json, _extract_text)


@bench_app.command("train")
def train(
    model: Annotated[str, typer.Argument(help="Registered neural model (see `ser models`).")],
    corpus: Annotated[str, typer.Argument(help="Ingested and featurized corpus (see `ser manifests`).")],
    preset: Annotated[str, typer.Option("--preset", help="Recipe preset as in `ser train` (default, paper, cpu).")] = "cpu",
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Epochs per timed pass.")] = 1,
    steps: Annotated[int | None, typer.Option("--steps", min=1, help="Steps per epoch: keep steps x batch size "
                                              "training utterances (default: the whole fold).")] = None,
    repeats: Annotated[int, typer.Option("--repeats", min=1, help="Alternating plain/project passes; medians are "
                                         "reported.")] = 3,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="cpu, cuda or auto.")] = "cpu",
    threads: Annotated[int | None, typer.Option("--threads", min=1, help="torch threads (default: torch's).")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Also write the JSON document to this file.")] = None,
    sets: Annotated[list[str] | None, typer.Option("--set", help="Override a config field as in `ser train`: "
                                                   "feature_overrides.checkpoint=DIR, hparams.width=16 ...")] = None,
    root: RootOption = None,
    as_json: JsonOption = False,
) -> None:
    """The training step of `ser train` (loop, views, SpecAugment) vs a plain PyTorch loop over preloaded
    tensors: same network, batch size and optimiser; utterances/s, data share of step time, ratio."""
    import json

    from benchmarks.train import bench_text, bench_train, prepare_bench  # outside the library's import graph
    from ser_pipeline.cli.train_cmds import apply_sets
    from ser_pipeline.experiments.config import ExperimentConfig
    from ser_pipeline.training.config import check_device

    check_device(device)
    config = ExperimentConfig.from_dict(apply_sets({"model": model, "corpus": corpus, "preset": preset, "seed": seed},
                                                   sets))
    setup = prepare_bench(config, workspace(root), device=device, steps=steps)
    result = bench_train(setup, epochs=epochs, repeats=repeats, threads=threads)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    emit(result, as_json, bench_text)
