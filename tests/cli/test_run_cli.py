"""Honest exits of ``ser run`` / ``ser schedule``: one ``error:`` line and exit 2, ``--verbose``
tracebacks, no success line after a failure, ``--json`` keeps stdout to the JSON document."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from ser_pipeline.cli import main
from ser_pipeline.cli.common import JsonOption, emit
from ser_pipeline.cli.run_cmds import human_run

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo.yaml"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:
        main(list(args))
    out = capsys.readouterr()
    return int(exit_.value.code or 0), out.out, out.err


@pytest.mark.parametrize("command", [["run", str(CONFIG)], ["schedule", "--file", str(CONFIG.parents[1] / "prefect.yaml")]])
def test_unreachable_prefect_api_is_one_line(command: list[str], tmp_path: Path, monkeypatch, capsys) -> None:
    url = f"http://127.0.0.1:{_free_port()}/api"
    monkeypatch.setenv("PREFECT_API_URL", url)
    code, out, err = call(capsys, *command, "--root", str(tmp_path))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"error: Prefect API {url} is unreachable") and "Traceback" not in err
    code, _, err = call(capsys, "--verbose", *command, "--root", str(tmp_path))
    assert code == 2 and "Traceback" in err and err.rstrip().splitlines()[-1].startswith("error: Prefect API")


def test_a_user_error_after_the_command_with_verbose(tmp_path: Path, capsys) -> None:
    code, _, err = call(capsys, "run", str(tmp_path / "missing.yaml"), "--verbose")
    assert code == 2 and "Traceback" in err and "missing.yaml: file not found" in err


def test_a_failed_run_prints_no_success_line() -> None:
    summary = {"ingest": [{"corpus": "demo", "status": "cached", "seconds": 0.1}], "featurize": [], "train": [
        {"label": "cnn", "status": "failed", "error": "error: boom"}], "track": [], "all_cached": True, "seconds": 3.2,
        "error": "1 model(s) failed: cnn", "tracking_uri": "sqlite:///x"}
    text = human_run(summary)
    assert "FAILED after 3.2 s" in text
    assert "every stage cached" not in text and "done in" not in text and "MLflow UI" not in text
    ok = human_run({**summary, "error": None, "train": []})
    assert "every stage cached in 3.2 s" in ok


def test_json_mode_sends_library_prints_to_stderr() -> None:
    app = typer.Typer()

    @app.command()
    def noisy(as_json: JsonOption = False) -> None:
        print("🏃 View run cnn at: http://127.0.0.1/#/runs/1")  # what MLflow writes on stdout
        emit({"ok": 1}, as_json)

    @app.command()
    def other() -> None:
        pass

    result = CliRunner().invoke(app, ["noisy", "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"ok": 1}
    assert "View run" in result.stderr
