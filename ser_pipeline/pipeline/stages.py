"""The pipeline stages as plain functions (no Prefect import): the flows only wire these.

Each stage takes paths, names and digests and returns a small JSON-ready dict (never arrays or
models). Each has an input key built from content digests and a *stage record* on disk,
``<root>/runs/<stage>/<key>.json``, written atomically after the stage's outputs are committed.
A stage whose record exists and whose outputs are still present is reported ``cached`` without
doing any work; this is the fast "already done" check used beside Prefect's cache.

Keys:

- ingest:    corpus entry (adapter, path, options, labels) + a fingerprint of the corpus folder
             (relative path, size, mtime of every file), so new files in the folder re-ingest;
- featurize: manifest digest + feature spec digest + augmentation digest;
- train:     experiment config digest + manifest digest + feature/augment digests;
- track:     train key + tracking URI + registration flag.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ser_pipeline.config import stable_digest
from ser_pipeline.errors import ConfigError, SerError, TrainingError
from ser_pipeline.pipeline_config import DEMO_ADAPTER, CorpusEntry
from ser_pipeline.workspace import Workspace

STAGE_CODE_VERSION = "1"


# --------------------------------------------------------------------------------------------
# stage records
# --------------------------------------------------------------------------------------------
def record_path(root: str | os.PathLike[str], stage: str, key: str) -> Path:
    return Path(root) / "runs" / stage / f"{key}.json"


def read_record(root: str | os.PathLike[str], stage: str, key: str) -> dict[str, Any] | None:
    """The stage record for ``key``, or None when absent or unreadable (a torn write never counts)."""
    path = record_path(root, stage, key)
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def write_record(root: str | os.PathLike[str], stage: str, key: str, record: dict[str, Any]) -> Path:
    """Write the record atomically (temp file, fsync, rename)."""
    path = record_path(root, stage, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".tmp{os.getpid()}")
    with open(tmp, "w") as fh:
        fh.write(json.dumps(record, indent=2, sort_keys=True, default=str) + "\n")
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def is_done(root: str | os.PathLike[str], stage: str, key: str) -> bool:
    """True when the stage record exists and the outputs it names are still on disk."""
    record = read_record(root, stage, key)
    return record is not None and all(Path(p).exists() for p in record.get("outputs", []))


def _cached(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "status": "cached", "seconds": 0.0}


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
    if not force and is_done(root, "ingest", key):
        return _cached(read_record(root, "ingest", key) or {})
    from ser_pipeline.corpora import ingest

    spec = CorpusEntry.from_dict(entry)
    ws = Workspace.resolve(root)
    start = time.perf_counter()
    if spec.adapter == DEMO_ADAPTER:
        from ser_pipeline.corpora.demo import generate_demo_corpus

        source = generate_demo_corpus(Path(spec.path) if spec.path else ws.demo, seed=spec.seed, **spec.options)
        adapter, options = "csv", {"corpus": spec.name}
    else:
        source, adapter, options = Path(spec.path or ""), spec.adapter, dict(spec.options)
    summary = ingest(adapter, source, spec.name, ws, keep=list(spec.keep) if spec.keep else None,
                     merge=dict(spec.merge) if spec.merge else None, **options)
    record = {
        "stage": "ingest", "corpus": spec.name, "key": key, "status": "computed",
        "manifest_digest": summary["digest"], "manifest_path": str(ws.manifest_path(spec.name)),
        "utterances": summary.get("utterances", summary.get("n_utterances")),
        "rejected": summary.get("rejected"),
        "outputs": [str(ws.manifest_path(spec.name))],
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_record(root, "ingest", key, record)
    return record


def manifest_state(corpus: str, root: str) -> dict[str, Any]:
    """``{"corpus", "manifest_digest", "manifest_path"}`` of an ingested corpus (for ``--from featurize``)."""
    from ser_pipeline.manifest import read_summary

    ws = Workspace.resolve(root)
    summary = read_summary(corpus, ws)
    return {"stage": "ingest", "corpus": corpus, "status": "skipped", "manifest_digest": summary["digest"],
            "manifest_path": str(ws.manifest_path(corpus))}


# --------------------------------------------------------------------------------------------
# featurize
# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# digests without heavy imports: a memo keyed by inputs + the code's fingerprint
# --------------------------------------------------------------------------------------------
PACKAGES = ("ser_pipeline", "feature_store")
_MEMO: dict[str, dict[str, Any]] = {}


@functools.lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """sha256 of the source of ``ser_pipeline`` and ``feature_store`` (the code version of the memo)."""
    base = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((base / package).rglob("*.py")):
            digest.update(str(path.relative_to(base)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:16]


def _memo_path(root: str | os.PathLike[str]) -> Path:
    return Path(root) / "runs" / "digest_memo.json"


def memoised(root: str | os.PathLike[str], inputs: Any, compute: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """``compute()`` (which imports the feature/model/engine code) memoised on disk by ``inputs`` and
    :func:`code_fingerprint`, so a fully cached run never imports torch, scipy or mlflow. Any change to
    the package source invalidates the memo (the digests themselves are always the real ones)."""
    key = stable_digest({"inputs": inputs, "code": code_fingerprint()})
    path = _memo_path(root)
    table = _MEMO.setdefault(str(path), _load_memo(path))
    if key not in table:
        table[key] = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(table, sort_keys=True))
        os.replace(tmp, path)
    return dict(table[key])


def _load_memo(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def experiment_digests(exp: dict[str, Any], root: str) -> dict[str, Any]:
    """``{"preset", "overrides", "features", "augment", "config"}`` of one experiment dict: its resolved
    feature setting and the digests of its feature spec, augmentation and ExperimentConfig."""

    def compute() -> dict[str, Any]:
        setting = resolve_features(exp)
        return {**setting, **feature_digests(setting, exp.get("augment") or ""),
                "config": to_experiment_config(exp).digest()}

    return memoised(root, {k: v for k, v in exp.items() if k != "_label"}, compute)


def resolve_features(exp: dict[str, Any]) -> dict[str, Any]:
    """``{"preset", "overrides"}`` of one experiment dict; preset None means the model's registered one."""
    preset = exp.get("features")
    if not preset:
        from ser_pipeline.models import get_model

        preset = get_model(exp["model"]).feature_preset
    return {"preset": preset, "overrides": dict(exp.get("feature_overrides") or {})}


