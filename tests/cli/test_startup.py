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


def test_compare_table_lists_differing_params_below_it_wrapped() -> None:
    from ser_pipeline.cli.run_cmds import comparison_table

    long = ", ".join(f"hparams.p{i}={i}" for i in range(40))
    rows = [{"run_name": "cnn · a", "run_id": "a" * 32, "ua": 0.5, "ua_std": 0.1, "differs": long},
            {"run_name": "cnn · b", "run_id": "b" * 32, "ua": 0.6, "ua_std": 0.1, "differs": "seed=1"}]
    text = comparison_table(rows).splitlines()
    header = text[0]
    assert "differs" not in header and text.index("params that differ between these runs:") == 4
    body = text[5:]
    assert body[0].startswith("  aaaaaaaaaaaa: hparams.p0=0") and max(len(line) for line in body) <= 100
    assert body[-1] == "  bbbbbbbbbbbb: seed=1" and "hparams.p39=39" in " ".join(body)
    assert max(len(line) for line in text[:4]) < 150  # the table itself stays narrow
