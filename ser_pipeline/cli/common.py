"""Options and output helpers shared by every command module."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Annotated, Any

import typer

from ser_pipeline.workspace import Workspace

RootOption = Annotated[
    str | None,
    typer.Option("--root", envvar="SER_ROOT", help="Workspace root (default ./ser-data)."),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print one JSON document on stdout.")]


def workspace(root: str | None) -> Workspace:
    return Workspace.resolve(root)


def emit(payload: Any, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    """Print ``payload`` as one JSON document, or as text through ``human``."""
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    else:
        typer.echo(human(payload) if human else json.dumps(payload, indent=2, default=str))


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])
