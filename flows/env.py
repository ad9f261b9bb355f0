"""Environment defaults for Prefect, set before ``prefect`` is imported (this module does not import it).

- telemetry off (``PREFECT_SERVER_ANALYTICS_ENABLED=false``, ``DO_NOT_TRACK=1``, resource metrics off);
- ``PREFECT_HOME`` under the workspace (``<root>/prefect``) so local mode's temporary API server,
  its SQLite database and the task-result cache never touch ``~/.prefect``;
- a generous start-up timeout for the temporary server (its first start runs migrations).

Values already in the environment win, so ``PREFECT_API_URL`` selects a real server.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULTS = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "PREFECT_CLOUD_ENABLE_ORCHESTRATION_TELEMETRY": "false",
    "PREFECT_TELEMETRY_ENABLE_RESOURCE_METRICS": "false",
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "180",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


def prefect_env(root: str | os.PathLike[str]) -> dict[str, str]:
    """The defaults for workspace ``root`` (``PREFECT_HOME=<root>/prefect`` plus :data:`DEFAULTS`)."""
    home = Path(root).resolve() / "prefect"
    return {**DEFAULTS, "PREFECT_HOME": str(home),
            "PREFECT_RESULTS_LOCAL_STORAGE_PATH": str(home / "storage")}


def configure(root: str | os.PathLike[str]) -> dict[str, str]:
    """Apply :func:`prefect_env` to ``os.environ`` without overriding values already set; return them."""
    for key, value in prefect_env(root).items():
        os.environ.setdefault(key, value)
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    return {k: os.environ[k] for k in prefect_env(root)}


def check_prefect_api(timeout: float = 3.0) -> str | None:
    """When ``PREFECT_API_URL`` is set, make sure the server answers ``GET <url>/health`` before any
    flow starts; returns the URL (None in local mode). Raises ``SerError`` with one clear line."""
    import urllib.error
    import urllib.request

    from ser_pipeline.errors import SerError

    url = os.environ.get("PREFECT_API_URL", "").strip()
    if not url:
        return None
    try:
        with urllib.request.urlopen(url.rstrip("/") + "/health", timeout=timeout) as response:  # noqa: S310
            if response.status != 200:
                raise SerError(f"Prefect API {url} answered {response.status} on /health")
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise SerError(f"Prefect API {url} is unreachable ({reason}); start it (`prefect server start`) or unset PREFECT_API_URL to run in local mode") from None
    return url


def init_local_prefect_db() -> bool:
    """Local mode only (no ``PREFECT_API_URL``): create the temporary server's SQLite schema once,
    under a file lock, before the server starts; two processes starting on a fresh root at once
    would both run the migrations. Returns True when this call created it."""
    if os.environ.get("PREFECT_API_URL"):
        return False
    from ser_pipeline.tracking.dbinit import initialise_once

    def migrate() -> None:
        import asyncio

        from prefect.server.database import provide_database_interface

        asyncio.run(provide_database_interface().create_db())

    return initialise_once(Path(os.environ["PREFECT_HOME"]) / "prefect.db", migrate)
