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
from typing import TYPE_CHECKING, Annotated, Any

import typer

from ser_pipeline.cli.common import JsonOption, RootOption, emit, table, workspace
from ser_pipeline.errors import ConfigError, SerError
from ser_pipeline.tracking.uri import default_tracking_uri

if TYPE_CHECKING:
    from ser_pipeline.pipeline.config import PipelineConfig, PlannedExperiment

# The pipeline and the predictor (torch, pandas) are imported inside the commands that use them, so
# `ser --help` lists every command without loading torch.
STAGES = ("ingest", "featurize", "train")  # = ser_pipeline.pipeline.config.STAGES (a test keeps them equal)

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
            item = r.get("corpus") if stage in ("ingest", "featurize") else (r.get("run_name") or r.get("label"))
            detail = r.get("error") or ""
            if stage == "featurize" and r.get("status") == "computed":
                detail = f"{r['label']}: computed {r['computed']}  reused {r['reused']}  failed {r['failed']}"
            elif stage == "featurize" and r.get("status") == "cached":
                detail = f"{r['label']}: feature set {r['feature_digest']}"
            if stage == "track" and r.get("run_id"):
                detail = f"run {r['run_id'][:12]}  {r.get('registered') or ''}".rstrip()
            rows.append({"stage": stage, "item": item, "status": r.get("status"),
                         "seconds": _fmt(r.get("seconds"), 1), "detail": detail})
    return rows


def comparison_table(rows: list[dict[str, Any]]) -> str:
    """Models side by side: run name (``*`` = logged by this command), short run id, UA (mean ± std
    over folds), WA, macro-F1, pooled UA, folds, protocol, and the params that differ between rows."""
    out = [{
        "run": ("* " if r.get("new") else "") + str(r.get("run_name") or r.get("run") or r.get("label")),
        "id": (r.get("run_id") or "")[:12] or "-",
        "UA": f"{_fmt(r.get('ua'))} ± {_fmt(r.get('ua_std'))}" if r.get("ua") is not None else "-",
        "WA": _fmt(r.get("wa")),
        "F1": _fmt(r.get("macro_f1", r.get("f1"))),
        "pooled UA": _fmt(r.get("pooled_ua")),
        "folds": _fmt(r.get("folds")),
        "protocol": r.get("protocol") or "-",
        "speaker-dep.": "yes" if r.get("speaker_dependent") else "no",
        "status": r.get("status", "logged"),
    } for r in rows]
    columns = ["run", "id", "UA", "WA", "F1", "pooled UA", "folds", "protocol", "speaker-dep.", "status"]
    return "\n".join([table(out, columns), *differs_block(rows)])


def differs_block(rows: list[dict[str, Any]], *, width: int = 100) -> list[str]:
    """Below the table, the params that differ between the listed runs, one wrapped entry per run
    (a column of them would make the table as wide as the longest list)."""
    import textwrap

    listed = [r for r in rows if r.get("differs")]
    if not listed:
        return []
    lines = ["params that differ between these runs:"]
    for r in listed:
        head = f"  {(r.get('run_id') or '')[:12] or r.get('run_name') or r.get('label')}: "
        lines += textwrap.wrap(str(r["differs"]), width=width, initial_indent=head,
                               subsequent_indent=" " * len(head), break_on_hyphens=False)
    return lines


def with_previous_runs(summary: dict[str, Any], uri: str) -> None:
    """After a ``ser run`` that logged new runs: ``summary["history"]`` = per MLflow experiment, the
    new runs beside the previous runs of the same models (before against after). Nothing is read
    (and MLflow is not imported) when every track stage was cached."""
    new = [r for r in summary.get("track", []) if r.get("status") == "computed" and r.get("run_id")]
    if not new:
        return
    from ser_pipeline.tracking.compare import compare_runs  # mlflow: only when something was logged

    models = sorted({r["model"] for r in summary.get("train", []) if r.get("model")})
    ids = [r["run_id"] for r in new]
    summary["history"] = {exp: compare_runs(exp, uri=uri, models=models, new=ids)
                          for exp in sorted({r["experiment"] for r in new if r.get("experiment")})}