def feature_settings(exps: list[dict[str, Any]], root: str) -> list[dict[str, Any]]:
    """The distinct feature settings (``{"preset", "overrides", "features", "augment"}`` digests included)
    a list of experiments needs, in first-use order."""
    out: list[dict[str, Any]] = []
    for exp in exps:
        d = experiment_digests(exp, root)
        setting = {k: d[k] for k in ("preset", "overrides", "features", "augment")}
        if setting not in out:
            out.append(setting)
    return out


def feature_digests(features: dict[str, Any], augment: str) -> dict[str, str]:
    """``{"features": FeatureSpec digest, "augment": AugmentSpec digest}`` of a config's settings."""
    from ser_pipeline.augment import parse_augment
    from ser_pipeline.features import feature_spec

    spec = feature_spec(features["preset"], **dict(features.get("overrides") or {}))
    return {"features": spec.digest(), "augment": parse_augment(augment or "").digest()}


def featurize_key(manifest_digest: str, digests: dict[str, Any]) -> str:
    """Key of one (corpus, feature setting): manifest + feature spec + augmentation digests."""
    return stable_digest({"manifest": manifest_digest, "features": digests["features"], "augment": digests["augment"]},
                         version=STAGE_CODE_VERSION)


def featurize_stage(corpus: str, root: str, *, features: dict[str, Any], augment: str, key: str,
                    manifest_digest: str, workers: int = 1, dask_address: str | None = None,
                    force: bool = False, progress: bool = True) -> dict[str, Any]:
    # features: {"preset", "overrides"} resolved by resolve_features
    """Materialise the feature set of one corpus (Dask when ``workers > 1`` or an address is given).

    Returns ``{"stage", "corpus", "status", "key", "feature_digest", "computed", "reused", "failed"}``.
    """
    if not force and is_done(root, "featurize", key):
        return _cached(read_record(root, "featurize", key) or {})
    import feature_store
    from ser_pipeline.augment import parse_augment
    from ser_pipeline.features import feature_spec
    from ser_pipeline.manifest import read_manifest

    ws = Workspace.resolve(root)
    spec = feature_spec(features["preset"], **dict(features.get("overrides") or {}))
    aug = parse_augment(augment or "")
    manifest = read_manifest(corpus, ws)
    store = feature_store.FeatureStore(ws.features)
    start = time.perf_counter()
    options = _accepted(feature_store.materialise, {"manifest_name": corpus, "manifest_digest": manifest_digest,
                                                    "progress": progress, "force": force})
    if workers > 1 or dask_address:
        with feature_store.dask_client(workers, dask_address) as client:
            report = feature_store.materialise(manifest, spec, aug, store, client=client, **options)
    else:
        report = feature_store.materialise(manifest, spec, aug, store, **options)
    report = _as_dict(report)
    if report.get("failed"):
        failed = report["failed"]
        n_failed = len(failed) if isinstance(failed, list | tuple | dict) else int(failed)
        total = n_failed + int(report.get("computed", 0)) + int(report.get("reused", 0))
        if total and n_failed == total:
            raise TrainingError(f"featurize {corpus}: every item failed ({n_failed}); see the store report")
    record = {
        "stage": "featurize", "corpus": corpus, "key": key, "status": "computed", "preset": spec.preset,
        "feature_digest": spec.digest(), "augment_digest": aug.digest(), "manifest_digest": manifest_digest,
        "computed": _count(report.get("computed")), "reused": _count(report.get("reused")),
        "failed": _count(report.get("failed")), "outputs": [str(report.get("set_path") or ws.features)],
        "seconds": round(time.perf_counter() - start, 3),
    }
    write_record(root, "featurize", key, record)
    return record


