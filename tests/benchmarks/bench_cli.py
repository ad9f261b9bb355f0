"""Calling the ``ser`` CLI in-process from the benchmark tests."""

from __future__ import annotations

import pytest

from ser_pipeline.cli import main


def call(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``ser ARGS`` in this process: ``(exit code, stdout, stderr)``."""
    capsys.readouterr()
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err
