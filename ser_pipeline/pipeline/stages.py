"""The pipeline stages as plain functions (no Prefect import): ``flows/`` only wires these.

Each stage takes paths, names and digests and returns a small JSON-ready dict (never arrays or
models), and writes its stage record (:mod:`ser_pipeline.pipeline.records`), the one "already
done" check. Keys:

- ingest:    corpus entry (adapter, path, options, labels) + a fingerprint of the corpus folder
             (relative path, size, mtime of every file), so new files in the folder re-ingest;
- featurize: manifest digest + feature spec digest + augmentation digest;
- train:     manifest digest + experiment digest (which holds the feature digest; no device);
- track:     train key + tracking URI + registration flag.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from feature_store.store import FeatureStore
from ser_pipeline.augment import parse_augment
from ser_pipeline.config import stable_digest
from ser_pipeline.corpora import ingest
from ser_pipeline.corpora.demo import generate_demo_corpus
from ser_pipeline.errors import ConfigError, SerError, TrainingError
from ser_pipeline.experiments.config import experiment_digest
from ser_pipeline.experiments.features import featurize
from ser_pipeline.experiments.record import ExperimentRecord
from ser_pipeline.experiments.runner import run_experiment
from ser_pipeline.features import FeatureSpec, feature_label
from ser_pipeline.manifest import read_manifest, read_summary
from ser_pipeline.pipeline.config import DEMO_ADAPTER, CorpusEntry, PlannedExperiment, plan_experiment
from ser_pipeline.pipeline.records import cached, done_record, read_record, write_record
from ser_pipeline.tracking.names import run_name
from ser_pipeline.workspace import Workspace

STAGE_CODE_VERSION = "2"  # 2: feature and experiment digests without preset name and device


# --------------------------------------------------------------------------------------------
# ingest
# --------------------------------------------------------------------------------------------
def folder_fingerprint(folder: str | os.PathLike[str]) -> str:
    """Digest of (relative path, size, mtime_ns) of every file under ``folder``; fast (stat only).

    A file (a corpus CSV) stands for the folder it lives in, where its recordings are.
    """
    folder = Path(folder)
    if not folder.exists():
        raise ConfigError(f"corpus path {folder}: not found")
    if folder.is_file():
        folder = folder.parent
    entries = []
    for dirpath, _dirs, files in os.walk(folder):
        for name in files:
            full = Path(dirpath) / name
            st = full.stat()
            entries.append((str(full.relative_to(folder)), st.st_size, st.st_mtime_ns))
    return stable_digest(sorted(entries))


def ingest_key(entry: dict[str, Any]) -> str:
    """Input key of the ingest stage for one corpus entry (demo: its seed; else its folder's fingerprint)."""
    spec = CorpusEntry.from_dict(entry)
    fingerprint = "demo" if spec.adapter == DEMO_ADAPTER else folder_fingerprint(spec.path or "")
    return stable_digest({"entry": spec.to_dict(), "files": fingerprint}, version=STAGE_CODE_VERSION)


def ingest_stage(entry: dict[str, Any], root: str, *, key: str, force: bool = False) -> dict[str, Any]:
    """Ingest one corpus (generating the demo corpus first when ``adapter`` is ``demo``).

    Returns ``{"stage", "corpus", "status", "key", "manifest_digest", "manifest_path", "utterances"}``.
    """
    done = None if force else done_record(root, "ingest", key)
    if done is not None:
        return cached(done)
    spec = CorpusEntry.from_dict(entry)
    ws = Workspace.resolve(root)
    start = time.perf_counter()
    if spec.adapter == DEMO_ADAPTER:
        source = generate_demo_corpus(Path(spec.path) if spec.path else ws.demo, seed=spec.seed, **spec.options)
        adapter, options = "csv", {"corpus": spec.name}
    else:
        source, adapter, options = Path(spec.path or ""), spec.adapter, dict(spec.options)
    summary = ingest(adapter, source, spec.name, ws, keep=list(spec.keep) if spec.keep else None,
                     merge=dict(spec.merge) if spec.merge else None, **options)
    record = {
        "stage": "ingest", "corpus": spec.name, "key": key, "status": "computed",
        "manifest_digest": summary["digest"], "manifest_path": str(ws.manifest_path(spec.name)),
        "utterances": summary["utterances"], "rejected": summary["rejected"],
        "outputs": [str(ws.manifest_path(spec.name))],
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_record(root, "ingest", key, record)
    return record


def manifest_state(corpus: str, root: str) -> dict[str, Any]:
    """``{"corpus", "manifest_digest", "manifest_path"}`` of an ingested corpus (for ``--from featurize``)."""
    ws = Workspace.resolve(root)
    summary = read_summary(corpus, ws)
    return {"stage": "ingest", "corpus": corpus, "status": "skipped", "manifest_digest": summary["digest"],
            "manifest_path": str(ws.manifest_path(corpus))}


# --------------------------------------------------------------------------------------------
# featurize
# --------------------------------------------------------------------------------------------
def feature_settings(planned: list[PlannedExperiment], corpus: str) -> list[dict[str, Any]]:
    """The distinct feature sets (``{"spec": FeatureSpec dict, "augment", "label", "features", "augment_digest"}``)
    the experiments of ``corpus`` read, in first-use order (trainers that read no features need none)."""
    out: list[dict[str, Any]] = []
    for p in planned:
        spec = p.resolved.features
        if p.corpus != corpus or spec is None:
            continue
        augment = p.resolved.augment
        setting = {"spec": spec.to_dict(), "augment": augment, "label": feature_label(spec),
                   "features": spec.digest(), "augment_digest": parse_augment(augment).digest()}
        if all((s["features"], s["augment_digest"]) != (setting["features"], setting["augment_digest"]) for s in out):
            out.append(setting)
    return out


def featurize_key(manifest_digest: str, setting: dict[str, Any]) -> str:
    """Key of one (corpus, feature set): manifest + feature spec + augmentation digests."""
    return stable_digest({"manifest": manifest_digest, "features": setting["features"],
                          "augment": setting["augment_digest"]}, version=STAGE_CODE_VERSION)


def featurize_stage(corpus: str, root: str, *, setting: dict[str, Any], key: str, manifest_digest: str,
                    workers: int = 1, dask_address: str | None = None, force: bool = False,
                    progress: bool = True) -> dict[str, Any]:
    """Materialise one corpus's feature set (the Dask rule of :func:`experiments.features.featurize`).

    Returns ``{"stage", "corpus", "status", "key", "label", "feature_digest", "computed", "reused", "failed"}``.
    """
    done = None if force else done_record(root, "featurize", key)
    if done is not None:
        return cached(done)
    ws = Workspace.resolve(root)
    spec = FeatureSpec.from_dict(setting["spec"])
    aug = parse_augment(setting["augment"])
    manifest = read_manifest(corpus, ws)
    start = time.perf_counter()
    report, executor = featurize(manifest, spec, aug, FeatureStore(ws.features), manifest_name=corpus,
                                 manifest_digest=manifest_digest, workers=workers, dask_address=dask_address,
                                 force=force, progress=progress)
    total = len(report.failed) + report.computed + report.reused
    if total and len(report.failed) == total:
        raise TrainingError(f"featurize {corpus}: every item failed ({total}); see the store report")
    record = {
        "stage": "featurize", "corpus": corpus, "key": key, "status": "computed", "label": feature_label(spec),
        "feature_digest": spec.digest(), "augment_digest": aug.digest(), "manifest_digest": manifest_digest,
        "computed": report.computed, "reused": report.reused, "failed": len(report.failed), "executor": executor,
        "outputs": [report.set_path], "seconds": round(time.perf_counter() - start, 3),
    }
    write_record(root, "featurize", key, record)
    return record


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------
def train_key(manifest_digest: str, planned: PlannedExperiment) -> str:
    """Key of one experiment: manifest + experiment digest (config with the feature spec digest)."""
    return stable_digest({"manifest": manifest_digest,
                          "experiment": experiment_digest(planned.config, planned.resolved)},
                         version=STAGE_CODE_VERSION)


def train_stage(exp: dict[str, Any], root: str, *, key: str, manifest_digest: str,
                device: str = "auto", force: bool = False,
                on_epoch_end: Callable[[str, int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Run one experiment (all folds of one model configuration and seed of :func:`experiment_dicts`)
    on ``device``; the result is the same on any device and is reused across devices.

    Returns ``{"stage", "label", "model", "corpus", "status", "key", "experiment_dir", "config_digest",
    "ua", "ua_std", "wa", "macro_f1", "pooled_ua", "folds", "protocol", "speaker_dependent"}``.
    """
    done = None if force else done_record(root, "train", key)
    if done is not None:
        return cached(done)
    planned = plan_experiment(exp)
    ws = Workspace.resolve(root)
    start = time.perf_counter()
    record = run_experiment(planned.config, ws, device=device, force=force,
                            callbacks=[on_epoch_end] if on_epoch_end else None)
    out = {
        "stage": "train", "label": planned.label, "run_name": run_name(record.config, record.digests.config),
        "model": record.model, "corpus": record.corpus, "seed": record.seed,
        "key": key, "status": "computed", "experiment_dir": str(record.folder), "config_digest": record.digests.config,
        "manifest_digest": manifest_digest, "features_digest": record.digests.features,
        "augment_digest": record.digests.augment, "features": record.feature_label, "device": record.device,
        **record.summary(), "outputs": [str(record.folder / "record.json")],
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_record(root, "train", key, out)
    return out


# --------------------------------------------------------------------------------------------
# track
# --------------------------------------------------------------------------------------------
def track_key(train_key_: str, uri: str, register: bool) -> str:
    return stable_digest({"train": train_key_, "uri": uri, "register": register}, version=STAGE_CODE_VERSION)


def track_stage(trained: dict[str, Any], root: str, *, key: str, experiment: str, uri: str,
                register: bool = True, force: bool = False) -> dict[str, Any]:
    """Log one trained experiment's record to MLflow (see :mod:`ser_pipeline.tracking.runs`)."""
    record = read_record(root, "track", key)
    if not force and record is not None and store_present(uri):
        return cached(record)
    from ser_pipeline.tracking.runs import log_experiment  # mlflow: imported only when something is logged

    ws = Workspace.resolve(root)
    start = time.perf_counter()
    from ser_pipeline.pipeline.explore_stage import exploration_folder

    try:
        dataset_dir = exploration_folder(trained["corpus"], ws)
    except SerError:  # e.g. a cross-corpus experiment named after no single manifest: no plots
        dataset_dir = None
    out = log_experiment(ExperimentRecord.read(trained["experiment_dir"]), experiment=experiment, uri=uri,
                         manifest_path=ws.manifest_path(trained["corpus"]), register=register, force=force,
                         label=trained["label"], dataset_dir=dataset_dir)
    record = {"stage": "track", "label": trained["label"], "key": key, **out,
              "status": "computed" if out["status"] == "logged" else "cached",
              "seconds": round(time.perf_counter() - start, 3)}
    write_record(root, "track", key, record)
    return record


def store_present(uri: str) -> bool:
    """A local sqlite store must still exist for a track record to be trusted; servers are trusted."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return True


def failure(label: str, exc: BaseException) -> dict[str, Any]:
    """The result row of a model whose training failed."""
    kind = "error" if isinstance(exc, SerError) else type(exc).__name__
    return {"stage": "train", "label": label, "status": "failed", "error": f"{kind}: {exc}"}
