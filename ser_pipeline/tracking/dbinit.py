"""Safe first-time initialisation of local SQLite databases when several processes start at once.

Two ``ser run`` started together on a fresh root both used to create the same SQLite schema
(MLflow's and Prefect's alembic migrations), and one failed (``duplicate column name``, ``Online
migration expected to match one row``). :func:`initialise_once` serialises the first
initialisation with an OS file lock beside the database and leaves a marker, so later processes
skip it without waiting. No mlflow or prefect import here: the caller passes the initialiser.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable
from pathlib import Path

_DONE: set[str] = set()  # databases this process has already checked


def initialise_once(database: str | os.PathLike[str], initialise: Callable[[], None]) -> bool:
    """Run ``initialise()`` for the SQLite file ``database`` unless its ready-marker exists;
    concurrent callers (threads or processes) wait on ``<database>.init.lock`` and the later ones
    find the marker. Returns True when this call ran the initialiser."""
    path = Path(database)
    key = str(path.resolve())
    marker = path.with_name(path.name + ".ready")
    if key in _DONE or marker.is_file():
        _DONE.add(key)
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".init.lock"), "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            if marker.is_file():
                return False
            initialise()
            marker.write_text("initialised\n")
            return True
        finally:
            _DONE.add(key)
            fcntl.flock(lock, fcntl.LOCK_UN)
