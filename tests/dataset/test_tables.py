"""Preloaded feature tables, normalisation (training statistics only), folds and loaders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from ser_pipeline.dataset.normalise import normalise_tables
from ser_pipeline.dataset.tables import (
    DictSource,
    SourceDataset,
    TableDataset,
    _pack,
    build_fold_data,
    class_weights,
    collate_padded,
    concat_tables,
    index_batches,
    load_table,
    make_loader,
)
from ser_pipeline.errors import ConfigError, StoreError

CLASSES = ["anger", "neutral"]


def tiny_corpus(n_per_speaker: int = 4, speakers: tuple[str, ...] = ("s1", "s2", "s3")) -> tuple[pd.DataFrame, DictSource]:
    """A manifest and a source of (2, 3, T) features; speaker k's values are offset by 10 * k."""
    rng = np.random.default_rng(0)
    rows, items = [], {}
    for k, spk in enumerate(speakers):
        for i in range(n_per_speaker):
            uid = f"c/{spk}/{i}"
            sha = f"sha-{spk}-{i}"
            T = 5 + i
            for variant in ("orig", "speed=0.9"):
                items[(sha, variant)] = (10 * k + rng.standard_normal((2, 3, T)) + (variant != "orig")).astype(np.float32)
            rows.append({"utterance_id": uid, "sha256": sha, "speaker": spk, "emotion": CLASSES[i % 2]})
    return pd.DataFrame(rows), DictSource(items)


def test_load_table_concatenates_and_batches_with_padding() -> None:
    manifest, source = tiny_corpus()
    table = load_table(source, manifest, CLASSES, ["s1", "s2", "s3"], variants=("orig", "speed=0.9"))
    assert len(table) == 24 and table.shape == (2, 3)
    assert table.variants[:2] == ["orig", "speed=0.9"] and table.utterance_ids[0] == table.utterance_ids[1]
    x, lengths = table.batch(torch.tensor([0, 6]))
    assert x.shape == (2, 2, 3, 8) and lengths.tolist() == [5, 8]
    expected = source.read_many([("sha-s1-0", "orig")])[0]
    assert np.allclose(x[0, :, :, :5].numpy(), expected)
    assert torch.all(x[0, :, :, 5:] == 0)
    assert table.labels.tolist()[:4] == [0, 0, 1, 1]


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_stored_dtypes_are_converted_to_float32_time_major_frames(dtype) -> None:
    """Items come from the store as float16 (any float dtype is accepted): each is written into the
    table's float32 frames as ``np.asarray(item, float32)`` would convert it, time-major."""
    rng = np.random.default_rng(0)
    arrays = [(rng.standard_normal((2, 3, n)) * 100).astype(dtype) for n in (5, 1, 7)]
    handed = list(arrays)
    table = _pack(handed, [0, 1, 0], [0, 0, 1], ["a", "b", "c"], ["orig"] * 3, ["s1", "s2"])
    assert table.frames.dtype == torch.float32 and table.frames.is_contiguous() and table.frames.shape == (13, 2, 3)
    for i, a in enumerate(arrays):
        assert np.array_equal(table.item(i).numpy(), a.astype(np.float32))
    assert handed == [None] * 3  # consumed: each stored array is freed once written into the table
    with pytest.raises(StoreError, match="disagree"):
        _pack([arrays[0], np.zeros((2, 4, 3), dtype)], [0, 1], [0, 0], ["a", "b"], ["orig"] * 2, ["s1"])


def test_missing_item_and_unknown_class_are_clear_errors() -> None:
    manifest, source = tiny_corpus()
    with pytest.raises(StoreError, match="not stored"):
        load_table(source, manifest, CLASSES, ["s1"], variants=("pitch=2",))
    with pytest.raises(ConfigError, match="emotion"):
        load_table(source, manifest, ["anger"], ["s1"])


def test_utterance_normalisation_gives_zero_mean_unit_std() -> None:
    manifest, source = tiny_corpus()
    table = load_table(source, manifest, CLASSES, ["s1", "s2", "s3"])
    out = normalise_tables({"train": table}, "utterance")["train"]
    item = out.item(3)
    assert torch.allclose(item.mean(dim=2), torch.zeros(2, 3), atol=1e-5)
    assert torch.allclose(item.std(dim=2, unbiased=False), torch.ones(2, 3), atol=1e-3)


def test_global_and_speaker_statistics_come_from_training_only() -> None:
    manifest, source = tiny_corpus()
    names = ["s1", "s2", "s3"]
    train = load_table(source, manifest[manifest.speaker != "s3"], CLASSES, names)
    test = load_table(source, manifest[manifest.speaker == "s3"], CLASSES, names)
    g = normalise_tables({"train": train, "test": test}, "global")
    assert abs(float(g["train"].frames.mean())) < 1e-4
    assert float(g["test"].frames.mean()) > 1.0  # s3 is offset by 30: training statistics do not remove it
    # changing the test data never changes the normalised training data
    shifted = test.with_labels(test.labels)
    shifted.frames = test.frames + 100
    g2 = normalise_tables({"train": train, "test": shifted}, "global")
    assert torch.equal(g["train"].frames, g2["train"].frames)
    s = normalise_tables({"train": train, "test": test}, "speaker")
    assert abs(float(s["test"].frames.mean())) < 1e-4  # unseen speaker: its own statistics
    s1 = s["train"].frames[: int(train.lengths[:4].sum())]
    assert abs(float(s1.mean())) < 1e-4


