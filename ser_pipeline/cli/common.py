"""Options and output helpers shared by every command module.

``--json`` makes a command print exactly one JSON document on stdout: while the command runs,
``sys.stdout`` is pointed at stderr (libraries that print, such as MLflow's "View run" line, end up
there) and :func:`emit` writes the document to the real stdout.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import warnings
from collections.abc import Callable
from typing import Annotated, Any, TextIO

import typer

from ser_pipeline.workspace import Workspace

_JSON_OUT: list[TextIO] = []  # the real stdout while a --json command runs
VERBOSE = {"on": False}


def _json_mode(ctx: typer.Context, value: bool) -> bool:
    """``--json`` callback: send everything but the JSON document to stderr until the command ends."""
    if value and not _JSON_OUT:
        _JSON_OUT.append(sys.stdout)
        sys.stdout = sys.stderr

        def restore() -> None:
            if _JSON_OUT:
                sys.stdout = _JSON_OUT.pop()

        ctx.call_on_close(restore)
    return value


RootOption = Annotated[
    str | None,
    typer.Option("--root", envvar="SER_ROOT", help="Workspace root (default ./ser-data)."),
]
JsonOption = Annotated[bool, typer.Option("--json", callback=_json_mode,
                                          help="Print one JSON document on stdout (nothing else).")]


def quiet_libraries() -> None:
    """Silence MLflow's and Prefect's own warnings, progress bars and chatter (``--verbose`` keeps them)."""
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "ERROR")  # mlflow sets its logger's level when imported
    for module in ("mlflow", "alembic", "cloudpickle", "prefect", "pydantic", "huggingface_hub"):
        warnings.filterwarnings("ignore", module=rf"{module}(\..*)?")
    warnings.filterwarnings("ignore", message=r".*(CloudPickle|cloudpickle|dataset source).*")
    for name in ("mlflow", "alembic", "prefect", "httpx", "distributed", "urllib3"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.formatwarning = _one_line_warning
    if not getattr(warnings.showwarning, "once_per_message", False):
        warnings.showwarning = _once_per_message(warnings.showwarning)


def _once_per_message(show: Callable[..., None]) -> Callable[..., None]:
    """``warnings.showwarning`` that shows each message text once per process: a recipe note is
    warned where the recipe is resolved, which one command does more than once."""
    shown: set[str] = set()

    def showwarning(message: Warning | str, *args: Any, **kwargs: Any) -> None:
        if str(message) not in shown:
            shown.add(str(message))
            show(message, *args, **kwargs)

    showwarning.once_per_message = True  # type: ignore[attr-defined]
    return showwarning


def _one_line_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                      line: str | None = None) -> str:
    """A warning as one ``warning: ...`` line (no file, no source line; ``--verbose`` keeps
    Python's own format)."""
    return f"warning: {message}\n"


def workspace(root: str | None) -> Workspace:
    return Workspace.resolve(root)


def emit(payload: Any, as_json: bool, human: Callable[[Any], str] | None = None) -> None:
    """Print ``payload`` as one JSON document, or as text through ``human``."""
    if as_json:
        out = _JSON_OUT[-1] if _JSON_OUT else sys.stdout
        out.write(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
        out.flush()
    else:
        typer.echo(human(payload) if human else json.dumps(payload, indent=2, default=str))


def table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table with aligned columns."""
    cells = [[str(r.get(c, "")) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    line = lambda vals: "  ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True))  # noqa: E731
    return "\n".join([line(columns), line(["-" * w for w in widths])] + [line(r) for r in cells])


def say(line: str) -> None:
    """A progress line on stderr (stdout stays for results and ``--json``)."""
    typer.echo(line, err=True)
