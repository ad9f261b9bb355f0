"""Materialising on a real Dask LocalCluster (one worker process) gives the same items as in process."""

from __future__ import annotations

import numpy as np
import pytest

from feature_store.maintenance import verify
from feature_store.materialise import WorkItem, chunk_work, dask_client, materialise, plan, task_size
from feature_store.store import FeatureStore
from ser_pipeline.errors import ConfigError, StoreError
from ser_pipeline.features import feature_spec

SPEC = feature_spec("logmel64")


def test_local_cluster_matches_in_process(tmp_path, make_corpus):
    frame = make_corpus(5)
    remote, local = FeatureStore(tmp_path / "remote"), FeatureStore(tmp_path / "local")
    with dask_client(workers=1) as client:
        assert len(client.scheduler_info()["workers"]) == 1
        threads = client.run(lambda: __import__("threadpoolctl").threadpool_info())
        assert all(pool["num_threads"] == 1 for pools in threads.values() for pool in pools)
        # Dask's default MALLOC_TRIM_THRESHOLD_ slows extraction 1.6-1.9x; the profiler costs CPU too.
        env = client.run(lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_", "unset"))
        assert set(env.values()) == {"unset"}
        profiling = client.run(lambda: __import__("dask").config.get("distributed.worker.profile.enabled"))
        assert set(profiling.values()) == {False}
        report = materialise(frame, SPEC, ["noise=30"], remote, client=client, batch_size=3)
    assert (report.computed, report.failed, report.batches) == (10, [], 4)  # 10 items, at most 3 per task: 4 tasks
    materialise(frame, SPEC, ["noise=30"], local)
    a, b = remote.open_set(SPEC), local.open_set(SPEC)
    keys = sorted(a.keys())
    assert keys == sorted(b.keys())
    for x, y in zip(a.read_many(keys), b.read_many(keys), strict=True):
        assert np.array_equal(x, y)  # seeded per (sha256, variant): same numbers on any worker
    assert verify(remote)["ok"]


def test_bad_address_and_workers_are_named(monkeypatch):
    monkeypatch.setenv("SER_DASK_ADDRESS", "tcp://127.0.0.1:1")
    with pytest.raises(StoreError, match="127.0.0.1:1"), dask_client(timeout_s=1):
        pass
    monkeypatch.delenv("SER_DASK_ADDRESS")
    with pytest.raises(ConfigError, match="workers"), dask_client(workers=0):
        pass


def test_existing_scheduler_by_address(tmp_path, make_corpus, monkeypatch):
    from distributed import LocalCluster

    frame = make_corpus(2)
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster:
        monkeypatch.setenv("SER_DASK_ADDRESS", cluster.scheduler_address)
        with dask_client(workers=5) as client:  # the address wins over a local cluster
            assert client.scheduler.address == cluster.scheduler_address
            report = materialise(frame, SPEC, None, FeatureStore(tmp_path / "s"), client=client)
    assert report.computed == 2 and verify(FeatureStore(tmp_path / "s"))["ok"]


@pytest.mark.parametrize(
    ("total", "most", "parallel", "size"),
    [(1200, 256, 2, 200), (1200, 256, 1, 240), (10, 256, 2, 5), (3, 256, 4, 1), (5000, 256, 2, 250), (1, 64, 1, 1)],
)
def test_task_size_is_bounded_and_balanced(total, most, parallel, size):
    assert task_size(total, most, parallel) == size
    n_tasks = -(-total // size)
    assert size <= most and (n_tasks % parallel == 0 or total < parallel * size)


def disk_full(stage: str) -> None:
    """Fault hook: every batch write hits a full disk once its data is written."""
    if stage == "written":
        import errno

        raise OSError(errno.ENOSPC, "No space left on device")


def test_full_disk_on_a_cluster_ends_with_one_clean_error(tmp_path, make_corpus, capfd):
    frame = make_corpus(8)
    store = FeatureStore(tmp_path / "s")
    with pytest.raises(StoreError, match="No space left on device"), dask_client(workers=2) as client:
        materialise(frame, SPEC, None, store, client=client, batch_size=1, fault=disk_full)
    err = capfd.readouterr().err
    assert "Task was destroyed" not in err and "Compute Failed" not in err and "Traceback" not in err
    assert len(store.open_set(SPEC)) == 0 and verify(store)["ok"] and verify(store)["uncommitted"] == []
    with dask_client(workers=1) as client:  # the next run on a fresh cluster works
        assert materialise(frame, SPEC, None, store, client=client).computed == 8


def _items(seconds, variants=1):
    return [WorkItem(f"u{i}", f"/x/{i}.wav", f"{i:064x}", tuple(f"v{j}" for j in range(variants)), s)
            for i, s in enumerate(seconds)]


def test_tasks_are_cut_where_their_audio_is_equal():
    work = _items([8.0] * 4 + [1.0] * 32)  # 36 items, 64 s: 4 tasks of 9 items by count; 16 s each by audio
    tasks = list(chunk_work(work, 9, most=64))
    assert [len(t) for t in tasks] == [2, 2, 16, 16]
    assert [sum(w.seconds for w in t) for t in tasks] == [16.0] * 4
    assert [w for t in tasks for w in t] == work  # every item once, in order


def test_a_task_holds_at_most_most_items_and_variants_weigh_in():
    tasks = list(chunk_work(_items([10.0] + [0.1] * 40), 41 // 2 + 1, most=25))  # the short ones would all go together
    assert max(len(t) for t in tasks) <= 25 and sum(len(t) for t in tasks) == 41
    tasks = list(chunk_work(_items([2.0] * 4, variants=3), 6))  # 12 items, 2 tasks: 2 recordings each
    assert [len(t) for t in tasks] == [2, 2]


def test_without_durations_tasks_are_cut_by_count():
    tasks = list(chunk_work(_items([0.0] * 10), 5))  # no duration in the manifest: items are the cost
    assert [len(t) for t in tasks] == [5, 5]
    assert list(chunk_work([], 5)) == []


def test_plan_takes_durations_from_the_manifest():
    import pandas as pd

    manifest = pd.DataFrame({"utterance_id": ["a", "b", "c"], "path": ["/a", "/b", "/c"], "sha256": ["1", "2", "3"],
                             "duration_s": [2.5, float("nan"), -1.0]})
    work, reused = plan(manifest, ["orig"], set())
    assert [w.seconds for w in work] == [2.5, 0.0, 0.0] and reused == 0
    assert [w.seconds for w in plan(manifest.drop(columns="duration_s"), ["orig"], set())[0]] == [0.0] * 3
