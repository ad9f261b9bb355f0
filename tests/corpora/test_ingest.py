"""ingest(): manifest writing, digests, atomicity, bad input and the label configuration."""

from __future__ import annotations

from pathlib import Path

import pytest

from ser_pipeline.corpora import ingest
from ser_pipeline.corpora.emotions import LabelConfig, canonical_name
from ser_pipeline.errors import ConfigError, CorpusLayoutError, ManifestError
from ser_pipeline.manifest import Reject, read_manifest, read_rejects, read_summary


def manifest_files(ws):
    return sorted(p.name for p in ws.manifests.iterdir()) if ws.manifests.exists() else []


def test_ingest_writes_manifest_rejects_and_summary(make_tree, workspace):
    tree = make_tree("emodb")
    summary = ingest("emodb", tree.path, None, workspace)
    assert manifest_files(workspace) == ["emodb.json", "emodb.parquet", "emodb.rejects.parquet"]
    frame = read_manifest("emodb", workspace)
    assert sorted(frame["utterance_id"]) == sorted(tree.rows)
    assert summary["utterances"] == 3 and summary["speakers"] == 3
    assert summary["classes"] == {"anger": 1, "happiness": 1, "sadness": 1}
    assert summary["rejected"] == 4
    assert summary["rejects_by_reason"] == {
        "all-silent audio": 1, "unknown emotion code": 1, "unparseable name": 1, "unreadable audio": 1,
    }
    assert summary["total_duration_s"] == pytest.approx(1.2, abs=1e-3)
    assert read_summary("emodb", workspace)["digest"] == summary["digest"]
    assert len(read_rejects("emodb", workspace)) == 4


def test_reingest_is_byte_identical(make_tree, workspace):
    tree = make_tree("ravdess")
    first = ingest("ravdess", tree.path, "r", workspace)
    data = {n: (workspace.manifests / n).read_bytes() for n in manifest_files(workspace)}
    second = ingest("ravdess", tree.path, "r", workspace)
    assert second["digest"] == first["digest"]
    assert {n: (workspace.manifests / n).read_bytes() for n in manifest_files(workspace)} == data


def test_changed_or_added_file_changes_the_digest(make_tree, workspace, write_wav):
    tree = make_tree("casia")
    d0 = ingest("casia", tree.path, None, workspace)["digest"]
    write_wav(tree.root / "liuchanhg" / "angry" / "201.wav", 0.4, freq=300.0)  # same name, new content
    d1 = ingest("casia", tree.path, None, workspace)["digest"]
    write_wav(tree.root / "wangzhe" / "happy" / "210.wav", 0.4)
    s2 = ingest("casia", tree.path, None, workspace)
    assert len({d0, d1, s2["digest"]}) == 3
    assert s2["utterances"] == 4


def test_write_is_atomic_and_leaves_no_temp_files(make_tree, workspace, monkeypatch):
    tree = make_tree("savee")
    ingest("savee", tree.path, None, workspace)
    before = (workspace.manifests / "savee.parquet").read_bytes()
    assert not [p for p in workspace.manifests.iterdir() if p.name.endswith(".tmp")]

    # A crash at the rename: the old manifest stays intact and the temp file is removed.
    import ser_pipeline.manifest as manifest_module

    written = []

    def broken_replace(src, dst):
        written.append(Path(src).read_bytes())
        raise OSError("disk full")

    monkeypatch.setattr(manifest_module.os, "replace", broken_replace)
    (tree.root / "DC_h02.wav").write_bytes((tree.root / "DC_a01.wav").read_bytes())
    with pytest.raises(OSError, match="disk full"):
        ingest("savee", tree.path, None, workspace)
    assert written and written[0] != before  # the new content had reached the temp file
    assert (workspace.manifests / "savee.parquet").read_bytes() == before
    assert not [p for p in workspace.manifests.iterdir() if p.name.endswith(".tmp")]


def test_missing_path_writes_nothing(tmp_path, workspace):
    with pytest.raises(CorpusLayoutError, match="no such corpus folder"):
        ingest("casia", tmp_path / "absent", None, workspace)
    assert manifest_files(workspace) == []


def test_no_parsable_file_writes_nothing(tmp_path, workspace, write_wav):
    write_wav(tmp_path / "c" / "song.wav", 0.3)
    with pytest.raises(CorpusLayoutError, match="expected layout"):
        ingest("emodb", tmp_path / "c", None, workspace)
    assert manifest_files(workspace) == []


def test_every_file_rejected_is_an_error(tmp_path, workspace, write_wav):
    write_wav(tmp_path / "c" / "wav" / "03a01Fa.wav", 0.3, silent=True)
    (tmp_path / "c" / "wav" / "03a02Wa.wav").write_bytes(b"garbage")
    with pytest.raises(ManifestError, match="every file was rejected") as info:
        ingest("emodb", tmp_path / "c", None, workspace)
    assert "all-silent audio" in str(info.value) and "unreadable audio" in str(info.value)
    assert manifest_files(workspace) == []


def test_duplicate_ids_name_both_paths(tmp_path, workspace, write_wav):
    a = write_wav(tmp_path / "c" / "wangzhe" / "angry" / "201.wav", 0.3)
    b = write_wav(tmp_path / "c" / "angry" / "201-angry-wangzhe.wav", 0.3)
    with pytest.raises(ManifestError, match="duplicate utterance id") as info:
        ingest("casia", tmp_path / "c", None, workspace)
    assert str(a) in str(info.value) and str(b) in str(info.value)
    assert manifest_files(workspace) == []


def test_keep_and_merge(make_tree, workspace):
    tree = make_tree("iemocap")
    summary = ingest("iemocap", tree.path, "iem4", workspace, keep=["happiness", "anger", "neutral", "sadness"],
                     merge={"excited": "happiness"})
    assert summary["classes"] == {"anger": 1, "happiness": 1, "neutral": 1}
    frame = read_manifest("iem4", workspace)
    assert frame.set_index("utterance_id").loc["iemocap/Ses01F_impro01_M001", "raw_label"] == "exc"
    assert summary["rejects_by_reason"]["class not kept"] == 1  # frustration


def test_keep_with_unknown_name_is_a_config_error(make_tree, workspace):
    tree = make_tree("emodb")
    with pytest.raises(ConfigError, match="keep='joyful'"):
        ingest("emodb", tree.path, None, workspace, keep=["joyful"])
    assert manifest_files(workspace) == []


def test_bad_manifest_name_is_rejected(make_tree, workspace):
    tree = make_tree("emodb")
    with pytest.raises(ConfigError, match="name='../evil'"):
        ingest("emodb", tree.path, "../evil", workspace)


def test_label_config_maps_and_digests():
    cfg = LabelConfig.from_options(keep=["happy", "sad"], merge={"exc": "happy"})
    assert cfg.keep == ("happiness", "sadness") and cfg.merge == (("excited", "happiness"),)
    assert cfg.map_emotion("excited") == "happiness"
    assert cfg.map_emotion("anger") is None
    rows, dropped = cfg.apply([{"emotion": "anger", "path": "/a.wav"}, {"emotion": "sadness", "path": "/b.wav"}])
    assert rows == [{"emotion": "sadness", "path": "/b.wav"}]
    assert dropped == [Reject("/a.wav", "class not kept: anger")]
    assert LabelConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.digest() != LabelConfig().digest()
    assert LabelConfig().is_identity


def test_canonical_names():
    assert canonical_name("Angry") == "anger"
    assert canonical_name("ps") == "surprise"
    assert canonical_name("neutral") == "neutral"
    assert canonical_name("grumpy") is None
