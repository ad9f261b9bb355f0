"""Serve the deployments declared in ``prefect.yaml`` from one process (``ser schedule``).

Each deployment's ``entrypoint`` (``flows/pipeline.py:pipeline_flow``) is imported, turned into a
runner deployment with its cron schedules and parameters, and all of them are served together by
``prefect.serve``: the process registers the deployments with the API (``PREFECT_API_URL``, or
local mode), fires scheduled runs and runs triggered ones.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

import yaml
from prefect import Flow, serve
from prefect.schedules import Cron

from ser_pipeline.errors import ConfigError

DEFAULT_FILE = Path(__file__).resolve().parents[1] / "prefect.yaml"


def read_deployments(path: str | Path = DEFAULT_FILE, *, only: list[str] | None = None) -> list[dict[str, Any]]:
    """The ``deployments`` entries of a prefect.yaml (optionally only the ``only`` names)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"deployments file {path}: not found")
    data = yaml.safe_load(path.read_text()) or {}
    entries = list(data.get("deployments") or [])
    if not entries:
        raise ConfigError(f"deployments file {path}: no 'deployments' entries")
    names = [e.get("name") for e in entries]
    if only:
        missing = sorted(set(only) - set(names))
        if missing:
            raise ConfigError(f"deployment(s) {missing} not in {path}; declared: {names}")
        entries = [e for e in entries if e.get("name") in only]
    return entries


def load_entrypoint(entrypoint: str, base: Path) -> Flow:
    """Import ``path/to/module.py:flow_name`` (relative to ``base``) and return the flow object."""
    try:
        file_part, attr = entrypoint.split(":")
    except ValueError:
        raise ConfigError(f"entrypoint={entrypoint!r}: expected 'path/to/file.py:flow_name'") from None
    module = ".".join(Path(file_part).with_suffix("").parts)
    try:
        obj = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"entrypoint={entrypoint!r} (from {base}): {exc}") from None
    if not isinstance(obj, Flow):
        raise ConfigError(f"entrypoint={entrypoint!r}: {attr} is not a Prefect flow")
    return obj


def schedules_of(entry: dict[str, Any]) -> list[Cron]:
    """Cron schedules of one prefect.yaml deployment entry (``schedules: [{cron, timezone}]``)."""
    out = []
    for item in entry.get("schedules") or []:
        if not isinstance(item, dict) or not item.get("cron"):
            raise ConfigError(f"deployment {entry.get('name')!r}: schedule {item!r} needs a 'cron' string")
        out.append(Cron(item["cron"], timezone=item.get("timezone"), active=bool(item.get("active", True))))
    return out


def runner_deployments(path: str | Path = DEFAULT_FILE, *, only: list[str] | None = None,
                       overrides: dict[str, Any] | None = None) -> list[Any]:
    """Runner deployments for the entries of ``path``; ``overrides`` update every entry's parameters."""
    path = Path(path)
    out = []
    for entry in read_deployments(path, only=only):
        flow_ = load_entrypoint(entry["entrypoint"], path.parent)
        params = {**(entry.get("parameters") or {}), **(overrides or {})}
        out.append(flow_.to_deployment(
            name=entry["name"], schedules=schedules_of(entry) or None, parameters=params,
            description=entry.get("description"), tags=entry.get("tags") or [],
        ))
    return out


def serve_all(path: str | Path = DEFAULT_FILE, *, only: list[str] | None = None,
              overrides: dict[str, Any] | None = None, limit: int | None = None) -> None:
    """Serve the deployments from this process until interrupted."""
    serve(*runner_deployments(path, only=only, overrides=overrides), limit=limit)
