"""Real processes: SIGKILL mid-run then re-run, and two featurize processes on one store at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np

from feature_store.layout import TMP
from feature_store.maintenance import verify
from feature_store.materialise import materialise
from feature_store.recordings import load_checked
from feature_store.store import FeatureStore
from ser_pipeline.features import extract, feature_spec
from ser_pipeline.manifest import write_manifest

SPEC = feature_spec("logmel64")

# Materialises manifest "tiny" in batches of 2. With a PAUSE_AT file named, the writer announces it
# has written (but not committed) its second batch by creating that file, then waits to be killed.
SCRIPT = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from feature_store.materialise import materialise
    from feature_store.store import FeatureStore
    from ser_pipeline.features import feature_spec
    from ser_pipeline.manifest import read_manifest
    from ser_pipeline.workspace import Workspace

    ws = Workspace.resolve(sys.argv[1])
    pause_at = Path(sys.argv[2]) if len(sys.argv) > 2 else None
    seen = {"written": 0}

    def hook(stage):
        if pause_at and stage == "written":
            seen["written"] += 1
            if seen["written"] == 2:
                pause_at.write_text(str(os.getpid()))
                while True:
                    time.sleep(0.05)

    report = materialise(read_manifest("tiny", ws), feature_spec("logmel64"), ["gain=3"],
                         FeatureStore(ws.features), manifest_name="tiny", batch_size=2, fault=hook)
    print(report.computed, report.reused, len(report.failed))
    """
)


def run_script(root: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", SCRIPT, str(root), *extra], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for(path: Path, proc: subprocess.Popen, limit_s: float = 60.0) -> None:
    """Poll until the child signals it reached its pause point (or fail if it exits first)."""
    deadline = time.monotonic() + limit_s
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[1]
        assert time.monotonic() < deadline, "child never reached its pause point"
        time.sleep(0.05)


def test_sigkill_mid_run_then_rerun_completes(workspace, make_corpus):
    frame = make_corpus(4)
    write_manifest(frame, [], "tiny", workspace)
    marker = workspace.root / "paused"
    proc = run_script(workspace.root, str(marker))
    wait_for(marker, proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    store = FeatureStore(workspace.features)
    fset = store.open_set(SPEC)
    assert len(fset) == 2  # only the first committed batch reads as complete
    assert any((fset.path / TMP).iterdir())  # the killed writer's temp batch is there but invisible
    killed = verify(store)
    assert killed["ok"] and killed["items_checked"] == 2 and len(killed["uncommitted"]) == 1

    rerun = run_script(workspace.root)
    out, err = rerun.communicate(timeout=120)
    assert rerun.returncode == 0, err
    assert out.split() == ["6", "2", "0"]  # 8 items in all; 2 reused
    after = verify(store)
    assert after["ok"] and after["items_checked"] == 8 and after["uncommitted"] == []
    fset.refresh()
    assert {(s, v) for s in frame.sha256 for v in ("orig", "gain=3")} == set(fset.keys())


def test_two_processes_at_once_do_not_corrupt(workspace, make_corpus):
    frame = make_corpus(6)
    write_manifest(frame, [], "tiny", workspace)
    procs = [run_script(workspace.root) for _ in range(2)]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [r[1] for r in results]
    computed = [int(out.split()[0]) for out, _ in results]
    assert all(0 <= c <= 12 for c in computed) and sum(computed) >= 12
    store = FeatureStore(workspace.features)
    report = verify(store)
    assert report["ok"] and report["uncommitted"] == []
    fset = store.open_set(SPEC)
    assert len(fset) == 12
    for row in frame.itertuples():
        want = extract(load_checked(row.path, row.sha256, 16000), SPEC).astype(np.float16).astype(np.float32)
        assert np.array_equal(fset.read(row.sha256), want)
    lineage = json.loads(json.dumps(fset.lineage()))
    assert [m["name"] for m in lineage["manifests"]] == ["tiny"]
    assert materialise(frame, SPEC, ["gain=3"], store).computed == 0
