"""The real corpora in ../shared/corpora (skipped with a reason when absent)."""

from __future__ import annotations

import pytest

from ser_pipeline.corpora import ingest
from ser_pipeline.manifest import read_manifest

pytestmark = pytest.mark.real_corpus


def test_casia(shared_corpora, workspace):
    summary = ingest("casia", shared_corpora / "casia", None, workspace)
    assert summary["utterances"] == 1200
    assert summary["speakers"] == 4
    assert summary["classes"] == {c: 200 for c in ("anger", "fear", "happiness", "neutral", "sadness", "surprise")}
    assert summary["rejected"] == 0
    frame = read_manifest("casia", workspace)
    assert set(frame["speaker"]) == {"casia/liuchanhg", "casia/wangzhe", "casia/zhaoquanyin", "casia/ZhaoZuoxiang"}
    assert frame.groupby("gender")["speaker"].nunique().to_dict() == {"f": 2, "m": 2}
    assert frame["text_id"].nunique() == 50
    assert (frame["sample_rate"] == 16000).all() and (frame["channels"] == 1).all()


def test_ravdess(shared_corpora, workspace):
    summary = ingest("ravdess", shared_corpora / "ravdess16k", None, workspace)
    assert summary["utterances"] == 1440
    assert summary["speakers"] == 24
    assert len(summary["classes"]) == 8
    assert summary["classes"]["neutral"] == 96 and summary["classes"]["calm"] == 192
    assert summary["rejected"] == 0
    frame = read_manifest("ravdess", workspace)
    assert int((frame["channels"] == 2).sum()) == 5
    assert frame.groupby("gender")["speaker"].nunique().to_dict() == {"f": 12, "m": 12}
    assert frame["path"].str.endswith(".flac").all()
