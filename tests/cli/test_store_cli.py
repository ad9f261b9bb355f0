"""The store commands: ser featurize, ser store ls / verify / gc, ser bench featurize (CliRunner)."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from feature_store.store import FeatureStore
from ser_pipeline.cli import app
from ser_pipeline.errors import ConfigError, ManifestError
from ser_pipeline.features import feature_spec
from ser_pipeline.manifest import write_manifest
from tests.feature_store.conftest import manifest_of

runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, list(args))


@pytest.fixture
def ingested(workspace, tmp_path, write_wav):
    paths = [write_wav(tmp_path / "c" / f"u{i}.wav", 0.3, freq=200.0 + 30 * i, seed=i) for i in range(3)]
    write_manifest(manifest_of(paths, "tiny"), [], "tiny", workspace)
    return workspace


def test_featurize_json_then_noop_and_augment(ingested):
    root = str(ingested.root)
    first = invoke("featurize", "tiny", "--root", root, "--workers", "1", "--json")
    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert (report["computed"], report["reused"], report["failed"]) == (3, 0, [])
    assert report["feature_digest"] == feature_spec("logmel64").digest() and report["audio_seconds_per_second"] > 0
    again = json.loads(invoke("featurize", "tiny", "--root", root, "--json").stdout)
    assert (again["computed"], again["reused"], again["executor"]) == (0, 3, "in-process")
    aug = json.loads(invoke("featurize", "tiny", "--root", root, "--augment", "speed=0.9,1.0,1.1", "--json").stdout)
    assert (aug["computed"], aug["reused"], aug["variants"]) == (6, 3, ["orig", "speed=0.9", "speed=1.1"])
    text = invoke("featurize", "tiny", "--root", root, "--float32", "--workers", "1")
    assert text.exit_code == 0 and "computed 3  reused 0  failed 0" in text.stdout
    assert "audio s per wall s" in text.stdout
    sets = {s["dtype"]: s for s in json.loads(invoke("store", "ls", "--root", root, "--json").stdout)["sets"]}
    assert set(sets) == {"float16", "float32"} and sets["float16"]["items"] == 9
    served = {(m["name"], tuple(m["variants"])) for m in sets["float16"]["manifests"]}
    assert served == {("tiny", ("orig",)), ("tiny", ("orig", "speed=0.9", "speed=1.1"))}  # one record per request
    assert "logmel64" in invoke("store", "ls", "--root", root).stdout


def test_featurize_reports_a_vanished_file(ingested, tmp_path):
    (tmp_path / "c" / "u1.wav").unlink()
    result = invoke("featurize", "tiny", "--root", str(ingested.root), "--workers", "1")
    assert result.exit_code == 0
    assert "computed 2  reused 0  failed 1" in result.stdout and "u1.wav: file not found" in result.stdout


def test_verify_and_gc(ingested):
    root = str(ingested.root)
    invoke("featurize", "tiny", "--root", root, "--workers", "1")
    invoke("featurize", "tiny", "--root", root, "--preset", "logmel60", "--workers", "1")
    ok = invoke("store", "verify", "--root", root, "--json")
    assert ok.exit_code == 0 and json.loads(ok.stdout)["items_checked"] == 6
    # the logmel60 set is referenced by manifest "tiny": nothing to collect
    assert json.loads(invoke("store", "gc", "--root", root, "--json").stdout)["removed"] == []
    legacy = ingested.features / "functionals" / "eGeMAPSv02.parquet"  # the old svm cache: reported, then removed
    legacy.parent.mkdir(parents=True)
    legacy.write_bytes(b"PAR1" * 10)
    listed = json.loads(invoke("store", "gc", "--root", root, "--json").stdout)
    assert [r["path"] for r in listed["removed"]] == [str(legacy)] and "functionals" in listed["removed"][0]["reason"]
    assert legacy.exists() and listed["bytes"] >= 40
    invoke("store", "gc", "--root", root, "--apply")
    assert not legacy.exists() and FeatureStore(ingested.features).digests()  # the sets stay
    (ingested.manifests / "tiny.json").unlink()  # manifest gone: both sets unreferenced unless kept
    keep = feature_spec("logmel64").digest()
    plan = json.loads(invoke("store", "gc", "--root", root, "--keep", keep, "--json").stdout)
    assert plan["dry_run"] and [r["path"].rsplit("/", 1)[1] for r in plan["removed"]] == [feature_spec("logmel60").digest()]
    assert "dry run" in invoke("store", "gc", "--root", root, "--keep", keep).stdout
    applied = invoke("store", "gc", "--root", root, "--keep", keep, "--apply", "--json")
    assert applied.exit_code == 0 and FeatureStore(ingested.features).digests() == [keep]

    fset = FeatureStore(ingested.features).get_set(keep)
    chunk = next(p for p in fset.path.rglob("*") if p.is_file() and "/data/c/" in str(p))
    chunk.write_bytes(b"garbage")
    bad = invoke("store", "verify", "--root", root)
    assert bad.exit_code == 1 and "CORRUPT" in bad.stdout and "unreadable batch" in bad.stdout


def test_errors_name_the_bad_value(ingested):
    root = str(ingested.root)
    missing = invoke("featurize", "nope", "--root", root)
    assert isinstance(missing.exception, ManifestError) and "nope" in str(missing.exception)
    bad_aug = invoke("featurize", "tiny", "--root", root, "--augment", "speed=fast")
    assert isinstance(bad_aug.exception, ConfigError) and "fast" in str(bad_aug.exception)
    bad_preset = invoke("featurize", "tiny", "--root", root, "--preset", "mfcc")
    assert isinstance(bad_preset.exception, ConfigError) and "mfcc" in str(bad_preset.exception)


def test_gc_drops_items_of_recordings_gone_from_the_manifest(ingested, tmp_path):
    root = str(ingested.root)
    invoke("featurize", "tiny", "--root", root, "--workers", "1")
    invoke("featurize", "tiny", "--root", root, "--augment", "noise=20", "--workers", "1")
    paths = sorted((tmp_path / "c").glob("u*.wav"))
    write_manifest(manifest_of(paths[:2], "tiny"), [], "tiny", ingested)  # u2 dropped on re-ingest
    plan = json.loads(invoke("store", "gc", "--root", root, "--json").stdout)
    assert plan["dry_run"] and plan["items_removed"] == 2 and plan["removed"] == []
    assert sorted(c["items_dropped"] for c in plan["compacted"]) == [1, 1]  # orig batch and noise batch
    text = invoke("store", "gc", "--root", root).stdout
    assert "would compact 2 batch(es); 2 dead item(s)" in text and "keep 2, drop 1" in text
    applied = invoke("store", "gc", "--root", root, "--apply", "--json")
    assert applied.exit_code == 0
    fset = FeatureStore(ingested.features).open_set(feature_spec("logmel64"))
    assert len(fset) == 4 and {u.rsplit("/", 1)[1] for u in fset.index().utterance_id} == {"u0", "u1"}
    assert json.loads(invoke("store", "verify", "--root", root, "--json").stdout)["ok"]
    assert json.loads(invoke("store", "gc", "--root", root, "--json").stdout)["items_removed"] == 0


@pytest.mark.slow  # starts a LocalCluster and warms librosa up: ~5-10 s
def test_bench_featurize_on_a_folder(tmp_path, write_wav):
    for i in range(3):
        write_wav(tmp_path / "audio" / f"a{i}.wav", 0.3, seed=i)
    result = invoke("bench", "featurize", "--path", str(tmp_path / "audio"), "--workers", "1", "--no-scale", "--repeats", "2",
                    "--scratch", str(tmp_path), "--json")
    assert result.exit_code == 0, result.output
    figures = json.loads(result.stdout)
    assert figures["files"] == 3 and figures["store"]["computed"] == 3 and figures["noop_rerun"]["computed"] == 0
    assert figures["naive"]["audio_s_per_s"] > 0 and figures["ratio"] > 0 and figures["store"]["peak_rss_mb"] > 0
    naive, store = figures["naive"], figures["store"]
    # The printed times are rounded to ms (half a ms each way, a ms for a sum) and the passes over 3
    # tiny files take a few ms: the ratios recomputed from them are only known within these bounds.
    def within(ratio: float, top: float, bottom: float) -> bool:
        return (top - 0.001) / (bottom + 0.001) * 0.99 <= ratio <= (top + 0.001) / max(bottom - 0.001, 1e-4) * 1.01

    assert within(figures["ratio"], naive["seconds"], store["seconds"])
    assert within(figures["ratio_cold"], naive["startup_s"] + naive["seconds"], store["cluster_start_s"] + store["seconds"])
    assert naive["startup_s"] > 0 and store["cluster_start_s"] == 0.0  # --workers 1: in this process, no start-up
    assert figures["repeats"] == 2 and len(naive["runs_s"]) == len(store["runs_s"]) == 2
    assert naive["seconds"] == pytest.approx(sum(naive["runs_s"]) / 2, abs=0.002)  # median of two
    assert figures["ratio_range"][0] <= figures["ratio_range"][1]
    assert list(tmp_path.glob("ser-bench-*")) == []  # scratch removed


def test_override_label_and_sets_from_before_the_key_change_reported_superseded(ingested):
    root = str(ingested.root)
    out = json.loads(invoke("featurize", "tiny", "--root", root, "--set", "n_mels=48", "--json").stdout)
    assert out["label"] == "logmel64 n_mels=48"
    assert out["feature_digest"] == feature_spec("logmel60", n_mels=48).digest()  # preset is only a label
    spec = feature_spec("logmel64", n_mels=48)
    sets_dir = ingested.features / "sets"
    (sets_dir / spec.digest()).rename(sets_dir / spec.legacy_digest())  # a set keyed the old way
    listed = json.loads(invoke("store", "ls", "--root", root, "--json").stdout)["sets"]
    assert [(s["digest"], s["label"], s["superseded_by"]) for s in listed] == [
        (spec.legacy_digest(), "logmel64 n_mels=48", spec.digest())]
    assert invoke("store", "verify", "--root", root).exit_code == 0  # still readable and verifiable
    gc = json.loads(invoke("store", "gc", "--root", root, "--json").stdout)
    assert gc["superseded"] == [{"digest": spec.legacy_digest(), "label": "logmel64 n_mels=48",
                                 "superseded_by": spec.digest()}]
    assert any(spec.legacy_digest() in r["path"] for r in gc["removed"])  # not kept as referenced
    bad = invoke("featurize", "tiny", "--root", root, "--set", "n_mel=48")
    assert bad.exit_code != 0
