"""Where and how featurize computes: thread pool, torch backend, the ssl kind; the executor rule."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from feature_store.materialise import materialise
from feature_store.store import FeatureStore
from ser_pipeline.errors import ConfigError
from ser_pipeline.experiments.features import SMALL_JOB_ITEMS, choose_executor
from ser_pipeline.features import feature_label, feature_spec

SPEC = feature_spec("logmel64")


@pytest.fixture
def store(workspace):
    return FeatureStore(workspace.features)


def values(store, spec, frame, variant="orig"):
    fset = store.open_set(spec)
    return [fset.read(sha, variant) for sha in frame.sha256]


def test_thread_pool_gives_the_same_bits_and_restores_blas(store, make_corpus, tmp_path):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    frame = make_corpus(7)
    before = {p["filepath"]: p["num_threads"] for p in threadpoolctl.threadpool_info()}
    threaded = materialise(frame, SPEC, ["gain=3"], store, threads=2, batch_size=2)
    assert (threaded.computed, threaded.failed, threaded.batches) == (14, [], 7)
    # every library loaded before has its thread count back (scipy's FFT, and its BLAS, may load during the run)
    after = {p["filepath"]: p["num_threads"] for p in threadpoolctl.threadpool_info()}
    assert {path: after.get(path) for path in before} == before
    serial = FeatureStore(tmp_path / "serial")
    materialise(frame, SPEC, ["gain=3"], serial, threads=1, batch_size=2)
    for variant in ("orig", "gain=3"):
        for a, b in zip(values(store, SPEC, frame, variant), values(serial, SPEC, frame, variant), strict=True):
            assert np.array_equal(a, b)


def test_a_bad_recording_fails_alone_in_a_threaded_batch(store, make_corpus):
    frame = make_corpus(4)
    with open(frame.path.iloc[1], "wb") as broken:
        broken.write(b"RIFF....garbage")
    report = materialise(frame, SPEC, None, store, threads=2, batch_size=2)
    assert report.computed == 3 and [f[0] for f in report.failed] == [frame.utterance_id.iloc[1]]


def test_torch_backend_same_key_values_within_tolerance(store, make_corpus, tmp_path):
    pytest.importorskip("torch")
    frame = make_corpus(3)
    spec = feature_spec("logmel64", dtype="float32")
    report = materialise(frame, spec, None, store, backend="torch")
    assert report.computed == 3
    numpy_store = FeatureStore(tmp_path / "numpy")
    materialise(frame, spec, None, numpy_store, backend="numpy")
    assert store.open_set(spec).digest == numpy_store.open_set(spec).digest == spec.digest()  # backend: not identity
    for a, b in zip(values(store, spec, frame), values(numpy_store, spec, frame), strict=True):
        assert a.shape == b.shape and float(np.abs(a - b).max()) < 1e-3
    with pytest.raises(ConfigError, match="backend='jax'"):
        materialise(frame, spec, None, store, backend="jax")


def test_executor_rule():
    rule = lambda todo, **kw: choose_executor(todo, batch_size=256, **{"workers": None, "dask_address": None, **kw})  # noqa: E731
    assert rule(100).kind == "in-process" and rule(100).processes == 1  # one task's work
    small = rule(1000, workers=2)
    assert (small.kind, small.processes) == ("processes", 2) and small.describe(2, None) == "2 local processes"
    assert rule(1000, workers=1).kind == "in-process" and rule(1000, backend="torch").kind == "in-process"
    assert rule(SMALL_JOB_ITEMS + 1, workers=2).kind == "cluster"
    assert rule(10, dask_address="tcp://x:1").kind == "cluster"


def test_ssl_kind_stores_layers_hidden_frames_keyed_by_checkpoint_content(store, make_corpus, tmp_path):
    pytest.importorskip("transformers", reason="the ssl extra is not installed")
    from tests.test_ssl_features import save_tiny

    checkpoint = save_tiny(tmp_path / "tiny")
    spec = feature_spec("ssl", checkpoint=str(checkpoint), layers=(0, 2))
    assert (spec.channels, spec.bands) == (2, 32) and feature_label(spec).startswith("ssl checkpoint=")
    frame = make_corpus(3, seconds=0.5)
    report = materialise(frame, spec, None, store)
    assert (report.computed, report.failed) == (3, [])
    import soundfile

    for path, arr in zip(frame.path, values(store, spec, frame), strict=True):
        frames = spec.frames_for(soundfile.info(path).frames)  # 50 Hz
        assert arr.shape == (2, 32, frames) and arr.dtype == np.float32
    lineage = store.open_set(spec).lineage()["checkpoint"]
    assert lineage["model_type"] == "wavlm" and lineage["architectures"] == ["WavLMModel"] and len(lineage["digest"]) == 64
    moved = shutil.copytree(checkpoint, tmp_path / "elsewhere")
    same = feature_spec("ssl", checkpoint=str(moved), layers=(0, 2))
    assert same.digest() == spec.digest() and store.open_set(same).has(frame.sha256[0])
    weights = next(moved.glob("*.safetensors"))
    data = bytearray(weights.read_bytes())
    data[-2] ^= 0x10
    weights.write_bytes(bytes(data))
    assert feature_spec("ssl", checkpoint=str(moved), layers=(0, 2)).digest() != spec.digest()
    assert feature_spec("logmel64").digest() == SPEC.digest()  # the ssl fields never enter a log-Mel key


def test_ssl_spec_errors_name_the_field():
    with pytest.raises(ConfigError, match="checkpoint"):
        feature_spec("ssl")
    with pytest.raises(ConfigError, match="layers"):
        feature_spec("ssl", checkpoint="/x", layers=())


def test_worker_processes_give_the_same_bits_as_one_thread(store, make_corpus, tmp_path):
    """``processes=2``: tasks run in worker processes forked from the fork server and write their
    batches straight into the store; the items equal those computed in this process, and a bad
    recording still fails alone."""
    frame = make_corpus(6)
    with open(frame.path.iloc[4], "wb") as broken:
        broken.write(b"RIFF....garbage")
    pooled = materialise(frame, SPEC, ["gain=3"], store, processes=2, batch_size=2)
    assert (pooled.computed, pooled.batches) == (10, 5)  # a task per recording; the broken one writes none
    assert [f[0] for f in pooled.failed] == [frame.utterance_id.iloc[4]] * 2
    serial = FeatureStore(tmp_path / "serial")
    materialise(frame, SPEC, ["gain=3"], serial, processes=1, batch_size=2)
    good = frame.drop(index=4)
    for variant in ("orig", "gain=3"):
        for a, b in zip(values(store, SPEC, good, variant), values(serial, SPEC, good, variant), strict=True):
            assert np.array_equal(a, b)



def test_an_unguarded_script_can_featurize_on_worker_processes(make_corpus, tmp_path):
    """A plain script without ``if __name__ == "__main__"`` calls ``materialise(processes=2)``: the
    worker processes do not run the script again (multiprocessing would, and fail), every item is
    computed, and no helper process outlives the script."""
    import subprocess
    import sys
    import textwrap

    frame = make_corpus(4)
    frame.to_csv(tmp_path / "frame.csv", index=False)
    script = tmp_path / "unguarded.py"
    script.write_text(textwrap.dedent(f"""
        import pandas as pd
        from feature_store.materialise import materialise
        from feature_store.store import FeatureStore
        from ser_pipeline.features import feature_spec
        frame = pd.read_csv({str(tmp_path / "frame.csv")!r})
        report = materialise(frame, feature_spec("logmel64"), None, FeatureStore({str(tmp_path / "store")!r}),
                             processes=2, batch_size=1)
        print("computed", report.computed, "failed", len(report.failed))
    """))
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: what it leaves behind is findable
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == ["computed", "4", "failed", "0"]
    assert "bootstrapping" not in err and "Traceback" not in err
    with pytest.raises(ProcessLookupError):  # the fork server and resource tracker were reaped at exit
        os.killpg(proc.pid, 0)


@pytest.mark.parametrize("then", ["featurize", "exit"])
def test_a_prestarted_fork_server_serves_the_workers_and_is_reaped_even_unused(make_corpus, tmp_path, then):
    """``ser featurize`` starts the fork server before it imports and plans; used or not (a run with
    nothing to compute), no process outlives the command."""
    import subprocess
    import sys
    import textwrap

    frame = make_corpus(4)
    frame.to_csv(tmp_path / "frame.csv", index=False)
    work = textwrap.dedent(f"""
        import pandas as pd
        from feature_store.materialise import materialise
        from feature_store.store import FeatureStore
        from ser_pipeline.features import feature_spec
        frame = pd.read_csv({str(tmp_path / "frame.csv")!r})
        report = materialise(frame, feature_spec("logmel64"), None, FeatureStore({str(tmp_path / "store")!r}),
                             processes=2, batch_size=1)
        print("computed", report.computed, "failed", len(report.failed))
    """) if then == "featurize" else "print('exit')\n"
    script = tmp_path / "prestarted.py"
    script.write_text("from feature_store.pools import prestart_fork_server, _PRESTART\nprestart_fork_server()\n"
                      "assert len(_PRESTART) == 1\n" + work)
    proc = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert out.split() == (["computed", "4", "failed", "0"] if then == "featurize" else ["exit"])
    assert "Traceback" not in err
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def test_workers_inherit_the_writer_templates_and_mel_bank_built_in_the_fork_server(tmp_path):
    """The fork server builds the Zarr templates and the default spec's Mel bank once
    (``feature_store.worker_warmup``): a worker's first batch builds neither."""
    import subprocess
    import sys
    import textwrap

    (tmp_path / "probe.py").write_text(textwrap.dedent("""
        def caches(_):
            import feature_store.writer as writer
            from ser_pipeline.features import mel_segments
            return sorted(writer._TEMPLATES), mel_segments.cache_info().currsize
    """))
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent("""
        from feature_store.pools import on_processes
        from probe import caches
        for _, (templates, mel_banks) in on_processes(caches, [(0,), (1,)], 2):
            print(templates, mel_banks)
    """))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines == ["[('<f2', 3), ('<f4', 3)] 1"] * 2
