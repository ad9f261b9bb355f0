"""``ser bench process``: both sides run as real processes over the same files (never timed); the
user's store is not written; a failing side or a missing manifest is one ``error:`` line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from bench_cli import call

from ser_pipeline.corpora import ingest
from ser_pipeline.corpora.demo import generate_demo_corpus
from ser_pipeline.workspace import Workspace


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ws = Workspace.resolve(tmp_path_factory.mktemp("process") / "root")
    ingest("csv", generate_demo_corpus(ws.demo, seed=0, n_speakers=2, per_class=2), "demo", ws)
    return ws.root


def test_both_sides_run_on_the_manifest_files_and_the_store_is_left_alone(root: Path, tmp_path: Path, capsys) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    code, out, err = call(capsys, "bench", "process", "demo", "--runs", "2", "--warmup", "0", "--workers", "2",
                          "--root", str(root), "--scratch", str(scratch), "--json")
    assert code == 0, err
    r = json.loads(out)
    assert r["files"] == 16 and r["runs"] == 2 and r["workers"] == 2
    for side in (r["store"], r["plain"], r["noop"]):
        assert len(side["runs_wall_s"]) == 2 and all(w > 0 for w in side["runs_wall_s"])
        assert side["wall_s"] == pytest.approx(float(np.median(side["runs_wall_s"])), abs=1e-3)
        assert all(c > 0 for c in side["runs_cpu_s"])  # the children's CPU is counted
    ratios = [p / s for s, p in zip(r["store"]["runs_wall_s"], r["plain"]["runs_wall_s"], strict=True)]
    assert r["ratio"] == pytest.approx(float(np.median(ratios)), rel=1e-2)
    assert r["ratio_range"] == pytest.approx([min(ratios), max(ratios)], rel=1e-2)
    assert not (root / "features").exists()  # the store side wrote into a scratch workspace
    assert list(scratch.iterdir()) == []  # and the scratch folder was removed
    code, human, _ = call(capsys, "bench", "process", "demo", "--runs", "1", "--warmup", "0", "--workers", "1",
                          "--root", str(root))
    assert code == 0 and "ratio script / store" in human and "no-op re-run" in human


def test_a_missing_manifest_is_one_error_line(root: Path, capsys) -> None:
    code, out, err = call(capsys, "bench", "process", "nope", "--runs", "1", "--warmup", "0", "--root", str(root))
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and out == "" and len(lines) == 1 and lines[0].startswith("error: ") and "nope" in lines[0]


def test_a_side_that_fails_is_named_with_its_last_error_line() -> None:
    import sys

    from benchmarks.process import timed_run
    from ser_pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"exited 3: boom"):
        timed_run([sys.executable, "-c", "import sys; print('boom', file=sys.stderr); sys.exit(3)"], {})
    run = timed_run([sys.executable, "-c", "sum(range(2_000_000))"], {})
    assert run.wall_s > 0 and run.cpu_s > 0
