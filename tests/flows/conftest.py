"""Isolate Prefect for the flow tests: before anything imports prefect, point PREFECT_HOME at a
temporary folder (its local-mode API server, SQLite database and result cache live there, never in
~/.prefect) and drop any PREFECT_API_URL so the tests never talk to a real server by accident."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

_HOME = Path(tempfile.mkdtemp(prefix="ser-prefect-test-"))
os.environ["PREFECT_HOME"] = str(_HOME)
os.environ["PREFECT_RESULTS_LOCAL_STORAGE_PATH"] = str(_HOME / "storage")
os.environ.pop("PREFECT_API_URL", None)
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["DO_NOT_TRACK"] = "1"
os.environ["PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS"] = "180"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"


@pytest.fixture(scope="session", autouse=True)
def _prefect_home() -> Path:
    yield _HOME
    shutil.rmtree(_HOME, ignore_errors=True)
