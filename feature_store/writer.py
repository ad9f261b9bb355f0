"""Writing one batch of items as a Zarr v3 group, then committing it with one atomic rename.

``fault`` is a real hook for tests and operations: it is called with the stage name
(``"start"``, ``"written"``, ``"before_commit"``) and may raise (e.g. ``OSError(ENOSPC)``) to
simulate a failing disk. Whatever fails, the temp batch is removed and nothing becomes visible.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from feature_store.layout import BATCHES, TMP, fsync_tree, new_batch_id
from ser_pipeline.errors import StoreError

FaultHook = Callable[[str], None]
CHUNK_TARGET_BYTES = 768 * 1024  # uncompressed bytes per chunk: ~20 s of log-Mel frames, fast random access


def checksum(array: np.ndarray) -> str:
    """``crc32:<hex>`` of the C-ordered bytes of ``array`` (in its stored dtype)."""
    data = array if array.flags.c_contiguous else np.ascontiguousarray(array)
    return f"crc32:{zlib.crc32(data.data) & 0xFFFFFFFF:08x}"


BLOSC_CNAME, BLOSC_LEVEL = "lz4", 5  # the one codec setting of both functions below


def compressor(typesize: int) -> Any:
    """LZ4 through Blosc with bit shuffle.

    Measured on CASIA log-Mel + deltas (float16): same ratio as zstd (about 1.2; the low mantissa
    bits are noise) at a fraction of the encoding time, which dominates the write.
    """
    from zarr.codecs import BloscCodec  # zarr: only when a batch is written (see store.py)

    return BloscCodec(cname=BLOSC_CNAME, clevel=BLOSC_LEVEL, shuffle="bitshuffle", blocksize=0, typesize=typesize)


def blosc_encoder(typesize: int) -> Any:
    """The numcodecs Blosc that :func:`compressor` configures inside Zarr (same bytes out)."""
    from numcodecs import Blosc

    return Blosc(cname=BLOSC_CNAME, clevel=BLOSC_LEVEL, shuffle=Blosc.BITSHUFFLE, blocksize=0, typesize=typesize)


def write_chunks(array_dir: Path, data: np.ndarray, chunks: tuple[int, ...], chunk_key: Callable[[tuple[int, ...]], str]) -> None:
    """Encode and write every chunk of ``data`` as the Zarr v3 array at ``array_dir`` stores it.

    The array's metadata (``bytes`` little-endian + :func:`compressor`, fill value 0) comes from
    :func:`zarr_template`; this writes the chunk files themselves: the same bytes Zarr's own
    ``create_array(data=...)`` writes (a test compares them file by file), at about a quarter of its CPU. Zarr writes each chunk
    through its event loop, a thread hand-off and a temp-file-plus-rename of its own; the batch is
    already written under ``tmp/`` and committed by one rename, so that per-chunk atomicity buys
    nothing here. Only the last axis may be chunked (``chunks[:-1] == data.shape[:-1]``); the edge
    chunk is padded with the fill value to the full chunk shape, as Zarr stores it.
    """
    if tuple(chunks[:-1]) != tuple(data.shape[:-1]):
        raise StoreError(f"{array_dir}: chunks {chunks} split more than the last axis of {data.shape}")
    encoder = blosc_encoder(data.dtype.itemsize)
    little = data.dtype.newbyteorder("<")
    step, length = chunks[-1], data.shape[-1]
    for index, start in enumerate(range(0, length, step)):
        block = np.ascontiguousarray(data[..., start : start + step], dtype=little)
        if block.shape[-1] < step:  # the edge chunk, padded with the fill value
            block = np.concatenate([block, np.zeros((*chunks[:-1], step - block.shape[-1]), dtype=little)], axis=-1)
        _write_chunk_file(array_dir / chunk_key((0,) * (data.ndim - 1) + (index,)), encoder.encode(block))


def _write_chunk_file(path: Path, encoded: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as sink:
        sink.write(encoded)


def time_chunk(channels: int, bands: int, itemsize: int, *, target: int = CHUNK_TARGET_BYTES) -> int:
    """Frames per chunk: a power of two giving about ``target`` uncompressed bytes (64..8192)."""
    frames = max(1, target // max(1, channels * bands * itemsize))
    return int(min(8192, max(64, 1 << (frames.bit_length() - 1))))


@dataclass(frozen=True)
class ZarrTemplate:
    """The ``zarr.json`` documents Zarr writes for a batch group and its ``data`` array of one dtype
    and rank, and its chunk-key function ``(coords) -> "c/0/0/k"``."""

    group_doc: dict[str, Any]
    array_doc: dict[str, Any]
    chunk_key: Callable[[tuple[int, ...]], str]

    def array_document(self, shape: tuple[int, ...], chunks: tuple[int, ...]) -> dict[str, Any]:
        """The array document for ``shape`` in ``chunks`` (Zarr's regular chunk grid)."""
        grid = self.array_doc["chunk_grid"]
        if grid.get("name") != "regular":
            raise StoreError(f"zarr writes a {grid.get('name')!r} chunk grid; this writer knows 'regular' only")
        return {**self.array_doc, "shape": list(shape),
                "chunk_grid": {**grid, "configuration": {**grid["configuration"], "chunk_shape": list(chunks)}}}


_TEMPLATES: dict[tuple[str, int], ZarrTemplate] = {}


def zarr_template(dtype: str, ndim: int, scratch: Path) -> ZarrTemplate:
    """Zarr itself creates a batch group once per process and (dtype, rank), in a temp folder under
    ``scratch`` (the store's own disk); its metadata documents are then reused with each batch's
    shape and chunks, so a batch costs no Zarr call (about 14 ms of 34 for a 150-item batch). Tests
    read batches back with Zarr and compare the documents with Zarr's own."""
    key = (dtype, ndim)
    if key not in _TEMPLATES:
        import zarr  # only when a batch is written

        scratch.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix="zarr-template-", dir=scratch) as folder:
            group = zarr.open_group(folder, mode="w", zarr_format=3)
            array = group.create_array("data", shape=(1,) * ndim, dtype=np.dtype(dtype), chunks=(1,) * ndim,
                                       fill_value=0, compressors=compressor(np.dtype(dtype).itemsize))
            docs = [json.loads((Path(folder) / name).read_text()) for name in ("zarr.json", "data/zarr.json")]
            _TEMPLATES[key] = ZarrTemplate(docs[0], docs[1], array.metadata.encode_chunk_key)
    return _TEMPLATES[key]


