"""CLI commands: ``ser models`` and ``ser train``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ser_pipeline.cli.common import JsonOption, RootOption, emit, say, table, workspace
from ser_pipeline.config import load_yaml
from ser_pipeline.errors import ConfigError

if TYPE_CHECKING:
    from ser_pipeline.experiments.record import ExperimentRecord

# The experiment layer (torch, the model registry) is imported inside the commands: `ser --help`
# and the first line of `ser train` do not wait for torch.

METRICS = ("wa", "ua", "macro_f1")


def parse_value(text: str) -> Any:
    """A ``--set`` value: YAML scalars and lists (``8``, ``0.1``, ``true``, ``[1, 2]``, ``null``) or a string."""
    import yaml

    try:
        return load_yaml(text)
    except yaml.YAMLError:
        return text


def apply_sets(base: dict[str, Any], items: list[str] | None) -> dict[str, Any]:
    """Apply ``key=value`` / ``a.b.c=value`` settings to a nested dict (a new one is returned).

    ConfigError names an item without ``=`` or that descends into a non-mapping.
    """
    out = {k: (dict(v) if isinstance(v, dict) else v) for k, v in base.items()}
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set {item!r}: expected key=value (e.g. hparams.width=16, view.frames=200)")
        parts = key.strip().split(".")
        node = out
        for part in parts[:-1]:
            child = node.get(part)
            if child is None:
                child = {}
            if not isinstance(child, dict):
                raise ConfigError(f"--set {item!r}: {part!r} is not a mapping")
            node[part] = child = dict(child)
            node = child
        node[parts[-1]] = parse_value(raw.strip())
    return out


def manifest_size(ws: Any, corpus: str) -> str:
    """`` (N utterances)`` from the manifest's JSON summary (no pandas), or ``""`` when there is none."""
    path = ws.manifests / f"{corpus}.json"
    try:
        return f" ({int(json.loads(path.read_text())['utterances'])} utterances)"
    except (OSError, ValueError, KeyError, TypeError):
        return ""


def fold_rows(metrics: dict[str, Any]) -> list[dict[str, Any]]:
    """Table rows: one per fold, then pooled and mean ± std (named)."""
    rows = [{"fold": f["fold"], **{m: f"{f[m]:.3f}" for m in METRICS}} for f in metrics["folds"]]
    rows.append({"fold": "pooled (all test predictions)", **{m: f"{metrics['pooled'][m]:.3f}" for m in METRICS}})
    rows.append({"fold": "mean ± std over folds",
                 **{m: f"{metrics['mean'][m]:.3f} ± {metrics['std'][m]:.3f}" for m in METRICS}})
    return rows


def train_summary(result: ExperimentRecord, *, cached: bool) -> dict[str, Any]:
    """The JSON document of ``ser train``."""
    m = result.metrics
    pick = lambda d: {k: d[k] for k in METRICS}  # noqa: E731
    return {
        "experiment_id": result.experiment_id, "directory": str(result.folder), "cached": cached,
        "features": result.feature_label, "device": result.device, "recipe": m.get("recipe", {}),
        "protocol": m["protocol"], "speaker_dependent": m["speaker_dependent"], "classes": m["classes"],
        "folds": [{"fold": f["fold"], **pick(f)} for f in m["folds"]],
        "pooled": pick(m["pooled"]), "mean": pick(m["mean"]), "std": pick(m["std"]),
        "final_model": result.final_model, "dropped_classes": result.dropped_classes,
    }


