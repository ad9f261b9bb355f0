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

_app = typer.Typer(
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

# Which module registers a top-level command: ``ser featurize`` then imports only store_cmds (no
# torch, no MLflow, no Prefect), so a no-op featurize starts fast. Any other word (``--help``, a
# command not listed here) loads every module.
COMMAND_HOMES = {
    "corpora": "ser_pipeline.cli.corpora_cmds", "ingest": "ser_pipeline.cli.corpora_cmds",
    "demo": "ser_pipeline.cli.corpora_cmds", "manifests": "ser_pipeline.cli.corpora_cmds",
    "featurize": "ser_pipeline.cli.store_cmds", "store": "ser_pipeline.cli.store_cmds",
}
_registered: set[str] = set()


def __getattr__(name: str) -> typer.Typer:
    """``from ser_pipeline.cli import app``: the app with every command registered (tests, docs)."""
    if name == "app":
        register_commands([])
        return _app
    raise AttributeError(name)


def register_commands(argv: list[str]) -> None:
    """Register the module of the command in ``argv`` (its first word), or every module."""
    first = next((a for a in argv if not a.startswith("-")), None)
    wanted = [COMMAND_HOMES[first]] if first in COMMAND_HOMES else list(COMMAND_MODULES)
    for module in wanted:
        if module not in _registered:
            importlib.import_module(module).register(_app)
            _registered.add(module)


@_app.callback()
def _options(verbose: Annotated[bool, typer.Option(
        "--verbose", "-v", help="Show library warnings, progress bars and tracebacks.")] = False) -> None:
    """Speech emotion recognition: ingest corpora, cache features, train, track and compare."""
    common.VERBOSE["on"] = verbose
    if not verbose:
        common.quiet_libraries()


def main(argv: list[str] | None = None) -> None:
    """Console-script entry point."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if "--verbose" in argv[1:]:  # accepted after the command too: `ser run CONFIG --verbose`
        argv = ["--verbose", *[a for a in argv if a != "--verbose"]]
    if "--verbose" not in argv and "-v" not in argv[:1]:
        common.quiet_libraries()  # before any command imports mlflow or prefect
    register_commands(argv)
    try:
        _app(args=argv, standalone_mode=True)
    except SerError as exc:
        if common.VERBOSE["on"]:
            traceback.print_exc()
        typer.echo(f"error: {exc}", err=True)
        sys.exit(2)