def _json_scalar(value: Any) -> Any:
    if isinstance(value, np.generic):  # numpy scalars in item metadata, as Zarr's own encoder allows
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, allow_nan=True, default=_json_scalar))


def _commit(tmp: Path, final: Path, fault: FaultHook | None) -> None:
    fsync_tree(tmp)
    if fault:
        fault("before_commit")
    final.parent.mkdir(parents=True, exist_ok=True)
    os.rename(tmp, final)
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_group(
    base: Path, data: np.ndarray, chunks: tuple[int, ...], items: list[dict[str, Any]], fault: FaultHook | None
) -> str:
    """Write ``data`` + ``items`` under ``base/tmp/<id>`` and commit to ``base/batches/<id>``."""
    batch_id = new_batch_id()
    tmp = base / TMP / batch_id
    try:
        if fault:
            fault("start")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        template = zarr_template(data.dtype.str, data.ndim, tmp.parent)
        (tmp / "data").mkdir(parents=True)
        _write_json(tmp / "data" / "zarr.json", template.array_document(data.shape, chunks))
        write_chunks(tmp / "data", data, chunks, template.chunk_key)
        _write_json(tmp / "zarr.json", {**template.group_doc, "attributes": {"items": items}})
        if fault:
            fault("written")
        _commit(tmp, base / BATCHES / batch_id, fault)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise _write_failed(batch_id, base, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return batch_id


class FeatureBatchWriter:
    """One batch of feature items, written as they come: ``add`` each item ``(C, F, T_i)``, then
    ``commit`` (one atomic rename), inside ``with`` so that a failure leaves nothing behind.

    The items are cast to ``dtype`` and copied into one chunk buffer ``(C, F, chunk)``; each full
    chunk is encoded and written under ``tmp/<id>`` at once, while the item it came from is still in
    cache. The batch is the same Zarr group :func:`write_feature_batch` always wrote (``data (C, F,
    sum T_i)``, per-item ``offset, frames, checksum``; the chunk files are the bytes Zarr writes),
    without a second copy of the items' data: the writer holds one chunk, not the batch.
    ``fault`` is called with ``"start"`` (first item), ``"written"`` and ``"before_commit"``.
    """

    def __init__(self, set_dir: Path, *, dtype: str, fault: FaultHook | None = None) -> None:
        self.set_dir, self.dtype, self.fault = Path(set_dir), np.dtype(dtype), fault
        self.batch_id = new_batch_id()
        self.items: list[dict[str, Any]] = []
        self.frames = 0
        self._tmp: Path | None = None
        self._buffer: np.ndarray | None = None  # (C, F, chunk) little-endian, the chunk being filled
        self._template: ZarrTemplate | None = None
        self._encoder: Any = None
        self._fill = 0
        self._chunks_written = 0
        self._committed = False

    def __enter__(self) -> FeatureBatchWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed and self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def add(self, meta: dict[str, Any], features: np.ndarray) -> None:
        """Append one item: ``meta`` (``sha256, variant, utterance_id, duration_s``) and its features
        ``(C, F, T)``, stored in the batch's dtype."""
        if self._committed:
            raise StoreError(f"batch {self.batch_id} under {self.set_dir} is committed: start a new batch")
        arr = np.asarray(features, dtype=self.dtype)
        if self._buffer is None:
            self._start(arr)
        channels, bands = self._buffer.shape[:2]
        if arr.ndim != 3 or arr.shape[:2] != (channels, bands):
            raise StoreError(f"{self.set_dir}: item {meta.get('utterance_id')} has shape {arr.shape}, "
                             f"expected ({channels}, {bands}, T)")
        frames = int(arr.shape[2])
        self.items.append({**meta, "offset": self.frames, "frames": frames, "checksum": checksum(arr)})
        self.frames += frames
        step, start = self._buffer.shape[2], 0
        while start < frames:
            n = min(frames - start, step - self._fill)
            self._buffer[..., self._fill : self._fill + n] = arr[..., start : start + n]
            self._fill += n
            start += n
            if self._fill == step:
                self._guarded(self._write_chunk)

    def commit(self) -> str:
        """Write the last chunk and the group's documents, fsync, rename into ``batches/``; returns
        the batch id. StoreError when nothing was added or the disk fails (the temp batch removed)."""
        if not self.items:
            raise StoreError(f"{self.set_dir}: refusing to write an empty batch")
        self._guarded(self._finish)
        self._committed = True
        return self.batch_id

    def _start(self, first: np.ndarray) -> None:
        if first.ndim != 3:
            raise StoreError(f"{self.set_dir}: features of shape {first.shape}, expected (C, F, T)")
        channels, bands = first.shape[:2]
        step = time_chunk(channels, bands, self.dtype.itemsize)
        self._buffer = np.zeros((channels, bands, step), dtype=self.dtype.newbyteorder("<"))
        self._tmp = self.set_dir / TMP / self.batch_id
        self._guarded(self._make_tmp)

    def _make_tmp(self) -> None:
        if self.fault:
            self.fault("start")
        self._tmp.parent.mkdir(parents=True, exist_ok=True)
        self._template = zarr_template(self._buffer.dtype.str, 3, self._tmp.parent)
        (self._tmp / "data").mkdir(parents=True)
        self._encoder = blosc_encoder(self.dtype.itemsize)

    def _write_chunk(self) -> None:
        """Encode and write the chunk buffer (its unfilled tail zeroed: Zarr's fill value)."""
        self._buffer[..., self._fill :] = 0
        _write_chunk_file(self._tmp / "data" / self._template.chunk_key((0, 0, self._chunks_written)),
                          self._encoder.encode(self._buffer))
        self._chunks_written += 1
        self._fill = 0

    def _finish(self) -> None:
        if self._fill:
            self._write_chunk()
        channels, bands, step = self._buffer.shape
        _write_json(self._tmp / "data" / "zarr.json",
                    self._template.array_document((channels, bands, self.frames), (channels, bands, step)))
        _write_json(self._tmp / "zarr.json", {**self._template.group_doc, "attributes": {"items": self.items}})
        if self.fault:
            self.fault("written")
        _commit(self._tmp, self.set_dir / BATCHES / self.batch_id, self.fault)

    def _guarded(self, step: Callable[[], None]) -> None:
        """Run a step that writes; an OSError (full disk...) becomes StoreError, the temp batch removed."""
        try:
            step()
        except OSError as exc:
            if self._tmp is not None:
                shutil.rmtree(self._tmp, ignore_errors=True)
            raise _write_failed(self.batch_id, self.set_dir, exc) from exc


def _write_failed(batch_id: str, base: Path, exc: OSError) -> StoreError:
    """The one error of a batch the disk refused (full disk, permissions...): batch, folder, reason."""
    return StoreError(f"writing batch {batch_id} under {base} failed: {exc}")


def write_feature_batch(
    set_dir: Path, entries: Sequence[tuple[dict[str, Any], np.ndarray]], *, dtype: str, fault: FaultHook | None = None
) -> str:
    """Commit feature items as one batch; returns the batch id.

    ``entries``: ``(meta, features (C, F, T_i))`` with meta keys ``sha256, variant, utterance_id,
    duration_s``. Stored as ``data (C, F, sum T_i)`` in ``dtype`` plus per-item ``offset, frames,
    checksum`` in the group's ``items`` attribute (see :class:`FeatureBatchWriter`).
    """
    if not entries:
        raise StoreError(f"{set_dir}: refusing to write an empty batch")
    with FeatureBatchWriter(set_dir, dtype=dtype, fault=fault) as batch:
        for meta, features in entries:
            batch.add(meta, features)
        return batch.commit()


def write_derived_batch(
    base: Path, entries: Sequence[tuple[dict[str, Any], np.ndarray]], *, fault: FaultHook | None = None
) -> str:
    """Commit derived items (any shapes) as one flat float32 array ``data (sum size_i,)``.

    Per item: ``offset, size, shape, checksum`` (of the float32 bytes) in the ``items`` attribute.
    """
    if not entries:
        raise StoreError(f"{base}: refusing to write an empty batch")
    arrays = [np.ascontiguousarray(a, dtype=np.float32) for _, a in entries]
    items, offset = [], 0
    for (meta, _), arr in zip(entries, arrays, strict=True):
        items.append({**meta, "offset": offset, "size": int(arr.size), "shape": list(arr.shape), "checksum": checksum(arr)})
        offset += int(arr.size)
    data = np.concatenate([a.reshape(-1) for a in arrays])
    return _write_group(base, data, (max(1, min(data.size, 1 << 18)),), items, fault)
