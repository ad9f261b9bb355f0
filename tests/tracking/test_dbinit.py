"""First-time initialisation of the local MLflow and Prefect SQLite databases by two real
processes started at the same moment on a fresh folder."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from ser_pipeline.tracking.dbinit import initialise_once

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import os, sys, time
    from pathlib import Path
    start = float(sys.argv[2])
    while time.time() < start:  # both processes leave this line together
        time.sleep(0.005)
    from flows.env import configure, init_local_prefect_db
    configure(sys.argv[1])
    from ser_pipeline.tracking.runs import client_for, ensure_experiment
    uri = f"sqlite:///{sys.argv[1]}/mlruns/mlflow.db"
    client = client_for(uri)
    ensure_experiment(client, "both", uri)
    created = init_local_prefect_db()
    print("prefect-created" if created else "prefect-found")
""")


def test_initialise_once_runs_the_initialiser_once(tmp_path: Path) -> None:
    calls: list[int] = []
    db = tmp_path / "x.db"
    assert initialise_once(db, lambda: calls.append(1)) is True
    assert initialise_once(db, lambda: calls.append(2)) is False
    assert calls == [1] and (tmp_path / "x.db.ready").is_file()


def test_two_processes_initialise_fresh_databases_at_once(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "PREFECT_HOME")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    start = time.time() + 8  # both imports finish before the start line
    procs = [subprocess.Popen([sys.executable, "-c", SCRIPT, str(tmp_path), str(start)], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-3000:]
    assert sorted(o.strip() for o, _ in outs) == ["prefect-created", "prefect-found"]
    with sqlite3.connect(tmp_path / "mlruns" / "mlflow.db") as db:
        assert db.execute("select count(*) from experiments where name = 'both'").fetchone() == (1,)
        assert db.execute("select count(*) from alembic_version").fetchone() == (1,)
    with sqlite3.connect(tmp_path / "prefect" / "prefect.db") as db:
        assert db.execute("select count(*) from alembic_version").fetchone() == (1,)
        assert db.execute("select count(*) from sqlite_master where name = 'flow_run'").fetchone() == (1,)


if sys.platform == "win32":  # fcntl
    pytestmark = pytest.mark.skip("file locks via fcntl")