def _accepted(fn: Callable[..., Any], options: dict[str, Any]) -> dict[str, Any]:
    """The keyword options that ``fn`` accepts (the store's signature may grow)."""
    import inspect

    params = inspect.signature(fn).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return options
    return {k: v for k, v in options.items() if k in params}


def _as_dict(obj: Any) -> dict[str, Any]:
    if isinstance(obj, dict):
        return obj
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    return dict(vars(obj))


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, list | tuple | dict | set):
        return len(value)
    return int(value)


# --------------------------------------------------------------------------------------------
# train
# --------------------------------------------------------------------------------------------
def to_experiment_config(exp: dict[str, Any]) -> Any:
    """Build the engine's ``ExperimentConfig`` from an :func:`experiment_dicts` entry.

    Fields the engine does not define are dropped, except that unknown keys given in a model's
    ``options`` raise :class:`ConfigError` naming them.
    """
    from ser_pipeline.evaluate import ExperimentConfig

    names = {f.name for f in dataclasses.fields(ExperimentConfig)}
    data = {k: v for k, v in exp.items() if not k.startswith("_")}
    data["features"] = resolve_features(exp)["preset"]
    overrides = dict(data.pop("feature_overrides", {}) or {})
    if overrides:
        if "feature_overrides" in names:
            data["feature_overrides"] = overrides
        elif "feature_options" in names:
            data["feature_options"] = overrides
        else:
            raise ConfigError(f"features.overrides={overrides!r}: the training engine takes no feature overrides")
    if data.get("device") == "auto":
        data.pop("device")
    core = {"model", "corpus", "features", "augment", "protocol", "protocol_options", "seed", "epochs",
            "hparams", "device", "feature_overrides"}
    unknown = sorted(k for k in data if k not in names and k not in core)
    if unknown:
        raise ConfigError(f"model {exp.get('model')!r}: unknown option(s) {unknown}; valid: {sorted(names)}")
    return ExperimentConfig.from_dict({k: v for k, v in data.items() if k in names})


def train_key(manifest_digest: str, digests: dict[str, Any]) -> str:
    """Key of one experiment: ExperimentConfig + manifest + feature spec + augmentation digests."""
    return stable_digest({"config": digests["config"], "manifest": manifest_digest, "features": digests["features"],
                          "augment": digests["augment"]}, version=STAGE_CODE_VERSION)


