"""CLI commands: ``ser run``, ``ser schedule``, ``ser compare``, ``ser predict``, ``ser ui``.

``ser run`` goes through Prefect (flows/pipeline.py); the other commands of the package call the
library directly. Prefect and MLflow are imported lazily inside the commands, so ``ser --help`` and
the other command groups stay fast and work without either.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ser_pipeline.cli.common import JsonOption, RootOption, emit, table, workspace
from ser_pipeline.errors import SerError

DEFAULT_CONFIG = "configs/demo.yaml"
TrackingOption = Annotated[
    str | None,
    typer.Option("--tracking-uri", envvar="MLFLOW_TRACKING_URI",
                 help="MLflow tracking URI (default sqlite:///./mlruns/mlflow.db)."),
]


def _fmt(value: Any, digits: int = 3) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def stage_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per stage task of a pipeline summary: stage, item, status, seconds."""
    rows = []
    for stage in ("ingest", "featurize", "train", "track"):
        for r in summary.get(stage, []):
            item = r.get("corpus") if stage in ("ingest", "featurize") else r.get("label")
            detail = r.get("error") or ""
            if stage == "featurize" and r.get("status") == "computed":
                detail = f"{r.get('preset')}: computed {r.get('computed', 0)}  reused {r.get('reused', 0)}  failed {r.get('failed', 0)}"
            elif stage == "featurize" and r.get("status") == "cached":
                detail = f"{r.get('preset')}: feature set {r.get('feature_digest')}"
            if stage == "track" and r.get("run_id"):
                detail = f"run {r['run_id'][:12]}  {r.get('registered') or ''}"
            rows.append({"stage": stage, "item": item, "status": r.get("status"),
                         "seconds": _fmt(r.get("seconds"), 1), "detail": detail})
    return rows


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """Models side by side: UA (mean ± std over folds), WA, macro-F1, pooled UA, folds, protocol."""
    out = [{
        "model": r.get("label") or r.get("run"),
        "UA": f"{_fmt(r.get('ua'))} ± {_fmt(r.get('ua_std'))}" if r.get("ua") is not None else "-",
        "WA": _fmt(r.get("wa")),
        "F1": _fmt(r.get("macro_f1", r.get("f1"))),
        "pooled UA": _fmt(r.get("pooled_ua")),
        "folds": _fmt(r.get("folds")),
        "protocol": r.get("protocol") or "-",
        "speaker-dep.": "yes" if r.get("speaker_dependent") else "no",
        "status": r.get("status", "logged"),
    } for r in rows]
    return table(out, ["model", "UA", "WA", "F1", "pooled UA", "folds", "protocol", "speaker-dep.", "status"])