def ui_hint(uri: str) -> str:
    if uri.startswith(("http://", "https://")):
        return f"MLflow UI: open {uri}"
    return f"MLflow UI: ser ui   (or: mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000)"


def human_run(summary: dict[str, Any]) -> str:
    parts = [table(stage_rows(summary), ["stage", "item", "status", "seconds", "detail"])]
    if summary.get("comparison"):
        parts += ["", f"comparison ({', '.join(summary.get('experiments', []))}; UA = mean ± std over folds, "
                  "unweighted average recall)", comparison_table(summary["comparison"])]
    for name, rows in (summary.get("history") or {}).items():
        parts += ["", f"MLflow experiment {name}: new runs (*) beside the previous runs of the same models",
                  comparison_table(rows)]
    if summary.get("error"):  # never a success line for a failed run; the error line goes to stderr
        parts += ["", f"FAILED after {summary.get('seconds', 0):.1f} s"]
        return "\n".join(parts)
    if summary.get("orchestrator"):  # nothing to run: read from the stage records
        parts += ["", f"every stage cached: read from the stage records in {summary.get('seconds', 0):.1f} s; "
                  "no Prefect flow started (--flow runs it through Prefect anyway)"]
    else:
        state = "every stage cached" if summary.get("all_cached") else "done"
        parts += ["", f"{state} in {summary.get('seconds', 0):.1f} s (pipeline flow, after Prefect start-up)"]
    parts.append(ui_hint(summary.get("tracking_uri", "")))
    return "\n".join(parts)


def run_pipeline(config: str, root: str | None, *, stages: list[str], force: list[str],
                 tracking_uri: str | None) -> dict[str, Any]:
    """Run the pipeline flow in-process (Prefect local mode unless PREFECT_API_URL is set)."""
    from flows.env import (  # prefect: only commands that run flows
        check_prefect_api,
        configure,
        init_local_prefect_db,
    )

    ws = workspace(root)
    configure(ws.root)
    check_prefect_api()
    init_local_prefect_db()
    from flows.pipeline import pipeline_flow
    from ser_pipeline.pipeline.summary import last_run_path

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