def human_train(summary: dict[str, Any], metrics: dict[str, Any]) -> str:
    label = "SPEAKER-DEPENDENT" if summary["speaker_dependent"] else "speaker-independent"
    head = f"experiment {summary['experiment_id']}  protocol {summary['protocol']} ({label})"
    r = summary.get("recipe") or {}
    if r:
        head += (f"\nrecipe: preset {r.get('preset')}, normalise {r.get('normalise')}, validation {r.get('validation')}"
                 f", refit {r.get('refit')}, precise-BN {r.get('precise_bn')}, BN statistics "
                 f"{r.get('bn_statistics', 'train')}, training waves {r.get('waveform_augment', 'orig')}")
    lines = [head, table(fold_rows(metrics), ["fold", *METRICS])]
    if summary.get("dropped_classes"):
        lines.append("classes left out (not shared by the corpora): "
                     + "; ".join(f"{c}: {', '.join(v)}" for c, v in summary["dropped_classes"].items()))
    if summary.get("final_model"):
        lines.append(f"model served (model/, predict, registry): {summary['final_model'].get('selected_by')}")
    lines.append(f"written to {summary['directory']}")
    if summary.get("tracking"):
        t = summary["tracking"]
        lines.append(f"MLflow: run {t['run_id'][:12]} {t['run_name']} in experiment {t['experiment']} ({t['status']})")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the ser app."""

    @app.command("models")
    def models_cmd(as_json: JsonOption = False) -> None:
        """List registered models with their reference, input view, trainer and default hyperparameters."""
        from ser_pipeline.models import load_all  # heavy (torch): imported when the command runs

        entries = [e.describe() for _, e in load_all().items()]

        def human(items: list[dict[str, Any]]) -> str:
            rows = [{"name": e["name"], "trainer": e["trainer"], "features": e["feature_preset"],
                     "view": ",".join(f"{k}={v}" for k, v in e["view"].items()),
                     "defaults": ",".join(f"{k}={v}" for k, v in e["defaults"].items()),
                     "reference": e["reference"][:70]} for e in items]
            return table(rows, ["name", "trainer", "features", "view", "defaults", "reference"])

        emit(entries, as_json, human)

    @app.command("train")
    def train_cmd(
        model: Annotated[str, typer.Argument(help="Registered model (see `ser models`).")],
        corpus: Annotated[str, typer.Argument(help="Ingested corpus name (see `ser manifests`).")],
        protocol: Annotated[str, typer.Option(help="loso, loso_val, loso_session, speaker_kfold, random "
                                                   "(default: loso; with --preset paper the model's).")] = "",
        features: Annotated[str, typer.Option(help="Feature preset (default: the model's).")] = "",
        augment: Annotated[str, typer.Option(help="Waveform augmentation for training utterances, e.g. speed=0.9,1.1.")] = "",
        epochs: Annotated[int | None, typer.Option(min=1, help="Epochs (default: the model's recipe).")] = None,
        seed: Annotated[int, typer.Option(help="Seed for weights, order and augmentation.")] = 0,
        device: Annotated[str, typer.Option(help="auto (CUDA when available), cpu or cuda.")] = "auto",
        preset: Annotated[str, typer.Option(help="default (issue-13 recipe), paper (the model's own recipe, protocol "
                                                 "and augmentation) or cpu (default at the model's CPU size).")] = "default",
        sets: Annotated[list[str] | None, typer.Option("--set", help="Override a config field: hparams.width=16, "
                                                       "view.frames=200, train.optimizer=sgd, max_folds=2 ...")] = None,
        force: Annotated[bool, typer.Option(help="Re-run even when the experiment exists.")] = False,
        track: Annotated[bool, typer.Option("--track/--no-track", help="Log the result to MLflow as `ser run` "
                                            "does (experiment <corpus>-<protocol>).")] = True,
        tracking_uri: Annotated[str | None, typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                                                         help="MLflow tracking URI.")] = None,
        root: RootOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Train MODEL on CORPUS under a protocol; every fold, then per-fold, pooled and mean±std metrics;
        tracked in MLflow unless --no-track."""
        ws = workspace(root)
        say(f"train {model} on {corpus}{manifest_size(ws, corpus)}: resolving the recipe (loading torch and the "
            "model registry)")
        # heavy (torch, the experiment layer): imported after the first line
        from ser_pipeline.cli.progress import announce
        from ser_pipeline.experiments.config import ExperimentConfig, resolve
        from ser_pipeline.experiments.record import ExperimentRecord
        from ser_pipeline.experiments.runner import experiment_folder, run_experiment
        from ser_pipeline.training.config import check_device

        base = {"model": model, "corpus": corpus, "protocol": protocol, "features": features, "augment": augment,
                "epochs": epochs, "seed": seed, "preset": preset}
        config = ExperimentConfig.from_dict(apply_sets(base, sets))
        check_device(device)
        resolve(config)  # every section validated before any work

        cached = not force and ExperimentRecord.find(experiment_folder(config, ws)) is not None
        progress = announce(config, ws, device)  # what it does, then fold i/N and epoch lines
        result = run_experiment(config, ws, device=device, callbacks=[progress], on_fold=progress.fold_begins,
                                force=force)
        summary = train_summary(result, cached=cached)
        if track:
            from ser_pipeline.cli.progress import track_record  # heavy (mlflow): only when tracking

            summary["tracking"] = track_record(result, ws, tracking_uri)
        emit(summary, as_json, lambda s: human_train(s, result.metrics))
