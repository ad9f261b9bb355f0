"""What the ``ser`` command loads before it does anything: `ser --help` lists every command
without torch, pandas, zarr, MLflow or Prefect, and `ser featurize` never loads torch."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ("torch", "pandas", "zarr", "mlflow", "prefect", "sklearn")


def loaded_after(argv: list[str]) -> dict[str, bool]:
    """Register the commands ``ser`` would register for ``argv`` in a fresh interpreter and report
    which heavy modules that imported."""
    code = ("import json, sys; from ser_pipeline.cli import register_commands, _app; "
            f"register_commands({argv!r}); "
            "import typer.main; names = [c.name for c in typer.main.get_command(_app).commands.values()]; "
            f"print(json.dumps({{'names': names, **{{m: m in sys.modules for m in {HEAVY!r}}}}}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_help_lists_every_command_without_heavy_imports() -> None:
    got = loaded_after(["--help"])
    names = set(got.pop("names"))
    assert {"train", "run", "predict", "compare", "featurize", "store", "bench", "ui", "track", "models"} <= names
    assert not any(got.values()), got


def test_the_cli_stage_names_are_the_pipelines() -> None:
    from ser_pipeline.cli.run_cmds import STAGES
    from ser_pipeline.pipeline.config import STAGES as PIPELINE_STAGES

    assert STAGES == PIPELINE_STAGES
