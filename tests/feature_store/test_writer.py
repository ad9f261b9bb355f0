"""The batch writer's own chunk encoding must store exactly what Zarr would."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import zarr

from feature_store.writer import (
    FeatureBatchWriter,
    compressor,
    write_chunks,
    write_derived_batch,
    write_feature_batch,
)
from ser_pipeline.errors import StoreError


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("shape", "chunks", "dtype"),
    [((3, 8, 1000), (3, 8, 256), "float16"),  # an edge chunk of 232 frames, padded
     ((1, 5, 512), (1, 5, 256), "float32"),  # no edge chunk
     ((700,), (256,), "float32")],  # a flat derived batch
)
def test_chunk_files_are_the_bytes_zarr_writes(tmp_path, shape, chunks, dtype):
    data = (np.random.default_rng(1).standard_normal(shape) * 4).astype(dtype)
    ours = zarr.open_group(str(tmp_path / "ours"), mode="w", zarr_format=3)
    array = ours.create_array("data", shape=shape, dtype=dtype, chunks=chunks, fill_value=0,
                              compressors=compressor(data.dtype.itemsize))
    write_chunks(tmp_path / "ours" / "data", data, chunks, array.metadata.encode_chunk_key)
    theirs = zarr.open_group(str(tmp_path / "theirs"), mode="w", zarr_format=3)
    theirs.create_array("data", data=data, chunks=chunks, fill_value=0, compressors=compressor(data.dtype.itemsize),
                        config={"write_empty_chunks": True})

    ours_files, theirs_files = _files(tmp_path / "ours" / "data"), _files(tmp_path / "theirs" / "data")
    assert sorted(ours_files) == sorted(theirs_files)
    assert len([k for k in ours_files if k != "zarr.json"]) == -(-shape[-1] // chunks[-1])
    for key, blob in theirs_files.items():
        assert ours_files[key] == blob, key
    read_back = zarr.open_group(str(tmp_path / "ours"), mode="r")["data"][...]
    assert read_back.dtype == data.dtype and np.array_equal(read_back, data)


def test_chunking_more_than_the_last_axis_is_refused(tmp_path):
    with pytest.raises(StoreError, match=r"chunks \(3, 4, 16\)"):
        write_chunks(tmp_path, np.zeros((3, 8, 32), np.float32), (3, 4, 16), lambda c: "/".join(map(str, c)))


def test_a_batch_reads_back_with_zarr_as_zarr_would_have_written_it(tmp_path):
    rng = np.random.default_rng(2)
    entries = [({"sha256": f"{i:064x}", "variant": "orig", "utterance_id": f"u{i}", "duration_s": np.float64(0.5 + i)},
                rng.standard_normal((3, 4, 50 + 100 * i)).astype(np.float32)) for i in range(3)]
    batch_id = write_feature_batch(tmp_path, entries, dtype="float16")
    group = zarr.open_group(str(tmp_path / "batches" / batch_id), mode="r")
    items = group.attrs["items"]
    assert [(it["utterance_id"], it["offset"], it["frames"], it["duration_s"]) for it in items] == [
        ("u0", 0, 50, 0.5), ("u1", 50, 150, 1.5), ("u2", 200, 250, 2.5)]
    data = group["data"][...]
    for item, (_, features) in zip(items, entries, strict=True):
        assert np.array_equal(data[:, :, item["offset"] : item["offset"] + item["frames"]], features.astype(np.float16))
    # the array document is the one Zarr writes for the same array
    reference = zarr.open_group(str(tmp_path / "reference"), mode="w", zarr_format=3)
    reference.create_array("data", data=data, chunks=group["data"].chunks, fill_value=0, compressors=compressor(2))
    ours = json.loads((tmp_path / "batches" / batch_id / "data" / "zarr.json").read_text())
    assert ours == json.loads((tmp_path / "reference" / "data" / "zarr.json").read_text())


def test_derived_batches_of_any_size_read_back_with_zarr_documents(tmp_path):
    """Derived batches are flat float32 arrays chunked by their size: one template per dtype and
    rank serves every size, and each document equals Zarr's for that shape and chunking."""
    rng = np.random.default_rng(3)
    for n in (3, 1000):
        entries = [({"utterance_id": f"u{i}", "variant": "orig"}, rng.standard_normal((n, 4)).astype(np.float32))
                   for i in range(2)]
        base = tmp_path / f"derived{n}"
        batch_id = write_derived_batch(base, entries)
        array = zarr.open_group(str(base / "batches" / batch_id), mode="r")["data"]
        assert np.array_equal(array[...], np.concatenate([a.reshape(-1) for _, a in entries]))
        reference = zarr.open_group(str(tmp_path / f"reference{n}"), mode="w", zarr_format=3)
        reference.create_array("data", data=array[...], chunks=array.chunks, fill_value=0, compressors=compressor(4))
        ours = json.loads((base / "batches" / batch_id / "data" / "zarr.json").read_text())
        assert ours == json.loads((tmp_path / f"reference{n}" / "data" / "zarr.json").read_text())


def test_items_streamed_across_chunk_edges_are_the_chunks_zarr_writes_for_their_concatenation(tmp_path):
    """FeatureBatchWriter copies items into one chunk buffer and writes each chunk when it fills:
    items that start and end inside chunks give the chunk files Zarr writes for the whole
    concatenated array; an item added after the commit is refused."""
    rng = np.random.default_rng(5)
    entries = [({"sha256": f"{i:064x}", "variant": "orig", "utterance_id": f"u{i}", "duration_s": 1.0},
                (rng.standard_normal((3, 64, int(n))) * 3).astype(np.float32))
               for i, n in enumerate(rng.integers(1, 5000, 9))]
    with FeatureBatchWriter(tmp_path / "set", dtype="float16") as batch:
        for meta, features in entries:
            batch.add(meta, features)
        batch_id = batch.commit()
        with pytest.raises(StoreError, match="committed"):
            batch.add(*entries[0])
    ours = tmp_path / "set" / "batches" / batch_id
    chunks = zarr.open_group(str(ours), mode="r")["data"].chunks
    data = np.concatenate([f.astype(np.float16) for _, f in entries], axis=2)
    assert chunks[2] == 2048 and data.shape[2] > 4 * chunks[2] and data.shape[2] % chunks[2]  # an edge chunk
    theirs = zarr.open_group(str(tmp_path / "theirs"), mode="w", zarr_format=3)
    theirs.create_array("data", data=data, chunks=chunks, fill_value=0, compressors=compressor(2),
                        config={"write_empty_chunks": True})
    ours_files, theirs_files = _files(ours / "data"), _files(tmp_path / "theirs" / "data")
    assert json.loads(ours_files.pop("zarr.json")) == json.loads(theirs_files.pop("zarr.json"))
    assert len(ours_files) == -(-data.shape[2] // chunks[2]) and ours_files == theirs_files
    items = zarr.open_group(str(ours), mode="r").attrs["items"]
    assert [(it["offset"], it["frames"]) for it in items] == [
        (sum(f.shape[2] for _, f in entries[:i]), f.shape[2]) for i, (_, f) in enumerate(entries)]
    assert not any((tmp_path / "set" / "tmp").iterdir())
