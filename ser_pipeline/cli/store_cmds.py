"""CLI commands: ``ser featurize`` and the ``ser store`` group (ls, verify, gc)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ser_pipeline.cli.common import JsonOption, RootOption, emit, table, workspace

# The store (zarr, pandas) is imported inside the functions that use it, so `ser --help` stays fast;
# `ser featurize` still loads neither torch, MLflow nor Prefect.

PresetOption = Annotated[str, typer.Option("--preset", help="Feature preset (logmel64, logmel60, logmel64_norm, spectrogram; "
                                                            "'auto' with --model: the model's).")]
AugmentOption = Annotated[
    str, typer.Option("--augment", help="Waveform variants, e.g. 'speed=0.8,0.9,1.0,1.1,1.2;noise=20' (training data only).")
]
WorkersOption = Annotated[
    int | None, typer.Option("--workers", min=1, help="Local Dask worker processes (default: CPU count; 1 = in process).")
]
AddressOption = Annotated[
    str | None, typer.Option("--dask-address", envvar="SER_DASK_ADDRESS", help="Use an existing Dask scheduler.")
]


def _will_probably_fork(workers: int | None, dask_address: str | None, backend: str) -> bool:
    """Whether a first featurize would run on local worker processes (see ``choose_executor``)."""
    return dask_address is None and backend == "numpy" and (workers or os.cpu_count() or 1) > 1


def run_featurize(
    name: str, *, root: str | None, preset: str, model: str | None, overrides: dict[str, Any], augment: str,
    float32: bool, force: bool, workers: int | None, dask_address: str | None, batch_size: int, progress: bool,
    backend: str = "numpy",
) -> dict[str, Any]:
    """Featurize manifest ``name``; returns the report dict (plus ``wall_seconds`` incl. cluster start)."""
    from feature_store.store import FeatureStore  # zarr: when the command runs
    from ser_pipeline.experiments.feature_spec import resolve_feature_spec

    start = time.perf_counter()
    ws = workspace(root)
    spec = resolve_feature_spec(model, preset, {**overrides, **({"dtype": "float32"} if float32 else {})})
    store = FeatureStore(ws.features)
    if (_will_probably_fork(workers, dask_address, backend) and ws.manifest_path(name).exists()
            and (force or not store.has_served(spec, name))):
        from feature_store.pools import prestart_fork_server

        prestart_fork_server()  # its imports overlap the ones below and the planning (about 0.4 s of wall)
    from ser_pipeline.augment import parse_augment
    from ser_pipeline.experiments.features import featurize
    from ser_pipeline.features import feature_label
    from ser_pipeline.manifest import manifest_digest, read_manifest

    frame = read_manifest(name, ws)
    report, executor = featurize(frame, spec, parse_augment(augment), store, manifest_name=name,
                                 manifest_digest=manifest_digest(frame), workers=workers, dask_address=dask_address,
                                 batch_size=batch_size, force=force, progress=progress, backend=backend)
    out = report.to_dict()
    out.update({"manifest": name, "preset": spec.preset, "label": feature_label(spec), "dtype": spec.dtype,
                "wall_seconds": round(time.perf_counter() - start, 3), "executor": executor, "backend": backend})
    return out


def _featurize_text(r: dict[str, Any]) -> str:
    lines = [
        f"feature set {r['feature_digest']} ({r['label']}, {r['dtype']}) variants: {', '.join(r['variants'])}",
        f"computed {r['computed']}  reused {r['reused']}  failed {len(r['failed'])}  repaired {r['repaired']}",
        f"{r['seconds']:.2f} s ({r['wall_seconds']:.2f} s with start-up, {r['executor']}); "
        f"{r['audio_seconds']:.1f} audio s, {r['audio_seconds_per_second']:.1f} audio s per wall s",
    ]
    lines += [f"  failed {f['utterance_id']} [{f['variant']}]: {f['reason']}" for f in r["failed"]]
    lines += [f"  repaired {d['utterance_id']} [{d['variant']}]: {d['reason']}" for d in r.get("damaged", [])]
    lines += [f"  unreadable batch set aside (its items recomputed as missing; `ser store verify --repair` "
              f"quarantines it): {b}" for b in r.get("unreadable_batches", [])]
    return "\n".join(lines)


def _ls_text(sets: list[dict[str, Any]]) -> str:
    if not sets:
        return "no feature sets"
    rows = [{**s, "MB": f"{s['bytes'] / 1e6:.1f}", "variants": ",".join(s["variants"]),
             "manifests": ",".join(sorted({m["name"] for m in s["manifests"]}))} for s in sets]
    return table(rows, ["digest", "label", "dtype", "items", "utterances", "variants", "frames", "MB", "created",
                        "manifests", "superseded_by"])


def labelled(sets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The store's set listing with the user-facing label (preset and overrides) and, for sets
    keyed by the old digest (preset name included), the digest that supersedes them."""
    from ser_pipeline.features import FeatureSpec, feature_label

    out = []
    for s in sets:
        spec = FeatureSpec.from_dict(s["spec"])
        legacy = s["digest"] != spec.digest() and s["digest"] == spec.legacy_digest()
        out.append({**s, "label": feature_label(spec), "superseded_by": spec.digest() if legacy else ""})
    return out


