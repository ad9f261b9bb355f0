"""CLI commands: ``ser corpora``, ``ser ingest``, ``ser manifests``, ``ser demo``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ser_pipeline.cli.common import JsonOption, RootOption, emit, table, workspace
from ser_pipeline.errors import ConfigError

DEMO_NAME = "demo"


def parse_list(text: str | None) -> list[str] | None:
    """``"a,b"`` -> ``["a", "b"]``; None or empty -> None."""
    items = [t.strip() for t in (text or "").split(",") if t.strip()]
    return items or None


def parse_pairs(values: list[str] | None, *, option: str) -> dict[str, str]:
    """``["k=v", "a=b,c=d"]`` -> ``{"k": "v", "a": "b", "c": "d"}``; ConfigError names a bad item."""
    pairs: dict[str, str] = {}
    for value in values or []:
        for item in value.split(","):
            if not item.strip():
                continue
            key, sep, val = item.partition("=")
            if not sep or not key.strip() or not val.strip():
                raise ConfigError(f"{option} {item!r}: expected key=value")
            pairs[key.strip()] = val.strip()
    return pairs


def format_summary(summary: dict[str, Any]) -> str:
    """Human-readable ingest summary."""
    lines = [
        f"manifest {summary['name']}  digest {summary['digest']}",
        f"  utterances {summary['utterances']}  speakers {summary['speakers']}  sessions {summary.get('sessions', 0)}"
        f"  total duration {summary['total_duration_s'] / 60:.1f} min",
        "  classes: " + ", ".join(f"{k} {v}" for k, v in summary["classes"].items()),
        f"  rejected {summary['rejected']}"
        + ("".join(f"\n    {reason}: {n}" for reason, n in summary["rejects_by_reason"].items())),
    ]
    if summary.get("csv"):
        lines.insert(0, f"demo corpus {summary['csv']}")
    return "\n".join(lines)


def register(app: typer.Typer) -> None:
    """Add this group's commands to the ser app."""

    @app.command("explore")
    def explore_cmd(
        name: Annotated[str, typer.Argument(help="Ingested corpus (manifest) name.")],
        out: Annotated[str | None, typer.Option("--out", help="Output folder (default <root>/explore/<name>-<digest>).")] = None,
        per_class: Annotated[int, typer.Option("--per-class", min=0, help="Utterances per class for the mean "
                                               "log-Mel plot (0: no plot).")] = 20,
        root: RootOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Plot a corpus: class counts overall and per speaker, durations per class, sample rates and
        channels, rejects by reason, mean log-Mel per class (PNG files and explore.json)."""
        from ser_pipeline.pipeline.explore_stage import explore_corpus

        summary = explore_corpus(name, workspace(root), out, per_class=per_class)
        emit(summary, as_json, lambda s: "\n".join([
            f"{name}: {sum(s['classes'].values())} utterances, {len(s['per_speaker'])} speakers, "
            f"classes {', '.join(f'{k} {v}' for k, v in s['classes'].items())}",
            f"written to {s['folder']}: {', '.join(s['files'])}"]))

    @app.command("corpora")
    def corpora_cmd(as_json: JsonOption = False) -> None:
        """List corpus adapters with their expected folder layout and options."""
        from ser_pipeline.corpora import CORPORA

        entries = [CORPORA.get(n).describe() for n in CORPORA.names()]

        def human(items: list[dict[str, Any]]) -> str:
            rows = [{"adapter": e["name"], "layout": e["layout"],
                     "options": ", ".join(e["options"]) or "-"} for e in items]
            return table(rows, ["adapter", "layout", "options"])

        emit(entries, as_json, human)

    @app.command("ingest")
    def ingest_cmd(
        corpus: Annotated[str, typer.Argument(help="Adapter name (see `ser corpora`).")],
        path: Annotated[str, typer.Argument(help="Corpus folder (or CSV file for the csv adapter).")],
        name: Annotated[str | None, typer.Option("--name", help="Manifest name (default: adapter name).")] = None,
        keep: Annotated[str | None, typer.Option("--keep", help="Classes to keep, comma-separated.")] = None,
        merge: Annotated[
            list[str] | None, typer.Option("--merge", help="Merge classes, e.g. excited=happiness (repeatable).")
        ] = None,
        option: Annotated[
            list[str] | None, typer.Option("--option", "-o", help="Adapter option key=value (repeatable).")
        ] = None,
        min_duration: Annotated[float | None, typer.Option(
            "--min-duration", min=0.0, help="Reject utterances shorter than this many seconds (default 0.25).")] = None,
        root: RootOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Parse a corpus folder, validate every file and write the manifest; print a summary."""
        from ser_pipeline.corpora import ingest

        options = parse_pairs(option, option="--option")
        if min_duration is not None:
            options["min_duration"] = min_duration

        summary = ingest(
            corpus,
            path,
            name,
            workspace(root),
            keep=parse_list(keep),
            merge=parse_pairs(merge, option="--merge"),
            **options,
        )
        emit(summary, as_json, format_summary)

    @app.command("manifests")
    def manifests_cmd(root: RootOption = None, as_json: JsonOption = False) -> None:
        """List ingested manifests with their digests and counts."""
        from ser_pipeline.manifest import list_manifests, read_summary

        ws = workspace(root)
        summaries = [read_summary(n, ws) for n in list_manifests(ws)]
        keys = ["name", "digest", "utterances", "speakers", "rejected", "source"]

        def human(items: list[dict[str, Any]]) -> str:
            if not items:
                return f"no manifests under {ws.manifests}"
            return table([{k: s.get(k, "") for k in keys} for s in items], keys)

        emit(summaries, as_json, human)

    @app.command("demo")
    def demo_cmd(
        seed: Annotated[int, typer.Option("--seed", help="Seed of the synthetic corpus.")] = 0,
        per_class: Annotated[int, typer.Option("--per-class", help="Utterances per speaker and class.")] = 20,
        speakers: Annotated[int, typer.Option("--speakers", help="Number of synthetic speakers.")] = 4,
        root: RootOption = None,
        as_json: JsonOption = False,
    ) -> None:
        """Generate the synthetic demo corpus under <root>/demo and ingest it as manifest 'demo'."""
        from ser_pipeline.corpora import ingest
        from ser_pipeline.corpora.demo import generate_demo_corpus

        ws = workspace(root)
        csv_path = generate_demo_corpus(ws.demo, seed=seed, per_class=per_class, n_speakers=speakers)
        summary = ingest("csv", csv_path, DEMO_NAME, ws, corpus=DEMO_NAME)
        emit({**summary, "csv": str(csv_path), "seed": seed}, as_json, format_summary)
