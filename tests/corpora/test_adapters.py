"""Every adapter on a generated tree in its real naming scheme, with edge cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import soundfile as sf
from corpus_trees import BUILDERS, UNKNOWN

from ser_pipeline.corpora import CORPORA, get_corpus, prepare
from ser_pipeline.corpora.emotions import CANONICAL
from ser_pipeline.errors import ConfigError, CorpusLayoutError
from ser_pipeline.manifest import MANIFEST_COLUMNS, to_frame


def test_every_registered_adapter_has_a_fixture_tree():
    assert set(CORPORA.names()) == set(BUILDERS)


@pytest.mark.parametrize("adapter", sorted(BUILDERS))
def test_adapter_rows_and_rejects(adapter, make_tree):
    tree = make_tree(adapter)
    rows, rejects = prepare(adapter, tree.path)

    by_id = {r["utterance_id"]: r for r in rows}
    assert set(by_id) == set(tree.rows), f"{adapter}: ids differ"
    for uid, expected in tree.rows.items():
        row = by_id[uid]
        for key, value in expected.items():
            assert row[key] == value, f"{uid}: {key}={row[key]!r}, expected {value!r}"
        assert row["corpus"] == uid.split("/")[0]
        assert row["speaker"].startswith(row["corpus"] + "/")
        assert row["emotion"] in CANONICAL
        assert Path(row["path"]).is_absolute()
        info = sf.info(row["path"])
        assert row["duration_s"] == pytest.approx(info.frames / info.samplerate)
        assert len(row["sha256"]) == 64

    got = {Path(r.path).name: r.reason.split(":")[0] for r in rejects}
    assert got == tree.rejects
    assert all(r.reason for r in rejects)

    frame = to_frame(rows)  # the rows are valid manifest rows
    assert list(frame.columns) == list(MANIFEST_COLUMNS)
    assert frame["utterance_id"].is_unique


@pytest.mark.parametrize("adapter", sorted(BUILDERS))
def test_missing_folder_names_path_and_layout(adapter, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(CorpusLayoutError) as info:
        prepare(adapter, missing)
    assert str(missing) in str(info.value)
    assert get_corpus(adapter).layout in str(info.value)


@pytest.mark.parametrize("adapter", sorted(set(BUILDERS) - {"csv"}))
def test_folder_with_no_parsable_name_is_a_layout_error(adapter, tmp_path, write_wav):
    write_wav(tmp_path / "corpus" / "x" / "y" / "hello world.wav", 0.3)
    with pytest.raises(CorpusLayoutError) as info:
        prepare(adapter, tmp_path / "corpus")
    message = str(info.value)
    assert str(tmp_path / "corpus") in message
    assert ("no Session<N> folder" if adapter == "iemocap" else "hello world.wav") in message
    assert "expected layout" in message


def test_unknown_code_reason_names_the_code(make_tree):
    tree = make_tree("emodb")
    _, rejects = prepare("emodb", tree.path)
    reason = next(r.reason for r in rejects if r.reason.startswith(UNKNOWN))
    assert "'X'" in reason and "11a01Xa.wav" in reason


def test_parsing_never_writes(make_tree):
    tree = make_tree("casia")
    before = sorted((p, p.stat().st_mtime_ns) for p in tree.root.parent.rglob("*"))
    prepare("casia", tree.path)
    after = sorted((p, p.stat().st_mtime_ns) for p in tree.root.parent.rglob("*"))
    assert before == after


def test_casia_nested_and_flat_copies_of_one_recording_share_an_id(tmp_path, write_wav):
    write_wav(tmp_path / "c" / "wangzhe" / "angry" / "201.wav", 0.3)
    write_wav(tmp_path / "c" / "angry" / "201-angry-wangzhe.wav", 0.3)
    rows, _ = prepare("casia", tmp_path / "c")
    assert [r["utterance_id"] for r in rows] == ["casia/wangzhe/angry/201"] * 2


def test_casia_flat_name_disagreeing_with_folder_is_rejected(tmp_path, write_wav):
    write_wav(tmp_path / "c" / "sad" / "201-angry-wangzhe.wav", 0.3)
    write_wav(tmp_path / "c" / "angry" / "202-angry-wangzhe.wav", 0.3)
    rows, rejects = prepare("casia", tmp_path / "c")
    assert [r["utterance_id"] for r in rows] == ["casia/wangzhe/angry/202"]
    assert rejects[0].reason.startswith("inconsistent label")


def test_ravdess_actor_folder_mismatch_is_rejected(tmp_path, write_wav):
    write_wav(tmp_path / "r" / "Actor_02" / "03-01-01-01-01-01-05.wav", 0.3)
    write_wav(tmp_path / "r" / "Actor_05" / "03-01-01-01-01-01-05.wav", 0.3)
    rows, rejects = prepare("ravdess", tmp_path / "r")
    assert len(rows) == 1 and rows[0]["speaker"] == "ravdess/Actor_05"
    assert "Actor_02" in rejects[0].reason


def test_iemocap_options_improvised_only_and_four_class(make_tree):
    tree = make_tree("iemocap")
    rows, rejects = prepare("iemocap", tree.path, improvised_only=True)
    assert {r["utterance_id"] for r in rows} == {"iemocap/Ses01F_impro01_F000", "iemocap/Ses01F_impro01_M001"}
    assert sum("scripted dialog" in r.reason for r in rejects) == 2

    rows, rejects = prepare("iemocap", tree.path, four_class=True)
    emotions = {r["utterance_id"]: (r["emotion"], r["raw_label"]) for r in rows}
    assert emotions == {
        "iemocap/Ses01F_impro01_F000": ("neutral", "neu"),
        "iemocap/Ses01F_impro01_M001": ("happiness", "exc"),
        "iemocap/Ses02M_script01_1_F002": ("anger", "ang"),
    }
    assert any(r.reason == "class not kept: frustration (four_class)" for r in rejects)


def test_iemocap_extra_keeps_dialog_times_and_vad(make_tree):
    tree = make_tree("iemocap")
    rows, _ = prepare("iemocap", tree.path)
    row = next(r for r in rows if r["utterance_id"] == "iemocap/Ses01F_impro01_F000")
    assert row["extra"] == {"dialog": "Ses01F_impro01", "improvised": True, "start": 1.5, "end": 3.25,
                            "vad": [2.5, 3.0, 2.0]}


def test_iemocap_accepts_a_single_session_folder(make_tree):
    tree = make_tree("iemocap")
    rows, _ = prepare("iemocap", tree.root / "Session2")
    assert {r["session"] for r in rows} == {"Ses02"}


def test_csv_adapter_accepts_folder_and_corpus_option(make_tree):
    tree = make_tree("csv")
    rows_file, _ = prepare("csv", tree.path)
    rows_dir, _ = prepare("csv", tree.root, corpus="mine")
    assert [r["utterance_id"].split("/", 1)[1] for r in rows_dir] == [r["utterance_id"].split("/", 1)[1] for r in rows_file]
    assert {r["corpus"] for r in rows_dir} == {"mine"}
    assert all(r["speaker"].startswith("mine/") for r in rows_dir)


def test_csv_missing_column_is_a_layout_error(tmp_path):
    path = tmp_path / "c.csv"
    path.write_text("file,emotion,speaker\na.wav,anger,s1\n")
    with pytest.raises(CorpusLayoutError, match=r"missing column\(s\) \['path'\]"):
        prepare("csv", path)


def test_csv_folder_with_two_csvs_is_ambiguous(tmp_path):
    (tmp_path / "a.csv").write_text("path,emotion,speaker\n")
    (tmp_path / "b.csv").write_text("path,emotion,speaker\n")
    with pytest.raises(CorpusLayoutError, match="2 CSV files"):
        prepare("csv", tmp_path)


def test_unknown_adapter_and_option_are_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="valid names: casia"):
        prepare("nope", tmp_path)
    with pytest.raises(ConfigError, match="unknown for adapter 'casia'"):
        prepare("casia", tmp_path, four_class=True)


def test_string_options_are_converted_and_checked(make_tree):
    tree = make_tree("iemocap")
    rows, _ = prepare("iemocap", tree.path, improvised_only="true")
    assert len(rows) == 2
    with pytest.raises(ConfigError, match="improvised_only='perhaps'"):
        prepare("iemocap", tree.path, improvised_only="perhaps")


def test_describe_lists_layout_and_options():
    desc = get_corpus("iemocap").describe()
    assert desc["layout"].startswith("Session<N>")
    assert desc["options"]["four_class"]["default"] is False
    assert json.dumps(desc)  # JSON-ready


def test_zero_length_and_non_finite_audio_are_rejects(tmp_path, write_wav):
    import numpy as np

    root = tmp_path / "c"
    write_wav(root / "wangzhe" / "angry" / "201.wav", 0.3)
    (root / "wangzhe" / "angry").mkdir(parents=True, exist_ok=True)
    sf.write(str(root / "wangzhe" / "angry" / "202.wav"), np.zeros(0, dtype=np.float32), 16000)
    wave = np.full(1600, 0.1, dtype=np.float32)
    wave[100] = np.nan
    sf.write(str(root / "wangzhe" / "angry" / "203.wav"), wave, 16000, subtype="FLOAT")
    rows, rejects = prepare("casia", root, workers=1)
    assert [r["utterance_id"] for r in rows] == ["casia/wangzhe/angry/201"]
    assert [(Path(r.path).name, r.reason.split(":")[0]) for r in rejects] == [
        ("202.wav", "zero-length audio"),
        ("203.wav", "non-finite samples"),
    ]


def test_symlinked_folders_are_followed_once(tmp_path, write_wav):
    write_wav(tmp_path / "store" / "angry" / "201.wav", 0.3)
    root = tmp_path / "c" / "wangzhe"
    root.mkdir(parents=True)
    (root / "angry").symlink_to(tmp_path / "store" / "angry", target_is_directory=True)
    (root / "loop").symlink_to(root, target_is_directory=True)  # a cycle must not hang the walk
    rows, rejects = prepare("casia", tmp_path / "c")
    assert [r["utterance_id"] for r in rows] == ["casia/wangzhe/angry/201"]
    assert rejects == []