def _verify_text(r: dict[str, Any]) -> str:
    head = f"{'OK' if r['ok'] else 'CORRUPT'}: {r['sets']} set(s), {r['derived']} derived, {r['batches']} batch(es), {r['items_checked']} item(s) checked"
    lines = [head] + [f"  corrupt {c['path']} {c['key']}: {c['reason']}" for c in r["corrupt"]]
    lines += [f"  superseded damaged item (never read; gc removes) {c['path']} {c['key']}: {c['reason']}"
              for c in r.get("superseded", [])]
    lines += [f"  uncommitted (invisible; gc removes when abandoned): {u}" for u in r["uncommitted"]]
    lines += [f"  quarantined (never read; gc removes): {q}" for q in r.get("quarantined", [])]
    if "repair" in r:
        fix = r["repair"]
        lines.insert(0, "repair: " + "; ".join(
            [f"{s['digest'][:12]} from {s['manifest']}: repaired {s['repaired']}, computed {s['computed']}, failed {s['failed']}"
             for s in fix["sets"]] + [f"quarantined {len(fix['quarantined'])} batch(es)"]
            + [f"manifest {u['manifest']} gone: cannot recompute for {u['digest'][:12]}" for u in fix["unavailable"]]))
    return "\n".join(lines)


def _gc_text(r: dict[str, Any]) -> str:
    verb, compact = ("would remove", "would compact") if r["dry_run"] else ("removed", "compacted")
    superseded = [f"  superseded {x['digest']} ({x['label']}) by {x['superseded_by']}" for x in r.get("superseded", [])]
    lines = [f"{verb} {len(r['removed'])} path(s), {r['bytes'] / 1e6:.1f} MB; {compact} {len(r['compacted'])} batch(es); "
             f"{r['items_removed']} dead item(s)" + (" (dry run; --apply to delete)" if r["dry_run"] else "")]
    lines += [f"  remove {x['path']}: {x['reason']}" for x in r["removed"]]
    lines += [f"  compact {x['path']}: keep {x['items_kept']}, drop {x['items_dropped']} ({x['reason']})" for x in r["compacted"]]
    return "\n".join(lines + superseded)


LEGACY_FUNCTIONALS = "functionals"  # <features>/functionals/<set>.parquet: the old svm's own cache


def legacy_functionals(features_dir: Path, *, dry_run: bool) -> list[dict[str, Any]]:
    """The openSMILE parquet caches the ``svm`` kept before functionals became a store feature kind:
    ``[{"path", "bytes", "reason"}]``, deleted unless ``dry_run`` (nothing reads them any more)."""
    out = []
    for path in sorted((features_dir / LEGACY_FUNCTIONALS).glob("*.parquet")):
        out.append({"path": str(path), "bytes": path.stat().st_size,
                    "reason": "old svm functionals cache, superseded by the store's 'functionals' feature kind"})
        if not dry_run:
            path.unlink()
    return out


def referenced_digests(store: Any, manifest_names: set[str]) -> set[str]:
    """Sets that served a manifest still present, or that record no manifest at all (kept to be safe).
    A set keyed by the old digest (preset name included) is superseded, never referenced."""
    keep = set()
    for s in labelled(store.list_sets()):
        served = {m["name"] for m in s["manifests"]}
        if not s["superseded_by"] and (not served or served & manifest_names):
            keep.add(s["digest"])
    return keep


def referenced_items(store: Any, ws: Any, keep: set[str]) -> dict[str, set[tuple[str, str]]]:
    """Per feature-set digest, the ``(sha256, variant)`` keys its served manifests still hold.

    For each manifest name a set served that still exists in the workspace: every sha256 of the
    current manifest, with every variant ever requested under that name. Sets that record no
    manifest, sets named with ``--keep`` and sets serving no present manifest are left out (kept
    whole, or removed whole by ``referenced_digests``).
    """
    from ser_pipeline.manifest import list_manifests, read_manifest

    present = set(list_manifests(ws))
    shas: dict[str, set[str]] = {}
    out: dict[str, set[tuple[str, str]]] = {}
    for s in store.list_sets():
        variants: dict[str, set[str]] = {}
        for record in s["manifests"]:
            variants.setdefault(record["name"], set()).update(record.get("variants") or ["orig"])
        names = sorted(set(variants) & present)
        if s["digest"] in keep or not variants or not names:
            continue
        keys: set[tuple[str, str]] = set()
        for name in names:
            if name not in shas:
                shas[name] = set(read_manifest(name, ws)["sha256"])
            keys |= {(sha, v) for sha in shas[name] for v in variants[name]}
        out[s["digest"]] = keys
    return out


