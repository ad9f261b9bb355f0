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
    assert re.search(r"--backend-store-uri postgresql(\+psycopg2)?://postgres:5432/mlflow", command)
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


SECRET_VARS = ("POSTGRES_PASSWORD",)


def _command(service: dict) -> str:
    command = service.get("command", "")
    return command if isinstance(command, str) else " ".join(command)


def test_no_service_runs_as_root(compose: dict) -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    assert re.search(r"^USER ser$", dockerfile, re.MULTILINE)  # the project image drops root
    for name, svc in compose["services"].items():
        user = str(svc.get("user", ""))
        assert user.split(":")[0] not in ("root", "0"), f"{name} runs as root"
        if "build" not in svc:  # third-party images: an explicit non-root user
            assert user, f"{name} ({svc['image']}) sets no user"


def test_no_password_in_a_command_line_or_url(compose: dict) -> None:
    url_with_secret = re.compile(r"://[^/\s@]*:[^/\s@]*@")
    for name, svc in compose["services"].items():
        command = _command(svc)
        assert not url_with_secret.search(command), f"{name}: credentials in a URL on its command line"
        assert not any(f"${{{var}" in command for var in SECRET_VARS), f"{name}: a secret on its command line"
        for key, value in (svc.get("environment") or {}).items():
            value = str(value)
            assert not url_with_secret.search(value), f"{name}: {key} is a URL with credentials"
            if any(f"${{{var}" in value for var in SECRET_VARS):
                assert "PASSWORD" in key and value.startswith("${") and value.endswith("}"), f"{name}: {key}"


def _check_secrets_script(compose: dict) -> str:
    command = compose["services"]["check-secrets"]["command"]
    assert command[:2] == ["sh", "-c"]
    return command[2].replace("$$", "$")  # compose's escape for a literal $


@pytest.mark.parametrize("password,ok", [("change-me", False), ("short", False), ("a-real-secret-of-32-characters!!", True)])
def test_placeholder_password_refuses_to_start(compose: dict, password: str, ok: bool) -> None:
    example = dict(line.split("=", 1) for line in (DOCKER / ".env.example").read_text().splitlines()
                   if line and not line.startswith("#"))
    assert example["POSTGRES_PASSWORD"] == "change-me"  # the placeholder the check refuses
    for name, svc in compose["services"].items():
        if name == "check-secrets":
            continue
        waits = set(svc.get("depends_on") or {})
        assert waits, f"{name} starts without waiting for anything"
    for name in ("postgres", "dask-scheduler"):  # the roots of the dependency graph wait for the check
        assert compose["services"][name]["depends_on"]["check-secrets"]["condition"] == "service_completed_successfully"
    result = subprocess.run(["sh", "-c", _check_secrets_script(compose)], env={"POSTGRES_PASSWORD": password, "PATH": "/usr/bin:/bin"},
                            capture_output=True, text=True, check=False)
    assert (result.returncode == 0) == ok
    if not ok:
        assert result.stderr.startswith("error: POSTGRES_PASSWORD")