def test_build_fold_data_uses_variants_for_training_only() -> None:
    manifest, source = tiny_corpus()
    ids = lambda spk: manifest.loc[manifest.speaker == spk, "utterance_id"].tolist()  # noqa: E731
    fold = build_fold_data(source, manifest, name="f", train_ids=ids("s1"), val_ids=ids("s2"), test_ids=ids("s3"),
                           classes=CLASSES, train_variants=("orig", "speed=0.9"), normalise="none")
    assert set(fold.train.variants) == {"orig", "speed=0.9"} and len(fold.train) == 8
    assert set(fold.val.variants) == {"orig"} and set(fold.test.variants) == {"orig"}
    with pytest.raises(ConfigError, match="shares utterances"):
        build_fold_data(source, manifest, name="f", train_ids=ids("s1"), val_ids=ids("s2"), test_ids=ids("s1"),
                        classes=CLASSES)


def test_missing_training_class_warns() -> None:
    manifest, source = tiny_corpus()
    only_anger = manifest[(manifest.speaker == "s1") & (manifest.emotion == "anger")]["utterance_id"].tolist()
    ids = lambda spk: manifest.loc[manifest.speaker == spk, "utterance_id"].tolist()  # noqa: E731
    with pytest.warns(UserWarning, match="neutral"):
        build_fold_data(source, manifest, name="f", train_ids=only_anger, val_ids=ids("s2"), test_ids=ids("s3"),
                        classes=CLASSES)


def test_class_weights_inverse_frequency_and_absent_class() -> None:
    w = class_weights(torch.tensor([0, 0, 0, 1]), 3)
    assert torch.allclose(w, torch.tensor([4 / 6, 4 / 2, 0.0]))


def test_index_batches_cover_everything_and_are_seeded() -> None:
    a = torch.cat(list(index_batches(10, 3, shuffle=True, generator=torch.Generator().manual_seed(5))))
    b = torch.cat(list(index_batches(10, 3, shuffle=True, generator=torch.Generator().manual_seed(5))))
    assert torch.equal(a, b) and sorted(a.tolist()) == list(range(10))
    assert [len(i) for i in index_batches(10, 3, shuffle=False)] == [3, 3, 3, 1]


def test_dataloader_path_matches_in_memory_batches() -> None:
    manifest, source = tiny_corpus()
    table = load_table(source, manifest, CLASSES, ["s1", "s2", "s3"])
    x_mem, len_mem = table.batch(torch.tensor([0, 1, 2]))
    x_dl, len_dl, labels, speakers = next(iter(make_loader(TableDataset(table), 3, shuffle=False)))
    assert torch.equal(x_mem, x_dl) and torch.equal(len_mem, len_dl)
    assert labels.tolist() == table.labels[:3].tolist() and speakers.tolist() == [0, 0, 0]
    lazy = SourceDataset(source, [("sha-s1-0", "orig"), ("sha-s1-1", "orig")], [0, 1], [0, 0])
    x_lazy, lengths, _, _ = collate_padded([lazy[0], lazy[1]])
    assert torch.allclose(x_lazy, x_mem[:2, :, :, :6])


def test_concat_tables_keeps_every_item_in_order() -> None:
    manifest, source = tiny_corpus()
    ids = list(manifest["utterance_id"])
    names = sorted(manifest["speaker"].unique())
    by_id = manifest.set_index("utterance_id", drop=False)
    first = load_table(source, by_id.loc[ids[:5]], CLASSES, names)
    second = load_table(source, by_id.loc[ids[5:9]], CLASSES, names)
    both = concat_tables(first, second)
    assert len(both) == 9 and both.utterance_ids == ids[:9]
    for i in range(5):
        assert torch.equal(both.item(i), first.item(i))
    for i in range(4):
        assert torch.equal(both.item(5 + i), second.item(i))
    assert torch.equal(both.labels, torch.cat([first.labels, second.labels]))
    assert torch.equal(both.speakers, torch.cat([first.speakers, second.speakers]))
    other = load_table(source, by_id.loc[ids[5:9]], CLASSES, names[:1] + ["someone else"] + names[2:])
    with pytest.raises(ConfigError, match="speaker_names"):
        concat_tables(first, other)


def test_sequence_batches_are_rows_of_the_kept_whole_view() -> None:
    """The ``sequence`` view of any batch equals ``apply_view`` of its padded batch, bit for bit
    (padded to the batch's own longest item), though it is a row selection of the view of the whole
    table built once."""
    from ser_pipeline.dataset.views import ViewSpec, apply_view

    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal((1, 6, int(n))).astype(np.float32) for n in rng.integers(1, 5, size=9)]
    table = _pack(arrays, [0] * 9, [0] * 9, [f"u{i}" for i in range(9)], ["orig"] * 9, ["s"])
    spec = ViewSpec(kind="sequence")
    for index in (torch.tensor([3, 0, 7]), torch.tensor([1]), torch.arange(9), torch.tensor([8, 2, 2])):
        got = table.view(index, spec)
        x, lengths = table.batch(index)
        want = apply_view(spec, x, lengths)
        assert got.x.shape == want.x.shape and torch.equal(got.x, want.x) and torch.equal(got.mask, want.mask)
    assert table.sequence_view(spec) is table.sequence_view(spec)  # built once
