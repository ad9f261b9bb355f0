"""The ``ser`` command. Each command group lives in its own module with a ``register(app)``.

Every command has ``--help``; every command that reports something takes ``--json`` and then
prints exactly one JSON document on stdout. Project errors (:class:`SerError`) print a one-line
message on stderr and exit with code 2.
"""

from __future__ import annotations

import importlib
import sys

import typer

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

for _module in COMMAND_MODULES:
    importlib.import_module(_module).register(app)


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    try:
        app(args=argv, standalone_mode=True)
    except SerError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
