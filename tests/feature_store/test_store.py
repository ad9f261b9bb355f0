"""The Zarr feature store: layout, reading, lineage, incremental runs, bad input, verify, gc, derived."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from feature_store.layout import BATCHES, TMP, new_batch_id
from feature_store.maintenance import gc, verify
from feature_store.materialise import materialise
from feature_store.recordings import load_checked
from feature_store.store import FeatureStore
from ser_pipeline.augment import apply_variant, variant_seed
from ser_pipeline.errors import StoreError
from ser_pipeline.features import extract, feature_spec

SPEC = feature_spec("logmel64")


@pytest.fixture
def store(workspace):
    return FeatureStore(workspace.features)


def expected(row, spec=SPEC, variant="orig"):
    wave = load_checked(row.path, row.sha256, spec.sample_rate)
    return extract(apply_variant(wave, spec.sample_rate, variant, seed=variant_seed(row.sha256, variant)), spec)


def test_materialise_then_read_back(store, make_corpus):
    frame = make_corpus(5)
    report = materialise(frame, SPEC, None, store, manifest_name="tiny", manifest_digest="abc", batch_size=2)
    assert (report.computed, report.reused, report.failed, report.batches) == (5, 0, [], 3)
    assert report.audio_seconds == pytest.approx(sum(0.3 + 0.01 * i for i in range(5)), abs=1e-3)
    fset = store.open_set(SPEC)
    assert fset.digest == SPEC.digest() and fset.path.name == SPEC.digest()
    for row in frame.itertuples():
        got = fset.read(row.sha256)
        want = expected(row)
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.allclose(got, want.astype(np.float16).astype(np.float32))
    stored = np.asarray(__import__("zarr").open_array(str(fset.path / BATCHES / fset.index().batch[0] / "data"))[:])
    assert stored.dtype == np.float16  # float16 on disk by default
    index = fset.index()
    assert set(index.columns) >= {"sha256", "variant", "utterance_id", "frames", "checksum"}
    assert sorted(index.utterance_id) == sorted(frame.utterance_id)
    assert index.set_index("sha256").loc[frame.sha256[0], "frames"] == expected(frame.iloc[0]).shape[2]


def test_in_process_run_restores_blas_threads(store, make_corpus):
    threadpoolctl = pytest.importorskip("threadpoolctl")
    before = [p["num_threads"] for p in threadpoolctl.threadpool_info()]
    materialise(make_corpus(1), SPEC, None, store)
    assert [p["num_threads"] for p in threadpoolctl.threadpool_info()] == before


def test_read_many_equals_read_and_missing_key_is_named(store, make_corpus):
    frame = make_corpus(4)
    materialise(frame, SPEC, None, store, batch_size=3)
    fset = store.open_set(SPEC)
    keys = [(s, "orig") for s in reversed(frame.sha256.tolist())]
    for (sha, var), arr in zip(keys, fset.read_many(keys), strict=True):
        assert np.array_equal(arr, fset.read(sha, var)) and arr.dtype == np.float32
    # as stored (float16 here), for the table loader that converts while it copies: the same values
    stored = fset.read_many(keys, as_stored=True)
    assert {a.dtype for a in stored} == {np.dtype(SPEC.dtype)} != {np.dtype(np.float32)}
    for (sha, var), arr in zip(keys, stored, strict=True):
        assert np.array_equal(arr.astype(np.float32), fset.read(sha, var))
    assert fset.has(frame.sha256[0]) and not fset.has(frame.sha256[0], "speed=0.9")
    with pytest.raises(StoreError, match="speed=0.9"):
        fset.read(frame.sha256[0], "speed=0.9")


def test_lineage_records_spec_versions_and_manifests(store, make_corpus):
    frame = make_corpus(2)
    assert not store.has_served(SPEC, "tiny")
    materialise(frame, SPEC, None, store, manifest_name="tiny", manifest_digest="d1")
    assert store.has_served(SPEC, "tiny") and not store.has_served(SPEC, "tin") and not store.has_served(SPEC, "other")
    materialise(frame, SPEC, None, store, manifest_name="other", manifest_digest="d2")
    (entry,) = store.list_sets()
    assert entry["digest"] == SPEC.digest() and entry["spec"] == SPEC.to_dict()
    assert entry["items"] == 2 and entry["variants"] == ["orig"]
    assert {"numpy", "zarr", "librosa", "soxr"} <= set(entry["libraries"])
    assert "features1" in entry["code_version"] and entry["created"]
    assert sorted((m["name"], m["digest"]) for m in entry["manifests"]) == [("other", "d2"), ("tiny", "d1")]
    attrs = json.loads((store.path / "sets" / SPEC.digest() / "zarr.json").read_text())
    assert attrs["zarr_format"] == 3 and attrs["node_type"] == "group"


def test_incremental_runs_compute_only_what_is_new(store, make_corpus):
    frame = make_corpus(4)
    assert materialise(frame, SPEC, None, store).computed == 4
    again = materialise(frame, SPEC, None, store)
    assert (again.computed, again.reused) == (0, 4)
    more = make_corpus(2, start=4)
    grown = materialise(__import__("pandas").concat([frame, more]), SPEC, None, store)
    assert (grown.computed, grown.reused) == (2, 4)
    same_audio = make_corpus(2, name="copy")  # identical bytes under other ids: content-addressed, reused
    assert materialise(same_audio, SPEC, None, store).reused == 2
    second_corpus = make_corpus(3, name="other", start=10)
    assert materialise(second_corpus, SPEC, None, store).computed == 3
    speed = materialise(frame, SPEC, ["speed=0.9", "speed=1.0"], store)
    assert (speed.computed, speed.reused, speed.variants) == (4, 4, ["orig", "speed=0.9"])
    fset = store.open_set(SPEC)
    assert len(fset) == 4 + 2 + 3 + 4
    row = frame.iloc[0]
    assert np.allclose(fset.read(row.sha256, "speed=0.9"), expected(row, variant="speed=0.9").astype(np.float16))


def test_changed_parameter_makes_a_new_set_and_keeps_the_old(store, make_corpus):
    frame = make_corpus(2)
    materialise(frame, SPEC, None, store)
    other = feature_spec("logmel64", n_mels=40, dtype="float32")
    assert materialise(frame, other, None, store).computed == 2
    assert {s["digest"] for s in store.list_sets()} == {SPEC.digest(), other.digest()}
    assert store.open_set(SPEC).read(frame.sha256[0]).shape[1] == 64
    exact = store.open_set(other).read(frame.sha256[0])
    assert exact.shape[1] == 40 and np.array_equal(exact, expected(frame.iloc[0], other))  # float32: exact
    assert store.get_set(other.digest()).spec == other


def test_force_recomputes_and_latest_batch_wins(store, make_corpus):
    frame = make_corpus(2)
    materialise(frame, SPEC, None, store)
    forced = materialise(frame, SPEC, None, store, force=True)
    assert (forced.computed, forced.reused) == (2, 0)
    fset = store.open_set(SPEC)
    assert len(fset) == 2 and fset.index().batch.nunique() == 1
    removed = gc(store, None, dry_run=False)["removed"]
    assert [r["reason"] for r in removed] == ["2 item(s) superseded by a later batch"]
    assert verify(store)["ok"] and len(FeatureStore(store.path).open_set(SPEC)) == 2


def _values(store: FeatureStore, keys: list[tuple[str, str]]) -> list[np.ndarray]:
    fset = FeatureStore(store.path).open_set(SPEC)
    return [fset.read(sha, variant) for sha, variant in keys]


def test_gc_compacts_a_partly_superseded_batch(store, make_corpus):
    frame = make_corpus(4)
    materialise(frame, SPEC, None, store, batch_size=4)
    materialise(frame.iloc[:2], SPEC, None, store, force=True)  # first two items replaced by a later batch
    keys = [(sha, "orig") for sha in frame.sha256]
    before = _values(store, keys)
    old_batch = store.open_set(SPEC).index().set_index("sha256").batch[frame.sha256[3]]
    plan = gc(store, None, dry_run=True)
    assert plan["removed"] == [] and plan["items_removed"] == 2
    assert [(c["items_kept"], c["items_dropped"]) for c in plan["compacted"]] == [(2, 2)]
    assert plan["compacted"][0]["path"].endswith(old_batch)
    applied = gc(store, None, dry_run=False)
    assert applied["items_removed"] == 2
    fset = FeatureStore(store.path).open_set(SPEC)
    assert len(fset) == 4 and old_batch not in set(fset.index().batch) and fset.index().batch.nunique() == 2
    assert all(np.array_equal(a, b) for a, b in zip(before, _values(store, keys), strict=True))
    assert verify(store)["ok"]
    again = gc(store, None, dry_run=True)
    assert again["removed"] == again["compacted"] == [] and again["items_removed"] == 0
    assert not list((fset.path / TMP).iterdir())  # nothing left half-deleted


def test_gc_drops_items_no_manifest_references(store, make_corpus):
    frame = make_corpus(4)
    materialise(frame, SPEC, ["speed=0.9"], store, batch_size=8)  # one batch: 4 x (orig, speed=0.9)
    kept = {(sha, v) for sha in frame.sha256[:3] for v in ("orig", "speed=0.9")}
    before = _values(store, sorted(kept))
    dry = gc(store, None, dry_run=True, referenced_items={SPEC.digest(): kept})
    assert dry["items_removed"] == 2 and dry["compacted"][0]["reason"] == "2 item(s) in no manifest the set serves"
    assert len(FeatureStore(store.path).open_set(SPEC)) == 8  # dry run
    gc(store, None, dry_run=False, referenced_items={SPEC.digest(): kept})
    fset = FeatureStore(store.path).open_set(SPEC)
    assert set(fset.keys()) == kept and not fset.has(frame.sha256[3])
    assert all(np.array_equal(a, b) for a, b in zip(before, _values(store, sorted(kept)), strict=True))
    gone = gc(store, None, dry_run=False, referenced_items={SPEC.digest(): set()})  # nothing referenced
    assert [r["reason"] for r in gone["removed"]] == ["6 item(s) in no manifest the set serves"]
    assert len(FeatureStore(store.path).open_set(SPEC)) == 0 and verify(store)["ok"]


def test_vanished_and_changed_files_fail_alone(store, make_corpus, write_wav):
    frame = make_corpus(4)
    os.remove(frame.path[1])
    write_wav(frame.path[2], 0.5, freq=999.0)  # bytes changed since ingest
    report = materialise(frame, SPEC, ["noise=20"], store)
    assert report.computed == 4  # 2 good files x 2 variants
    failed = {(u, v): r for u, v, r in report.failed}
    assert set(failed) == {(frame.utterance_id[i], v) for i in (1, 2) for v in ("orig", "noise=20")}
    assert "not found" in failed[(frame.utterance_id[1], "orig")] and frame.path[1] in failed[(frame.utterance_id[1], "orig")]
    assert "checksum mismatch" in failed[(frame.utterance_id[2], "orig")]
    fset = store.open_set(SPEC)
    assert fset.has(frame.sha256[0]) and fset.has(frame.sha256[3], "noise=20") and not fset.has(frame.sha256[2])


def test_unwritable_store_fails_before_any_work(tmp_path, make_corpus):
    frame = make_corpus(2)
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError, match="a-file"):
        materialise(frame, SPEC, None, FeatureStore(blocker / "features"))
    with pytest.raises(StoreError, match="no feature set"):
        FeatureStore(tmp_path / "empty").open_set(SPEC)


def test_enospc_mid_run_keeps_committed_items_and_verify_clean(store, make_corpus):
    frame = make_corpus(6)
    calls = {"written": 0}

    def disk_full_on_second_batch(stage: str) -> None:
        if stage == "written":
            calls["written"] += 1
            if calls["written"] == 2:
                raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreError, match="No space left"):
        materialise(frame, SPEC, None, store, batch_size=2, fault=disk_full_on_second_batch)
    fset = store.open_set(SPEC)
    assert len(fset) == 2  # the first batch only
    for sha in fset.index().sha256:
        assert fset.read(sha).shape[0] == 3
    assert not any((fset.path / TMP).iterdir())  # the failed temp batch was removed
    report = verify(store)
    assert report["ok"] and report["items_checked"] == 2
    resumed = materialise(frame, SPEC, None, store, batch_size=2)
    assert (resumed.computed, resumed.reused) == (4, 2) and verify(store)["ok"]


def test_verify_detects_corruption_and_names_the_batch(store, make_corpus):
    frame = make_corpus(3)
    materialise(frame, SPEC, None, store, batch_size=2)
    fset = store.open_set(SPEC)
    batch = fset.path / BATCHES / sorted(fset.index().batch)[0]
    chunk = next(p for p in (batch / "data").rglob("*") if p.is_file() and p.name != "zarr.json")
    raw = bytearray(chunk.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    chunk.write_bytes(bytes(raw))
    report = verify(store)
    assert not report["ok"] and report["corrupt"]
    assert all(c["path"] == str(batch) for c in report["corrupt"])
    meta = json.loads((batch / "zarr.json").read_text())
    meta["attributes"]["items"][0]["frames"] += 5  # a recorded shape that no longer matches
    (batch / "zarr.json").write_text(json.dumps(meta))
    assert any("shape" in c["reason"] for c in verify(store)["corrupt"])


def test_gc_removes_unreferenced_sets_and_abandoned_temp(store, make_corpus):
    frame = make_corpus(2)
    materialise(frame, SPEC, None, store)
    old = feature_spec("logmel60")
    materialise(frame, old, None, store)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    host = new_batch_id().split("-")[1]
    abandoned = store.path / "sets" / SPEC.digest() / TMP / f"0000000000000001-{host}-{int(dead.stdout)}-deadbeef"
    abandoned.mkdir(parents=True)
    live = store.path / "sets" / SPEC.digest() / TMP / new_batch_id()  # this process: still writing
    live.mkdir()
    plan = gc(store, {SPEC.digest()}, dry_run=True)
    assert {(os.path.basename(r["path"]), r["reason"]) for r in plan["removed"]} == {
        (old.digest(), "feature set not referenced"), (abandoned.name, "abandoned temp batch")}
    assert (store.path / "sets" / old.digest()).exists()  # dry run
    gc(store, {SPEC.digest()}, dry_run=False)
    assert store.digests() == [SPEC.digest()] and not abandoned.exists() and live.exists()
    assert np.allclose(store.open_set(SPEC).read(frame.sha256[0]), expected(frame.iloc[0]).astype(np.float16))


def test_derived_items_round_trip(store):
    dset = store.derived(SPEC.digest(), "ckpt01")
    rng = np.random.default_rng(0)
    items = {("u1", "orig"): rng.standard_normal((3, 16)), ("u2", "speed=0.9"): rng.standard_normal((5, 16)),
             ("u3", "orig"): rng.standard_normal(7)}
    dset.write(items)
    again = store.derived(SPEC.digest(), "ckpt01")
    for key, arr in items.items():
        assert again.has(*key)
        assert np.allclose(again.read(*key), arr.astype(np.float32))
    assert not again.has("u1", "speed=0.9")
    assert store.list_derived()[0]["items"] == 3
    report = verify(store)
    assert report["ok"] and report["derived"] == 1 and report["items_checked"] == 3

    def fail(stage: str) -> None:
        if stage == "before_commit":
            raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(StoreError):
        again.write({("u9", "orig"): np.ones(4)}, fault=fail)
    assert not store.derived(SPEC.digest(), "ckpt01").has("u9") and verify(store)["ok"]
    with pytest.raises(StoreError, match="checkpoint_digest"):
        store.derived(SPEC.digest(), "../x")


def test_stereo_and_other_rates_are_downmixed_and_resampled(store, tmp_path, write_wav):
    from tests.feature_store.conftest import manifest_of

    paths = [write_wav(tmp_path / "m" / "st.wav", 0.4, channels=2, sample_rate=48000),
             write_wav(tmp_path / "m" / "lo.flac", 0.4, sample_rate=8000)]
    frame = manifest_of(paths, "mixed")
    report = materialise(frame, SPEC, None, store)
    assert (report.computed, report.failed) == (2, [])
    for row in frame.itertuples():
        got = store.open_set(SPEC).read(row.sha256)
        assert got.shape == (3, 64, SPEC.frames_for(int(0.4 * 16000)))
        assert np.allclose(got, expected(row).astype(np.float16))
