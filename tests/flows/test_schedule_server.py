"""A real Prefect server on loopback: `ser schedule` registers the deployments of a prefect.yaml
(cron schedules) and serves them; a triggered run of the ingest deployment completes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from flow_helpers import REPO, SER, free_port, repo_env, stop, wait_healthy

pytestmark = [pytest.mark.server, pytest.mark.slow, pytest.mark.timeout(600)]

TRIGGER = """
import json, sys
from prefect.client.orchestration import get_client
from prefect.deployments import run_deployment
import time
name = sys.argv[1]
deadline = time.time() + 240
while True:
    try:
        with get_client(sync_client=True) as client:
            dep = client.read_deployment_by_name(name)
        break
    except Exception:
        if time.time() > deadline:
            raise
        time.sleep(1)
run = run_deployment(name, timeout=300)
crons = [s.schedule.cron for s in dep.schedules]
print(json.dumps({"state": run.state.type.value, "name": run.state.name, "crons": crons,
                  "parameters": run.parameters}))
"""


def test_scheduled_deployment_runs_on_a_real_server(tmp_path: Path) -> None:
    port = free_port()
    home = tmp_path / "prefect-home"
    env = repo_env(PREFECT_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", DO_NOT_TRACK="1",
                   PREFECT_API_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{tmp_path}/prefect.db")
    server = subprocess.Popen([sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)], env=env, stdout=subprocess.DEVNULL,
                              stderr=(tmp_path / "server.log").open("w"))
    served = None
    try:
        wait_healthy(f"http://127.0.0.1:{port}/api/health", server)
        api = {"PREFECT_API_URL": f"http://127.0.0.1:{port}/api"}
        config = tmp_path / "tiny.yaml"
        config.write_text(yaml.safe_dump({
            "name": "sched", "models": ["cnn"],
            "corpora": [{"name": "tiny", "adapter": "demo",
                         "options": {"n_speakers": 2, "per_class": 1, "classes": ["anger", "sadness"]}}],
        }))
        deployments = tmp_path / "prefect.yaml"
        deployments.write_text(yaml.safe_dump({"deployments": [{
            "name": "test-ingest", "entrypoint": "flows/ingest.py:ingest_flow",
            "parameters": {"config": str(config)}, "schedules": [{"cron": "0 3 * * *", "timezone": "UTC"}],
        }]}))
        root = tmp_path / "root"
        served = subprocess.Popen([*SER, "schedule", "--file", str(deployments), "--root", str(root)], cwd=REPO, env={**env, **api},
                                  stdout=(tmp_path / "serve.out").open("w"), stderr=subprocess.STDOUT)
        out = subprocess.run([sys.executable, "-c", TRIGGER, "ingest/test-ingest"], env={**env, **api},
                             capture_output=True, text=True, timeout=420, check=False)
        log = (tmp_path / "serve.out").read_text()[-3000:]
        assert out.returncode == 0, out.stderr[-3000:] + log
        result = json.loads(out.stdout.strip().splitlines()[-1])
        assert result["state"] == "COMPLETED", log
        assert result["crons"] == ["0 3 * * *"]
        assert result["parameters"]["root"] == str(root)
        summary = json.loads((root / "manifests" / "tiny.json").read_text())
        assert summary["utterances"] == 4
    finally:
        if served is not None:
            stop(served)
        stop(server)
