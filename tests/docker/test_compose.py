"""docker/compose.yaml, parsed: every service has a healthcheck, published ports bind to loopback,
named volumes exist, credentials come from the .env file, the worker reserves a GPU."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

DOCKER = Path(__file__).resolve().parents[2] / "docker"
COMPOSE = DOCKER / "compose.yaml"
REQUIRED = {"postgres", "prefect-server", "prefect-worker", "mlflow", "dask-scheduler", "dask-worker"}


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_expected_services(compose: dict) -> None:
    assert REQUIRED <= set(compose["services"])


@pytest.mark.parametrize("service", sorted(REQUIRED))
def test_every_service_has_a_healthcheck(compose: dict, service: str) -> None:
    check = compose["services"][service].get("healthcheck")
    assert check and check.get("test"), f"{service} has no healthcheck"
    assert check["test"][0] in ("CMD", "CMD-SHELL")


def published_ports(compose: dict) -> list[tuple[str, str]]:
    return [(name, str(port)) for name, svc in compose["services"].items() for port in svc.get("ports", [])]


def test_published_ports_bind_to_loopback(compose: dict) -> None:
    ports = published_ports(compose)
    assert {name for name, _ in ports} >= {"prefect-server", "mlflow", "dask-scheduler"}
    for name, port in ports:
        assert port.startswith("127.0.0.1:"), f"{name} publishes {port} beyond loopback"


def test_named_volumes_are_declared(compose: dict) -> None:
    declared = set(compose.get("volumes") or {})
    used = set()
    for svc in compose["services"].values():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if not source.startswith((".", "/", "$")):
                used.add(source)
    assert used and used <= declared
    assert {"pgdata", "mlflow-artifacts"} <= used  # databases and artifacts persist


def test_mlflow_uses_postgres_and_a_persistent_artifact_store(compose: dict) -> None:
    mlflow = compose["services"]["mlflow"]
    command = mlflow["command"] if isinstance(mlflow["command"], str) else " ".join(mlflow["command"])
    assert "--backend-store-uri postgresql://" in command
    destination = re.search(r"--artifacts-destination (\S+)", command).group(1)
    assert any(v.endswith(f":{destination}") for v in mlflow["volumes"])
    assert mlflow["depends_on"]["postgres"]["condition"] == "service_healthy"


def test_worker_reserves_a_gpu_and_points_at_the_services(compose: dict) -> None:
    worker = compose["services"]["prefect-worker"]
    devices = worker["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]
    env = worker["environment"]
    assert env["PREFECT_API_URL"].startswith("http://prefect-server:")
    assert env["MLFLOW_TRACKING_URI"].startswith("http://mlflow:")
    assert env["SER_DASK_ADDRESS"].startswith("tcp://dask-scheduler:")


def test_credentials_come_from_env_and_an_example_ships(compose: dict) -> None:
    text = COMPOSE.read_text()
    assert "${POSTGRES_PASSWORD" in text
    assert not re.search(r"^\s*POSTGRES_PASSWORD:\s*[^$\s]", text, re.MULTILINE), "a literal password"
    example = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    for name in set(re.findall(r"\$\{(\w+)", text)):
        assert name in example, f"{name} is used by compose.yaml but missing from .env.example"


def test_dockerfile_has_cpu_and_cuda_variants() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "ARG VARIANT=cpu" in text
    assert re.search(r"FROM .+ AS base-cpu", text) and re.search(r"FROM nvidia/cuda:\S+ AS base-cuda", text)
    assert "FROM base-${VARIANT}" in text


def _compose_cli() -> list[str] | None:
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) and subprocess.run([*cmd, "version"], capture_output=True, check=False).returncode == 0:
            return cmd
    return None


def test_docker_compose_config_validates(tmp_path: Path) -> None:
    cmd = _compose_cli()
    if cmd is None:
        pytest.skip("no working `docker compose` client on this machine")
    env_file = tmp_path / ".env"
    env_file.write_text((DOCKER / ".env.example").read_text())
    out = subprocess.run([*cmd, "-f", str(COMPOSE), "--env-file", str(env_file), "config", "--quiet"],
                         capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
