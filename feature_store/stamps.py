"""File stamps of batches whose items were all read and checksummed clean (a stat cache, as git's index).

Reusing stored items needs every one of them checked (:meth:`_BatchedItems.check`), which reads and
decodes the whole set: about 0.5 s for CASIA's 1,200 log-Mel items, most of a no-op ``ser featurize``.
After a batch is checked clean, the stamp of each of its files (size, mtime, ctime, inode) is kept in
``<set>/checked.json``; a later check skips a batch whose files all still carry the same stamps.

What a stamp cannot see: bytes changed in place with size, mtime *and* ctime unchanged (a disk
fault below the file system). Those items still never reach a model: every read checks checksums
(:meth:`_BatchedItems.checked_parts`), and ``ser store verify`` reads everything regardless of stamps.

"Racy" files, modified within :data:`SETTLE_NS` of the check, are never stamped (a write in the same
clock tick would leave the stamp unchanged), so a batch written or damaged a moment ago is read in full.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

CHECKED = "checked.json"
SETTLE_NS = 2_000_000_000  # files younger than this are read in full, never stamped

Stamp = dict[str, list[int]]  # relative file path -> [size, mtime_ns, ctime_ns, inode]


def batch_stamp(batch_dir: Path) -> Stamp | None:
    """Stamps of every file under ``batch_dir``; None when it cannot be listed or a file vanished."""
    stamp: Stamp = {}
    try:
        for dirpath, _dirs, files in os.walk(batch_dir, onerror=_raise):
            for name in files:
                path = os.path.join(dirpath, name)
                st = os.stat(path)
                stamp[os.path.relpath(path, batch_dir)] = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
    except OSError:
        return None
    return stamp or None


def _raise(exc: OSError) -> None:
    raise exc


def is_settled(stamp: Stamp, now_ns: int | None = None) -> bool:
    """True when no file of ``stamp`` was modified (or had its inode changed) within :data:`SETTLE_NS`."""
    now = time.time_ns() if now_ns is None else now_ns
    return all(max(mtime, ctime) < now - SETTLE_NS for _size, mtime, ctime, _ino in stamp.values())


def read_stamps(set_dir: Path) -> dict[str, Stamp]:
    """``{batch id: stamp}`` recorded for ``set_dir``; empty when the file is missing or unreadable
    (a cache: the batches are then read in full)."""
    try:
        data = json.loads((set_dir / CHECKED).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def write_stamps(set_dir: Path, stamps: dict[str, Stamp]) -> None:
    """Replace ``<set>/checked.json`` atomically; a failed write (read-only store, full disk) is ignored."""
    tmp = set_dir / f".{CHECKED}.{os.getpid()}.tmp"
    try:
        tmp.write_text(json.dumps(stamps, separators=(",", ":")))
        os.replace(tmp, set_dir / CHECKED)
    except OSError:
        try:
            tmp.unlink()
        except OSError:
            pass