def train_stage(exp: dict[str, Any], root: str, *, key: str, manifest_digest: str,
                digests: dict[str, str], device: str | None = None, force: bool = False,
                on_epoch_end: Callable[[str, int, dict[str, float]], None] | None = None) -> dict[str, Any]:
    """Run one experiment (all folds of one model configuration and seed) through the engine.

    ``on_epoch_end(fold, epoch, metrics)`` reports progress. Returns ``{"stage", "label", "model",
    "corpus", "status", "key", "experiment_dir", "config_digest",
    "ua", "wa", "macro_f1", "folds", "protocol", "speaker_dependent"}``.
    """
    if not force and is_done(root, "train", key):
        return _cached(read_record(root, "train", key) or {})
    from ser_pipeline.evaluate import run_experiment

    cfg = to_experiment_config(exp)
    if device and "device" in {f.name for f in dataclasses.fields(cfg)}:
        cfg = cfg.replace(device=device)
    ws = Workspace.resolve(root)
    start = time.perf_counter()
    result = run_experiment(cfg, ws, force=force, callbacks=[on_epoch_end] if on_epoch_end else None)
    exp_dir = Path(getattr(result, "directory", None) or getattr(result, "dir", None) or result.path)
    summary = metrics_summary(exp_dir)
    record = {
        "stage": "train", "label": exp.get("_label", exp["model"]), "model": exp["model"],
        "corpus": exp["corpus"], "seed": exp.get("seed"), "key": key, "status": "computed",
        "experiment_dir": str(exp_dir), "config_digest": cfg.digest(), "manifest_digest": manifest_digest,
        **{f"{k}_digest": digests[k] for k in ("features", "augment")}, **summary,
        "outputs": [str(exp_dir / "metrics.json")], "seconds": round(time.perf_counter() - start, 3),
    }
    write_record(root, "train", key, record)
    return record


def metrics_summary(exp_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """Mean UA/WA/F1 over folds, the fold count, protocol and speaker-dependent flag from metrics.json."""
    path = Path(exp_dir) / "metrics.json"
    if not path.is_file():
        raise TrainingError(f"experiment {exp_dir}: metrics.json is missing")
    metrics = json.loads(path.read_text())
    mean, pooled = metrics.get("mean", {}), metrics.get("pooled", {})
    return {
        "ua": mean.get("ua"), "ua_std": metrics.get("std", {}).get("ua"), "wa": mean.get("wa"),
        "macro_f1": mean.get("macro_f1"), "pooled_ua": pooled.get("ua"),
        "folds": len(metrics.get("folds", [])), "protocol": metrics.get("protocol"),
        "speaker_dependent": bool(metrics.get("speaker_dependent", False)),
    }


# --------------------------------------------------------------------------------------------
# track
# --------------------------------------------------------------------------------------------
def track_key(train_key_: str, uri: str, register: bool) -> str:
    return stable_digest({"train": train_key_, "uri": uri, "register": register}, version=STAGE_CODE_VERSION)


def track_stage(trained: dict[str, Any], root: str, *, key: str, experiment: str, uri: str,
                register: bool = True, force: bool = False) -> dict[str, Any]:
    """Log one trained experiment to MLflow (idempotent by config digest; see ser_pipeline.tracking)."""
    record = read_record(root, "track", key)
    if not force and record is not None and _store_present(uri):
        return _cached(record)
    from ser_pipeline import tracking

    ws = Workspace.resolve(root)
    start = time.perf_counter()
    out = tracking.log_experiment(trained["experiment_dir"], experiment=experiment, uri=uri,
                                  manifest_path=ws.manifest_path(trained["corpus"]), register=register,
                                  force=force, label=trained.get("label"))
    record = {"stage": "track", "label": trained.get("label"), "key": key, **out,
              "status": "computed" if out["status"] == "logged" else "cached",
              "seconds": round(time.perf_counter() - start, 3)}
    write_record(root, "track", key, record)
    return record


def _store_present(uri: str) -> bool:
    """A local sqlite store must still exist for a track record to be trusted; servers are trusted."""
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).is_file()
    return True


def failure(label: str, exc: BaseException) -> dict[str, Any]:
    """The result row of a model whose training failed."""
    kind = "error" if isinstance(exc, SerError) else type(exc).__name__
    return {"stage": "train", "label": label, "status": "failed", "error": f"{kind}: {exc}"}
