"""Checked reads: damaged items on disk are never served, and featurize / verify --repair recompute them.

Every test damages real files of a committed batch: a chunk rewritten with changed values (a
valid encoding, so only the checksum can tell), raw bytes flipped in a chunk file, a garbled
array ``zarr.json`` and a garbled batch ``zarr.json`` (the item list).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr
from typer.testing import CliRunner

from feature_store.layout import BATCHES, QUARANTINE
from feature_store.maintenance import gc, repair, verify
from feature_store.materialise import materialise
from feature_store.store import FeatureStore
from ser_pipeline.cli import app
from ser_pipeline.errors import StoreError
from ser_pipeline.features import feature_spec
from ser_pipeline.manifest import write_manifest

SPEC = feature_spec("logmel64")


@pytest.fixture
def store(workspace):
    return FeatureStore(workspace.features)


def stored(store, frame, batch_size=2):
    """Materialise ``frame`` (batches of ``batch_size``); return the set and every item's float32 values."""
    report = materialise(frame, SPEC, None, store, batch_size=batch_size)
    assert report.computed == len(frame) and not report.failed
    fset = store.open_set(SPEC)
    keys = [(sha, "orig") for sha in frame.sha256]
    return fset, dict(zip(keys, fset.read_many(keys), strict=True))


def item_row(fset, sha):
    index = fset.index()
    return index[index.sha256 == sha].iloc[0]


def rewrite_values(fset, sha):
    """Change one stored value of item ``sha`` through Zarr (a valid chunk; only the checksum differs)."""
    row = item_row(fset, sha)
    data = zarr.open_array(str(fset.path / BATCHES / row.batch / "data"), mode="r+")
    data[0, 3, int(row.offset) + 1] = data[0, 3, int(row.offset) + 1] + np.float16(0.5)
    return row.batch