def ui_hint(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"MLflow UI: open {uri}"
    return f"MLflow UI: ser ui   (or: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000)"


def human_run(summary: dict[str, Any]) -> str:
    parts = [table(stage_rows(summary), ["stage", "item", "status", "seconds", "detail"])]
    if summary.get("comparison"):
        parts += ["", f"comparison ({', '.join(summary.get('experiments', []))}; UA = mean ± std over folds, "
                  "unweighted average recall)", comparison_table(summary["comparison"])]
    state = "every stage cached" if summary.get("all_cached") else "done"
    parts += ["", f"{state} in {summary.get('seconds', 0):.1f} s (pipeline flow, after Prefect start-up)",
              ui_hint(summary.get("tracking_uri", ""))]
    if summary.get("error"):
        parts.append(f"error: {summary['error']}")
    return "\n".join(parts)


def run_pipeline(config: str, root: str | None, *, stages: list[str], force: list[str],
                 tracking_uri: str | None) -> dict[str, Any]:
    """Run the pipeline flow in-process (Prefect local mode unless PREFECT_API_URL is set)."""
    from flows.env import configure

    ws = workspace(root)
    configure(ws.root)
    from flows.pipeline import last_run_path, pipeline_flow

    state = pipeline_flow(config=str(Path(config).resolve()), root=str(ws.root), stages=stages, force=force,
                          tracking_uri=tracking_uri, return_state=True)
    if state.is_completed():
        return state.result()
    try:
        state.result()
    except SerError as exc:
        error = str(exc)
    except Exception as exc:  # noqa: BLE001 - reported with the partial summary
        error = f"{type(exc).__name__}: {exc}"
    else:
        error = f"pipeline ended in state {state.name}"
    path = last_run_path(str(ws.root))
    summary = _read_json(path) if path.is_file() else {}
    return {**summary, "error": error, "state": state.name}


def _read_json(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text())


def register(app: typer.Typer) -> None:
    """Add this group's commands to the ser app."""

    @app.command("run")
    def run_cmd(
        config: Annotated[str, typer.Argument(help="YAML experiment config.")] = DEFAULT_CONFIG,
        stage: Annotated[str | None, typer.Option("--stage", help="Run only this stage: ingest|featurize|train.")] = None,
        start: Annotated[str | None, typer.Option("--from", help="Run from this stage on.")] = None,
        force: Annotated[list[str] | None, typer.Option(
            "--force", help="Recompute this stage even if cached (repeatable; also 'track').")] = None,
        root: RootOption = None,
        tracking_uri: TrackingOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Run the pipeline DAG through Prefect: ingest -> featurize -> train -> MLflow, with caching."""
        from ser_pipeline.pipeline_config import STAGES, load_config, stage_plan

        plan = list(stage_plan(stage=stage, start=start))
        forced = list(force or [])
        bad = [f for f in forced if f not in (*STAGES, "track")]
        if bad:
            raise SerError(f"--force {bad[0]!r}: valid stages: {', '.join((*STAGES, 'track'))}")
        from ser_pipeline.corpora import check_entry_options

        for entry in load_config(config).corpora:  # fail fast (exit 2), before Prefect starts, on a bad config
            check_entry_options(entry.adapter, entry.options, where=f"{config}: corpora[{entry.name}]")
        summary = run_pipeline(config, root, stages=plan, force=forced, tracking_uri=tracking_uri)
        emit(summary, as_json, human_run)
        if summary.get("error"):
            raise typer.Exit(1)

    @app.command("schedule")
    def schedule_cmd(
        file: Annotated[str, typer.Option("--file", help="Deployments file.")] = "prefect.yaml",
        only: Annotated[list[str] | None, typer.Option("--only", help="Serve only this deployment (repeatable).")] = None,
        root: RootOption = None,
        limit: Annotated[int | None, typer.Option("--limit", help="Max concurrent runs.")] = None,
    ) -> None:
        """Serve the cron-scheduled deployments of prefect.yaml from this process (Ctrl-C stops)."""
        from flows.env import configure

        ws = workspace(root)
        configure(ws.root)
        from flows.serve import serve_all

        overrides = {"root": str(ws.root)}
        serve_all(file, only=only, overrides=overrides, limit=limit)

    @app.command("compare")
    def compare_cmd(
        experiment: Annotated[str | None, typer.Argument(help="MLflow experiment (default: all).")] = None,
        test: Annotated[tuple[str, str] | None, typer.Option(
            "--test", help="Paired t-test and Wilcoxon over folds between two runs (names or ids).")] = None,
        metric: Annotated[str, typer.Option("--metric", help="Fold metric for --test.")] = "ua",
        tracking_uri: TrackingOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Print models side by side from MLflow (UA, WA, F1, folds, protocol, speaker-dependent flag)."""
        from ser_pipeline import tracking

        uri = tracking_uri or tracking.tracking_uri()
        names = [experiment] if experiment else tracking.list_experiments(uri)
        payload: dict[str, Any] = {"tracking_uri": uri,
                                   "experiments": {n: tracking.compare_runs(n, uri=uri) for n in names}}
        if test:
            if len(names) != 1:
                raise SerError("--test needs one EXPERIMENT argument")
            a = tracking.fold_scores(names[0], test[0], metric=metric, uri=uri)
            b = tracking.fold_scores(names[0], test[1], metric=metric, uri=uri)
            payload["test"] = {"a": test[0], "b": test[1], "metric": metric, **tracking.paired_test(a, b)}

        def human(p: dict[str, Any]) -> str:
            parts = []
            for name, rows in p["experiments"].items():
                parts += [f"experiment {name}", comparison_table(rows), ""]
            if "test" in p:
                t = p["test"]
                parts.append(f"{t['a']} vs {t['b']} on {t['metric']} over {len(t['folds'])} folds: "
                             f"mean {t['mean_a']:.3f} vs {t['mean_b']:.3f}; paired t-test p={t['t_test_p']:.4f}; "
                             f"Wilcoxon p={t['wilcoxon_p']:.4f}")
            return "\n".join(parts).rstrip()

        emit(payload, as_json, human)

    @app.command("predict")
    def predict_cmd(
        model_uri: Annotated[str, typer.Argument(help="models:/<name>@champion, runs:/<id>/model, or a model folder.")],
        audio: Annotated[list[str], typer.Argument(help="Audio files.")],
        tracking_uri: TrackingOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Predict the emotion of audio files with a registered model (per-file errors, others still predicted)."""
        from ser_pipeline.predict import predict_with_uri

        results = predict_with_uri(model_uri, audio, tracking_uri=tracking_uri)

        def human(rows: list[dict[str, Any]]) -> str:
            lines = []
            for r in rows:
                if r.get("error"):
                    lines.append(f"{r['path']}: error: {r['error']}")
                else:
                    probs = "  ".join(f"{k} {v:.2f}" for k, v in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]))
                    lines.append(f"{r['path']}: {r['emotion']}  ({probs})")
            return "\n".join(lines)

        emit(results, as_json, human)
        if all(r.get("error") for r in results):
            raise typer.Exit(1)

    @app.command("ui")
    def ui_cmd(
        launch: Annotated[bool, typer.Option("--launch", help="Start the MLflow UI instead of printing the command.")] = False,
        tracking_uri: TrackingOption = None,
    ) -> None:
        """Print (or launch) the command that opens the MLflow UI on the local store, bound to 127.0.0.1."""
        from ser_pipeline.pipeline_config import default_tracking_uri

        uri = tracking_uri or default_tracking_uri()
        if uri.startswith(("http://", "https://")):
            typer.echo(f"open {uri} in a browser")
            return
        root = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
        cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root",
               root.as_uri(), "--host", "127.0.0.1", "--port", "5000"]
        if not launch:
            typer.echo(" ".join(shlex.quote(c) for c in ["mlflow", *cmd[3:]]))
            return
        raise typer.Exit(subprocess.call(cmd))
