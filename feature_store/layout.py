"""On-disk layout of the feature store and the write-once commit protocol.

A Zarr v3 hierarchy under ``<root>/features/``::

    zarr.json                                   root group
    sets/<feature digest>/zarr.json             group; attributes = lineage (spec, versions, created)
    sets/<feature digest>/manifests/<name>.<manifest digest>.json   manifests served (write-once)
    sets/<feature digest>/batches/<batch id>/   one committed batch: a Zarr group with array
                                                ``data`` (C, F, total_T) and attribute ``items``
    sets/<feature digest>/tmp/<batch id>/       a batch being written (never read)
    sets/<feature digest>/quarantine/<batch id>/  a batch whose item list was unreadable, set aside by
                                                ``ser store verify --repair`` (never read; gc removes)
    derived/<feature digest>/<checkpoint digest>/{zarr.json,batches/,tmp/}   derived items

Commit protocol (DESIGN.md convention 9): a writer builds a whole batch under ``tmp/<id>/``,
fsyncs it, then renames the directory to ``batches/<id>/`` (one atomic ``rename``). Readers list
only ``batches/``, so a killed writer never leaves anything that reads as complete. Batch ids are
unique per writer (time, host, pid, random), so concurrent writers never touch each other's files;
when two batches hold the same key the latest id wins (``--force`` relies on this).
"""

from __future__ import annotations

import errno
import json
import os
import socket
import time
import uuid
from pathlib import Path
from typing import Any

from ser_pipeline.errors import StoreError

SETS = "sets"
DERIVED = "derived"
BATCHES = "batches"
TMP = "tmp"
MANIFESTS = "manifests"
QUARANTINE = "quarantine"
META = "zarr.json"
STALE_TMP_S = 3600.0  # a temp batch of another host older than this is abandoned


def group_meta(attributes: dict[str, Any]) -> dict[str, Any]:
    """A Zarr v3 group ``zarr.json`` document."""
    return {"zarr_format": 3, "node_type": "group", "attributes": attributes}


def read_json(path: Path) -> Any:
    """Parsed JSON; StoreError names the file when it is missing or unreadable."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StoreError(f"{path}: unreadable store metadata ({exc})") from exc


def create_if_absent(path: Path, document: dict[str, Any]) -> bool:
    """Write ``document`` as JSON to ``path`` only if it does not exist (atomic; race-safe).

    Writes a temp file then hard-links it into place: ``link`` fails when another writer got
    there first, and readers never see a half-written file. Returns True when this call wrote it.
    """
    if path.exists():
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        with open(tmp, "w") as fh:
            json.dump(document, fh, indent=2, sort_keys=True, default=str)
            fh.flush()
            os.fsync(fh.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        return True
    finally:
        tmp.unlink(missing_ok=True)


def new_batch_id() -> str:
    """Unique, time-sortable batch id: ``<ns time hex>-<host>-<pid>-<random>``."""
    host = "".join(c for c in socket.gethostname() if c.isalnum())[:16] or "host"
    return f"{time.time_ns():016x}-{host}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def batch_owner(batch_id: str) -> tuple[str, int]:
    """``(host, pid)`` of the writer that made ``batch_id`` (``("", -1)`` when unparsable)."""
    parts = batch_id.split("-")
    try:
        return parts[1], int(parts[2])
    except (IndexError, ValueError):
        return "", -1


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def tmp_is_abandoned(tmp_dir: Path) -> bool:
    """A temp batch whose writer is dead (same host) or that is older than ``STALE_TMP_S``."""
    host, pid = batch_owner(tmp_dir.name)
    this_host = "".join(c for c in socket.gethostname() if c.isalnum())[:16] or "host"
    if host == this_host:
        return not pid_alive(pid)
    try:
        return time.time() - tmp_dir.stat().st_mtime > STALE_TMP_S
    except FileNotFoundError:
        return False


FSYNC_THREADS = 8  # fsyncs in flight at once: the file system commits them together


def fsync_tree(path: Path) -> None:
    """fsync every file and folder under ``path`` (so a commit survives a power cut).

    The fsyncs run on a few threads at once (fsync releases the GIL): the journal then commits them
    together, measured 4-7x faster than one after another for a 30-file batch. Returns when all are
    done; the first OSError is raised.
    """
    targets = []
    for dirpath, _dirs, files in os.walk(path):
        targets += [os.path.join(dirpath, name) for name in files]
        targets.append(dirpath)
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=max(1, min(FSYNC_THREADS, len(targets))), thread_name_prefix="fsync") as pool:
        list(pool.map(_fsync, targets))


def _fsync(target: str) -> None:
    fd = os.open(target, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable(path: Path) -> None:
    """StoreError naming ``path`` unless a folder can be created and written there."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".write-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        reason = errno.errorcode.get(exc.errno or 0, "") if exc.errno else ""
        raise StoreError(f"feature store {path} is not writable ({reason or type(exc).__name__}: {exc.strerror or exc})") from exc


def dir_bytes(path: Path) -> int:
    """Total size of the files under ``path``."""
    total = 0
    for dirpath, _dirs, files in os.walk(path):
        for name in files:
            try:
                total += os.path.getsize(os.path.join(dirpath, name))
            except OSError:
                pass
    return total
