"""The ``ser`` command. Each command group lives in its own module with a ``register(app)``.

Every command has ``--help``; every command that reports something takes ``--json`` and then
prints exactly one JSON document on stdout. Project errors (:class:`SerError`) print a one-line
message on stderr and exit with code 2.
"""

from __future__ import annotations

import importlib
import sys
import traceback
from typing import Annotated

import typer

from ser_pipeline.cli import common
from ser_pipeline.errors import SerError

app = typer.Typer(
    name="ser",
    help="Speech emotion recognition: ingest corpora, cache features, train, track and compare.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

# One module per command group; each defines register(app: typer.Typer) -> None.
COMMAND_MODULES = (
    "ser_pipeline.cli.corpora_cmds",   # corpora, ingest, demo, manifests
    "ser_pipeline.cli.store_cmds",     # featurize, store ls/verify/gc
    "ser_pipeline.cli.train_cmds",     # models, train
    "ser_pipeline.cli.bench_cmds",     # bench featurize / train
    "ser_pipeline.cli.run_cmds",       # run, schedule, compare, predict
)



@app.callback()
def _options(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show library warnings, progress bars and tracebacks.")] = False) -> None:
    """Speech emotion recognition: ingest corpora, cache features, train, track and compare."""
    common.VERBOSE["on"] = verbose
    if not verbose:
        common.quiet_libraries()


for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv[1:]:  # accepted after the command too: `ser run CONFIG --verbose`
        argv = ["--verbose", *[a for a in argv if a != "--verbose"]]
    if "--verbose" not in argv and "-v" not in argv[:1]:
        common.quiet_libraries()  # before any command imports mlflow or prefect
    try:
        app(args=argv, standalone_mode=True)
    except SerError as exc:
        if common.VERBOSE["on"]:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