def flip_chunk_bytes(fset, batch, n=40):
    chunk = next(p for p in sorted((fset.path / BATCHES / batch / "data").rglob("*")) if p.is_file() and p.name != "zarr.json")
    raw = bytearray(chunk.read_bytes())
    for i in range(n):
        raw[len(raw) // 3 + i] ^= 0xA5
    chunk.write_bytes(bytes(raw))


def test_changed_values_raise_naming_set_batch_and_item(store, make_corpus):
    frame = make_corpus(4)
    fset, before = stored(store, frame)
    victim = frame.sha256[1]
    batch = rewrite_values(fset, victim)
    fresh = FeatureStore(store.path).open_set(SPEC)
    with pytest.raises(StoreError) as err:
        fresh.read(victim)
    message = str(err.value)
    assert fset.digest in message and batch in message and f"{victim}/orig" in message and "checksum mismatch" in message
    with pytest.raises(StoreError, match="checksum mismatch"):
        fresh.read_many([(sha, "orig") for sha in frame.sha256])
    other = next(sha for sha in frame.sha256 if item_row(fresh, sha).batch != batch)
    assert np.array_equal(fresh.read(other), before[(other, "orig")])  # other batches still serve


def test_flipped_chunk_bytes_never_return_data(store, make_corpus):
    frame = make_corpus(2)
    fset, _ = stored(store, frame)
    batch = item_row(fset, frame.sha256[0]).batch
    flip_chunk_bytes(fset, batch)
    fresh = FeatureStore(store.path).open_set(SPEC)
    for sha in frame.sha256:
        with pytest.raises(StoreError) as err:
            fresh.read(sha)
        assert batch in str(err.value) and f"{sha}/orig" in str(err.value)
    assert fresh.check([(sha, "orig") for sha in frame.sha256]).keys() == {(sha, "orig") for sha in frame.sha256}


def test_featurize_recomputes_a_damaged_item_then_gc_clears_it(store, make_corpus):
    frame = make_corpus(4)
    fset, before = stored(store, frame)
    victim = frame.sha256[2]
    rewrite_values(fset, victim)
    report = materialise(frame, SPEC, None, store)
    assert (report.computed, report.reused, report.repaired, report.failed) == (1, 3, 1, [])
    assert [(u, v) for u, v, _ in report.damaged] == [(frame.utterance_id[2], "orig")]
    assert "checksum mismatch" in report.damaged[0][2]
    fresh = FeatureStore(store.path).open_set(SPEC)
    assert all(np.array_equal(fresh.read(sha), before[(sha, "orig")]) for sha in frame.sha256)
    checked = verify(store)
    assert checked["ok"] and [c["key"] for c in checked["superseded"]] == [f"{victim}/orig"]
    again = materialise(frame, SPEC, None, store)
    assert (again.computed, again.reused, again.repaired) == (0, 4, 0)
    gc(store, dry_run=False)
    after = verify(store)
    assert after["ok"] and not after["superseded"] and after["items_checked"] == 4
    fresh.refresh()
    assert all(np.array_equal(fresh.read(sha), before[(sha, "orig")]) for sha in frame.sha256)


def test_gc_never_copies_a_damaged_live_item(store, make_corpus):
    frame = make_corpus(2)
    fset, _ = stored(store, frame)
    materialise(frame.iloc[[0]], SPEC, None, store, force=True)  # supersedes item 0: its batch is compacted
    victim = frame.sha256[1]
    batch = rewrite_values(fset, victim)
    result = gc(store, dry_run=False)
    assert [s["path"].endswith(batch) for s in result["skipped"]] == [True] and "checksum mismatch" in result["skipped"][0]["reason"]
    assert [c["key"] for c in verify(store)["corrupt"]] == [f"{victim}/orig"]  # still reported, not laundered


def test_garbled_array_metadata_is_repaired_by_featurize(store, make_corpus):
    frame = make_corpus(3)
    fset, before = stored(store, frame, batch_size=3)
    batch = item_row(fset, frame.sha256[0]).batch
    (fset.path / BATCHES / batch / "data" / "zarr.json").write_text('{"zarr_format": 3, "node_ty')
    fresh = FeatureStore(store.path).open_set(SPEC)
    with pytest.raises(StoreError, match=f"{batch}: unreadable batch array.*item {frame.sha256[0]}/orig"):
        fresh.read(frame.sha256[0])
    report = materialise(frame, SPEC, None, store)
    assert (report.computed, report.reused, report.repaired) == (3, 0, 3)
    fresh.refresh()
    assert all(np.array_equal(fresh.read(sha), before[(sha, "orig")]) for sha in frame.sha256)
    assert verify(store)["ok"] and len(verify(store)["superseded"]) == 3


def test_garbled_batch_item_list_is_recomputed_then_quarantined(store, make_corpus):
    frame = make_corpus(4)
    fset, before = stored(store, frame)
    batch = item_row(fset, frame.sha256[0]).batch
    lost = [sha for sha in frame.sha256 if item_row(fset, sha).batch == batch]
    (fset.path / BATCHES / batch / "zarr.json").write_text("{not json")
    fresh = FeatureStore(store.path).open_set(SPEC)
    assert list(fresh.unreadable_batches()) == [batch] and len(fresh) == 4 - len(lost)
    with pytest.raises(StoreError, match="unreadable batch"):
        fresh.read(lost[0])
    bad = verify(store)
    assert not bad["ok"] and bad["corrupt"][0]["path"].endswith(batch) and "unreadable batch" in bad["corrupt"][0]["reason"]
    report = materialise(frame, SPEC, None, store, manifest_name="tiny", manifest_digest="d1")
    assert (report.computed, report.reused, report.unreadable_batches) == (len(lost), 4 - len(lost), [batch])
    fixed = repair(store, lambda name: frame if name == "tiny" else None)
    assert fixed["quarantined"] == [str(fset.path / QUARANTINE / batch)]
    assert fixed["sets"] == [{"digest": fset.digest, "manifest": "tiny", "computed": 0, "repaired": 0, "failed": 0}]
    after = verify(store)
    assert after["ok"] and after["quarantined"] == fixed["quarantined"]
    fresh.refresh()
    assert all(np.array_equal(fresh.read(sha), before[(sha, "orig")]) for sha in frame.sha256)
    assert any(r["reason"] == "quarantined unreadable batch" for r in gc(store)["removed"])


def test_damaged_derived_item_raises(store):
    derived = store.derived("f" * 12, "c" * 12)
    derived.write({("u1", "orig"): np.arange(6, dtype=np.float32).reshape(2, 3), ("u2", "orig"): np.ones(4, np.float32)})
    batch = sorted(p.name for p in (derived.path / BATCHES).iterdir())[0]
    data = zarr.open_array(str(derived.path / BATCHES / batch / "data"), mode="r+")
    data[1] = 42.0
    derived.refresh()
    with pytest.raises(StoreError, match=f"derived set {'f' * 12}/{'c' * 12} batch {batch} item u1/orig: checksum mismatch"):
        derived.read("u1")
    assert np.array_equal(derived.read("u2"), np.ones(4, np.float32))
    assert [c["key"] for c in verify(store)["corrupt"]] == ["u1/orig"]


runner = CliRunner()


def test_cli_featurize_says_repaired_and_verify_repair_fixes(workspace, make_corpus):
    frame = make_corpus(3)
    write_manifest(frame, [], "tiny", workspace)
    root = str(workspace.root)
    assert runner.invoke(app, ["featurize", "tiny", "--root", root, "--workers", "1"]).exit_code == 0
    fset = FeatureStore(workspace.features).open_set(SPEC)
    rewrite_values(fset, frame.sha256[0])
    out = runner.invoke(app, ["featurize", "tiny", "--root", root, "--workers", "1"])
    assert out.exit_code == 0 and "computed 1  reused 2  failed 0  repaired 1" in out.stdout
    assert f"repaired {frame.utterance_id[0]} [orig]:" in out.stdout and "checksum mismatch" in out.stdout
    assert runner.invoke(app, ["store", "verify", "--root", root]).exit_code == 0  # superseded only
    batch = item_row(FeatureStore(workspace.features).open_set(SPEC), frame.sha256[1]).batch
    flip_chunk_bytes(fset, batch)
    assert runner.invoke(app, ["store", "verify", "--root", root]).exit_code == 1
    fixed = runner.invoke(app, ["store", "verify", "--repair", "--root", root, "--json"])
    assert fixed.exit_code == 0, fixed.output
    doc = json.loads(fixed.stdout)
    assert doc["ok"] and doc["before"]["corrupt"] and doc["repair"]["sets"][0]["repaired"] >= 1
    assert runner.invoke(app, ["store", "verify", "--root", root]).exit_code == 0


def test_a_batch_checked_clean_is_stamped_then_skipped_until_a_file_changes(store, make_corpus, monkeypatch):
    from feature_store import stamps

    frame = make_corpus(4)
    fset, before = stored(store, frame)
    keys = [(sha, "orig") for sha in frame.sha256]
    assert fset.check(keys) == {}
    assert stamps.read_stamps(fset.path) == {}  # files written a moment ago are "racy": never stamped
    monkeypatch.setattr(stamps, "SETTLE_NS", 0)
    assert fset.check(keys) == {}
    batches = sorted({item_row(fset, sha).batch for sha in frame.sha256})
    assert sorted(stamps.read_stamps(fset.path)) == batches
    stamped = FeatureStore(store.path).open_set(SPEC)
    assert stamped.check(keys) == {} and not stamped._arrays  # every batch skipped: no array opened
    victim = frame.sha256[2]
    damaged_batch = rewrite_values(fset, victim)  # the chunk file's mtime/ctime change: its stamp no longer matches
    report = materialise(frame, SPEC, None, store)
    assert (report.computed, report.reused, report.repaired) == (1, 3, 1)
    fresh = FeatureStore(store.path).open_set(SPEC)
    assert fresh.check(keys) == {}
    # never stamped while its list holds the damaged (superseded) item: it could become live again
    assert damaged_batch not in stamps.read_stamps(fset.path) and len(stamps.read_stamps(fset.path)) == len(batches)
    assert all(np.array_equal(fresh.read(sha), before[(sha, "orig")]) for sha in frame.sha256)


def test_unreadable_stamps_file_means_a_full_check(store, make_corpus, monkeypatch):
    from feature_store import stamps

    monkeypatch.setattr(stamps, "SETTLE_NS", 0)
    frame = make_corpus(2)
    fset, _ = stored(store, frame)
    keys = [(sha, "orig") for sha in frame.sha256]
    fset.check(keys)
    (fset.path / stamps.CHECKED).write_text("{not json")
    batch = item_row(fset, frame.sha256[0]).batch
    flip_chunk_bytes(fset, batch)
    fresh = FeatureStore(store.path).open_set(SPEC)
    assert (frame.sha256[0], "orig") in fresh.check(keys)