def predict_with_uri(model_uri: str, paths: list[str], *, tracking_uri: str | None = None
                     ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Predict with a model folder (``<root>/experiments/<id>`` or its ``model/``) or an MLflow model
    URI (``models:/<name>@champion``, ``models:/<name>/<version>``, ``runs:/<run>/model``).

    ``paths`` are expanded (:func:`ser_pipeline.inference.inputs.expand_inputs`: files, folders,
    globs, CSVs with a ``path`` column); the model is loaded once and the files scored in batches.
    Registry models are downloaded as plain files and rebuilt from ``model.json`` and state dicts
    (nothing is unpickled). Returns ``(results, model info)``; the info names the resolved version.
    """
    import tempfile

    from ser_pipeline.inference.inputs import expand_inputs
    from ser_pipeline.inference.predictor import load_predictor, predict_paths  # heavy (torch)

    if not paths:
        raise ConfigError("PATH: give at least one audio file (or a folder, glob or CSV)")
    files = expand_inputs(list(paths))
    if not files:
        raise ConfigError(f"PATH {' '.join(paths)}: no audio files found")
    if Path(model_uri).exists():
        predictor = load_predictor(model_uri)
        info: dict[str, Any] = {"model_uri": str(Path(model_uri).resolve()), "resolved": str(Path(model_uri).resolve()),
                                "version": "local folder", "run_id": None}
    else:
        if not model_uri.startswith(("models:/", "runs:/")):
            raise ConfigError(f"MODEL {model_uri!r}: path does not exist (give a model folder, models:/<name>@champion "
                              "or runs:/<run>/model)")
        from ser_pipeline.tracking.pyfunc import fetch_model  # mlflow: only for a registry URI

        with tempfile.TemporaryDirectory(prefix="ser-model-") as tmp:
            folder, info = fetch_model(model_uri, tmp, uri=tracking_uri)
            predictor = load_predictor(folder)
    info.update(selected_by=predictor.meta.get("selected_by", ""), fold=predictor.meta.get("fold"))
    return predict_paths(predictor, files), {**info, "classes": predictor.classes}


def write_predictions(path: Path, results: list[dict[str, Any]], info: dict[str, Any]) -> None:
    """``predictions.csv``: path, label, p_<class>..., error, model_uri, model_version."""
    import pandas as pd

    classes = info["classes"]
    frame = pd.DataFrame([{"path": r["path"], "label": r["emotion"] or "",
                           **{f"p_{c}": r["probabilities"].get(c) for c in classes}, "error": r["error"] or "",
                           "model_uri": info["model_uri"], "model_version": info.get("version") or ""}
                          for r in results])
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_csv(path, index=False)


def pipeline_plan(cfg: PipelineConfig, planned: list[PlannedExperiment], root: Path, plan: list[str],
                  forced: list[str], uri: str) -> dict[str, Any]:
    """What ``ser run`` would do: per stage and item, ``run`` or ``cached`` (from the stage records;
    stages after an uncached one are ``run`` when their inputs are not known yet)."""
    from ser_pipeline.pipeline.summary import stage_items  # heavy (torch, pandas)

    rows = [{"stage": i.stage, "item": i.item, "status": "cached" if i.record is not None else "run"}
            for i in stage_items(cfg, planned, str(root), plan=plan, uri=uri, forced=forced) if i.stage != "track"]
    return {"config": cfg.name, "root": str(root), "tracking_uri": uri, "stages": plan, "plan": rows,
            "experiments": len(planned)}


def human_plan(p: dict[str, Any]) -> str:
    return "\n".join([f"config {p['config']}: valid; {p['experiments']} experiment(s); root {p['root']}",
                      table(p["plan"], ["stage", "item", "status"]), "(--check: nothing was started)"])


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
        check: Annotated[bool, typer.Option("--check", help="Validate the config and print the plan (which "
                                            "stages would run, which are cached); start nothing.")] = False,
        through_prefect: Annotated[bool, typer.Option("--flow", help="Run the Prefect flow even when every stage "
                                                      "is cached (default: a fully cached run is read from the "
                                                      "stage records without starting Prefect).")] = False,
        as_json: JsonOption = False,
    ) -> None:
        """Run the pipeline DAG through Prefect: ingest -> featurize -> train -> MLflow, with caching."""
        from ser_pipeline.pipeline.config import (  # heavy (torch): the experiment layer
            check_config,
            stage_plan,
        )

        plan = list(stage_plan(stage=stage, start=start))
        forced = list(force or [])
        bad = [f for f in forced if f not in (*STAGES, "track")]
        if bad:
            raise SerError(f"--force {bad[0]!r}: valid stages: {', '.join((*STAGES, 'track'))}")
        cfg, planned = check_config(config)  # every section validated, before Prefect starts
        if check:
            uri = tracking_uri or default_tracking_uri()
            emit(pipeline_plan(cfg, planned, workspace(root).root, plan, forced, uri), as_json, human_plan)
            return
        summary = None
        if not forced and not through_prefect:
            from ser_pipeline.pipeline.summary import cached_run_summary  # the stage records: nothing to run?

            summary = cached_run_summary(str(Path(config).resolve()), cfg, planned, str(workspace(root).root),
                                         plan=plan, uri=tracking_uri or default_tracking_uri())
        if summary is None:
            summary = run_pipeline(config, root, stages=plan, force=forced, tracking_uri=tracking_uri)
        try:
            with_previous_runs(summary, summary.get("tracking_uri") or tracking_uri or default_tracking_uri())
        except SerError as exc:
            summary["history_error"] = str(exc)
        emit(summary, as_json, human_run)
        if summary.get("error"):
            typer.echo(f"error: {summary['error']}", err=True)
            raise typer.Exit(2)

    @app.command("schedule")
    def schedule_cmd(
        file: Annotated[str, typer.Option("--file", help="Deployments file.")] = "prefect.yaml",
        only: Annotated[list[str] | None, typer.Option("--only", help="Serve only this deployment (repeatable).")] = None,
        root: RootOption = None,
        limit: Annotated[int | None, typer.Option("--limit", help="Max concurrent runs.")] = None,
    ) -> None:
        """Serve the cron-scheduled deployments of prefect.yaml from this process (Ctrl-C stops)."""
        from flows.env import check_prefect_api, configure

        ws = workspace(root)
        configure(ws.root)
        check_prefect_api()
        from flows.serve import serve_all

        overrides = {"root": str(ws.root)}
        serve_all(file, only=only, overrides=overrides, limit=limit)

    @app.command("compare")
    def compare_cmd(
        experiment: Annotated[str | None, typer.Argument(help="MLflow experiment (default: all).")] = None,
        runs: Annotated[list[str] | None, typer.Option(
            "--run", help="Only this run (repeatable): a run name, a full run id or the short id the CLI prints.")] = None,
        test: Annotated[tuple[str, str] | None, typer.Option(
            "--test", help="Paired t-test and Wilcoxon over folds between two runs (names or ids).")] = None,
        metric: Annotated[str, typer.Option("--metric", help="Fold metric for --test.")] = "ua",
        tracking_uri: TrackingOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Print models side by side from MLflow (UA, WA, F1, folds, protocol, speaker-dependent flag)."""
        from ser_pipeline.tracking import compare  # mlflow: imported only by the commands that use it

        uri = tracking_uri or default_tracking_uri()
        names = [experiment] if experiment else compare.list_experiments(uri)
        if runs and len(names) != 1:
            raise SerError("--run needs one EXPERIMENT argument")
        payload: dict[str, Any] = {"tracking_uri": uri,
                                   "experiments": {n: compare.compare_runs(n, uri=uri, runs=runs) for n in names}}
        if test:
            if len(names) != 1:
                raise SerError("--test needs one EXPERIMENT argument")
            a = compare.fold_scores(names[0], test[0], metric=metric, uri=uri)
            b = compare.fold_scores(names[0], test[1], metric=metric, uri=uri)
            payload["test"] = {"a": test[0], "b": test[1], "metric": metric, **compare.paired_test(a, b)}

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

    @app.command("track")
    def track_cmd(
        experiment_dir: Annotated[str, typer.Argument(help="A finished experiment folder (<root>/experiments/<id>).")],
        experiment: Annotated[str | None, typer.Option("--experiment", help="MLflow experiment "
                                                       "(default <corpus>-<protocol>).")] = None,
        register: Annotated[bool, typer.Option("--register/--no-register", help="Register the model.")] = True,
        force: Annotated[bool, typer.Option("--force", help="Log again even if a run with this config exists.")] = False,
        root: RootOption = None,
        tracking_uri: TrackingOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Log an existing experiment folder to MLflow (parent run, fold runs, metrics, model)."""
        from ser_pipeline.experiments.record import ExperimentRecord
        from ser_pipeline.tracking.runs import (
            log_experiment,  # mlflow: imported only by the commands that use it
        )

        record = ExperimentRecord.read(experiment_dir)
        out = log_experiment(record, experiment=experiment or f"{record.corpus}-{record.protocol}",
                             uri=tracking_uri, register=register, force=force,
                             manifest_path=workspace(root).manifest_path(record.corpus))
        emit(out, as_json, lambda o: f"{o['status']}: run {o['run_id'][:12]} {o['run_name']} in MLflow experiment "
             f"{o['experiment']}" + (f"; registered {o['registered']}" if o.get("registered") else ""))

    @app.command("predict")
    def predict_cmd(
        model_uri: Annotated[str, typer.Argument(help="models:/<name>@champion, models:/<name>/<version>, "
                                                 "runs:/<id>/model, or a model folder.")],
        audio: Annotated[list[str], typer.Argument(help="Audio files, folders (recursive), globs, or CSVs with a "
                                                   "'path' column.")],
        out: Annotated[str | None, typer.Option("--out", help="Write predictions.csv here (path, label, "
                                                "probability per class, model URI and version).")] = None,
        tracking_uri: TrackingOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Predict the emotion of audio files with a trained or registered model (loaded once, batched;
        per-file errors, the other files still predicted)."""
        results, info = predict_with_uri(model_uri, audio, tracking_uri=tracking_uri)
        where = f"{info['model_uri']}" + (f" -> {info['version']}" if info.get("version") and
                                           info["version"] != "local folder" else "")
        typer.echo(f"model {where}; {info['selected_by'] or 'model'}"
                   + (f" (fold {info['fold']})" if info.get("fold") else ""), err=True)
        if out:
            write_predictions(Path(out), results, info)
        failed = [r for r in results if r.get("error")]

        def human(rows: list[dict[str, Any]]) -> str:
            lines = []
            for r in rows:
                if r.get("error"):
                    lines.append(f"{r['path']}: error: {r['error']}")
                elif len(rows) <= 20 or not out:
                    probs = "  ".join(f"{k} {v:.2f}" for k, v in sorted(r["probabilities"].items(), key=lambda kv: -kv[1]))
                    lines.append(f"{r['path']}: {r['emotion']}  ({probs})")
            lines.append(f"{len(rows) - len(failed)} predicted, {len(failed)} error(s)"
                         + (f"; written to {out}" if out else ""))
            return "\n".join(lines)

        for r in results:
            r.update(model_uri=info["model_uri"], model_version=info.get("version"))
        emit(results, as_json, human)
        if results and len(failed) == len(results):
            raise typer.Exit(1)

    @app.command("ui")
    def ui_cmd(
        launch: Annotated[bool, typer.Option("--launch", help="Start the MLflow UI instead of printing the command.")] = False,
        port: Annotated[int, typer.Option("--port", min=1, max=65535, help="Port on 127.0.0.1.")] = 5000,
        workers: Annotated[int, typer.Option("--workers", min=1, help="Server worker processes (1 answers "
                                             "fastest on a small machine).")] = 1,
        tracking_uri: TrackingOption = None,
    ) -> None:
        """Print (or launch) the command that opens the MLflow UI on the local store, bound to 127.0.0.1."""
        uri = tracking_uri or default_tracking_uri()
        if uri.startswith(("http://", "https://")):
            typer.echo(f"open {uri} in a browser")
            return
        root = Path(uri.removeprefix("sqlite:///")).parent / "artifacts"
        cmd = [sys.executable, "-m", "mlflow", "ui", "--backend-store-uri", uri, "--default-artifact-root",
               root.as_uri(), "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
        if not launch:
            typer.echo(" ".join(shlex.quote(c) for c in ["mlflow", *cmd[3:]]))
            return
        if port_in_use("127.0.0.1", port):
            raise SerError(f"port {port} on 127.0.0.1 is already in use (an MLflow UI already running? open "
                           f"http://127.0.0.1:{port}); or choose another with --port")
        typer.echo(f"MLflow UI on http://127.0.0.1:{port} ({workers} worker(s)); Ctrl-C stops", err=True)
        try:
            raise typer.Exit(subprocess.call(cmd))
        except KeyboardInterrupt:
            raise typer.Exit(0) from None


def port_in_use(host: str, port: int) -> bool:
    """True when something already listens on ``host:port``."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(0.5)
        return s.connect_ex((host, port)) == 0