def register(app: typer.Typer) -> None:
    """Add ``featurize`` and the ``store`` group to the ser app."""
    store_app = typer.Typer(help="Inspect and maintain the feature store.", no_args_is_help=True)
    app.add_typer(store_app, name="store")

    @app.command("featurize")
    def featurize(
        name: Annotated[str, typer.Argument(help="Ingested manifest name.")],
        preset: PresetOption = "logmel64",
        model: Annotated[str | None, typer.Option("--model", help="Take the preset of this model (with --preset auto).")] = None,
        sets: Annotated[list[str] | None, typer.Option("--set", help="Override a FeatureSpec field: n_mels=48, hop_ms=5 ...")] = None,
        augment: AugmentOption = "",
        float32: Annotated[bool, typer.Option("--float32", help="Store float32 instead of float16.")] = False,
        force: Annotated[bool, typer.Option("--force", help="Recompute items already stored.")] = False,
        workers: WorkersOption = None,
        dask_address: AddressOption = None,
        batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Most items per task / batch (split evenly over workers).")] = 256,
        backend: Annotated[str, typer.Option("--backend", help="numpy (default; bit-identical everywhere on one "
                                             "machine), torch (batched, CUDA when present), auto (torch on a GPU box).")] = "numpy",
        root: RootOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Compute missing feature items of manifest NAME into the store (incremental, crash-safe)."""
        overrides: dict[str, Any] = {}
        if sets:
            from ser_pipeline.cli.train_cmds import apply_sets  # yaml: only when --set is given

            overrides = apply_sets({}, sets)
        report = run_featurize(name, root=root, preset=preset, model=model, overrides=overrides,
                               augment=augment, float32=float32, force=force,
                               workers=workers, dask_address=dask_address, batch_size=batch_size, progress=not as_json,
                               backend=backend)
        emit(report, as_json, _featurize_text)

    @store_app.command("ls")
    def ls(root: RootOption = None, as_json: JsonOption = False) -> None:
        """List feature sets with their lineage."""
        from feature_store.store import FeatureStore  # zarr: when the command runs

        store = FeatureStore(workspace(root).features)
        sets = labelled(store.list_sets())
        if as_json:
            emit({"sets": sets, "derived": store.list_derived()}, True)
        else:
            emit(sets, False, _ls_text)

    @store_app.command("verify")
    def verify_cmd(
        repair: Annotated[bool, typer.Option("--repair", help="Recompute damaged items from the manifests each set "
                                             "served; quarantine batches whose item list is unreadable.")] = False,
        root: RootOption = None, as_json: JsonOption = False,
    ) -> None:
        """Check every committed item's checksum and shape; exit 1 when anything served is corrupt."""
        from feature_store.maintenance import repair as repair_store  # zarr: when the command runs
        from feature_store.maintenance import verify
        from feature_store.store import FeatureStore
        from ser_pipeline.manifest import list_manifests, read_manifest

        ws = workspace(root)
        store = FeatureStore(ws.features)
        report = verify(store)
        if repair and not report["ok"]:
            present = set(list_manifests(ws))
            fixed = repair_store(store, lambda name: read_manifest(name, ws) if name in present else None)
            report = {**verify(store), "repair": fixed, "before": {"corrupt": report["corrupt"]}}
        emit(report, as_json, _verify_text)
        if not report["ok"]:
            raise typer.Exit(1)

    @store_app.command("gc")
    def gc_cmd(
        apply: Annotated[bool, typer.Option("--apply", help="Delete (default: dry run).")] = False,
        keep: Annotated[list[str] | None, typer.Option("--keep", help="Feature digest to keep (repeatable).")] = None,
        root: RootOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Remove unreferenced sets and items, abandoned temp batches and superseded items (dry run unless --apply).

        A set is referenced when a manifest it served still exists in the workspace, when it records no
        manifest, or when named with --keep. An item is referenced when its recording is in the current
        version of such a manifest (with a variant requested for it) and no later batch replaced it.
        Batches of only dead items are removed; mixed batches are rewritten without them.
        Run it when no featurize or training reads the store.
        """
        from feature_store.maintenance import gc  # zarr: when the command runs
        from feature_store.store import FeatureStore
        from ser_pipeline.manifest import list_manifests

        ws = workspace(root)
        store = FeatureStore(ws.features)
        superseded = [{k: s[k] for k in ("digest", "label", "superseded_by")}  # listed before any removal
                      for s in labelled(store.list_sets()) if s["superseded_by"]]
        keep_set = referenced_digests(store, set(list_manifests(ws))) | set(keep or [])
        items = referenced_items(store, ws, set(keep or []))
        report = gc(store, keep_set, dry_run=not apply, referenced_items=items)
        legacy = legacy_functionals(Path(ws.features), dry_run=not apply)
        report["removed"] += legacy
        report["bytes"] += sum(x["bytes"] for x in legacy)
        report["superseded"] = superseded
        emit(report, as_json, _gc_text)
