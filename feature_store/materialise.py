"""Materialising a manifest into a feature set: plan what is missing, compute it in tasks, commit.

Each task takes many utterances (at most ``batch_size`` items; tasks hold about equal audio), reads
each recording once, checks its bytes against the manifest sha256, computes every requested
variant, and commits one batch.
``client=None`` runs the tasks in this process; with a ``dask.distributed.Client`` they run on
its workers (which write straight into the store, so the store path must be shared with them).
Only small summaries travel back to the caller, so memory does not grow with corpus size.
"""

from __future__ import annotations

import itertools
import math
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import closing
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from feature_store.cluster import (  # noqa: F401 - re-exported
    DASK_ADDRESS_ENV,
    cancel_quietly,
    cluster_threads,
    dask_client,
    in_dask_worker,
    limit_threads,
)
from feature_store.layout import TMP, tmp_is_abandoned
from feature_store.pools import fork_server_available, on_processes, on_threads
from feature_store.recordings import load_checked
from feature_store.store import FeatureStore
from feature_store.writer import FaultHook, FeatureBatchWriter
from ser_pipeline.augment import AugmentSpec, apply_variant, variant_seed
from ser_pipeline.errors import AudioError, ConfigError, SerError, StoreError
from ser_pipeline.extractors import extract_many, extractor, resolve_backend
from ser_pipeline.features import FeatureSpec, load_compute_modules

if TYPE_CHECKING:  # pandas stays out of Dask workers' imports (cluster start-up)
    import pandas as pd

DEFAULT_BATCH_SIZE = 256  # most items per task; see task_size
WAVE_GROUP_BYTES = 2 << 20
"""Decoded audio that a per-wave extractor computes together, read just before: about one core's L2
cache (2 MiB here). Measured on CASIA with 2 worker processes, medians of 5 passes, three rounds:
0.86-0.90 s per pass at 1-4 MiB, 0.92-1.02 s one recording at a time, 0.92-1.00 s the whole task
(every wave of a 200-item task, 38 MB, read before any is computed)."""


@dataclass(frozen=True)
class WorkItem:
    """One recording and the variants of it still to compute."""

    utterance_id: str
    path: str
    sha256: str
    variants: tuple[str, ...]
    seconds: float = 0.0  # the recording's duration from the manifest (0 when it has none): balances the tasks


@dataclass
class TaskResult:
    """What one task reports back (small: no arrays)."""

    computed: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)
    audio_seconds: float = 0.0
    batch: str | None = None
    error: str | None = None  # a StoreError raised in a Dask worker, re-raised by the caller


@dataclass
class MaterialiseReport:
    """Summary of one materialise run."""

    feature_digest: str
    set_path: str
    variants: list[str]
    computed: int = 0
    reused: int = 0
    failed: list[tuple[str, str, str]] = field(default_factory=list)  # (utterance_id, variant, reason)
    seconds: float = 0.0
    audio_seconds: float = 0.0
    batches: int = 0
    repaired: int = 0  # stored items found damaged (checksum, unreadable chunk) and recomputed
    damaged: list[tuple[str, str, str]] = field(default_factory=list)  # (utterance_id, variant, reason) found damaged
    unreadable_batches: list[str] = field(default_factory=list)  # batches whose item list is unreadable (set aside)

    @property
    def audio_seconds_per_second(self) -> float:
        return self.audio_seconds / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["failed"] = [{"utterance_id": u, "variant": v, "reason": r} for u, v, r in self.failed]
        out["damaged"] = [{"utterance_id": u, "variant": v, "reason": r} for u, v, r in self.damaged]
        out["audio_seconds_per_second"] = round(self.audio_seconds_per_second, 1)
        out["seconds"] = round(self.seconds, 3)
        out["audio_seconds"] = round(self.audio_seconds, 3)
        return out


def run_task(set_path: str, spec_dict: dict[str, Any], work: Sequence[WorkItem], fault: FaultHook | None = None,
             backend: str = "numpy", *, limit_blas: bool = True) -> TaskResult:
    """Compute and commit one batch. Bad recordings fail their items; a write failure raises StoreError.

    BLAS is limited to one thread for the duration of the task (restored afterwards in process;
    permanent inside a Dask worker, with torch threads too). ``limit_blas=False`` when the caller
    holds the limit already (a thread pool: the limit is process-wide).
    """
    from threadpoolctl import threadpool_limits

    load_compute_modules()
    if in_dask_worker():
        limit_threads()
    spec = FeatureSpec.from_dict(spec_dict)
    if not limit_blas:
        return _compute_and_commit(Path(set_path), spec, work, fault, backend)
    with threadpool_limits(limits=1):
        return _compute_and_commit(Path(set_path), spec, work, fault, backend)


def run_task_in_worker(set_path: str, spec_dict: dict[str, Any], work: Sequence[WorkItem],
                       fault: FaultHook | None = None, backend: str = "numpy") -> TaskResult:
    """:func:`run_task` for Dask and worker processes: a StoreError (full disk...) comes back as
    ``TaskResult.error``.

    The caller raises it once, cleanly: no worker-side "Compute Failed" traceback per task.
    """
    try:
        return run_task(set_path, spec_dict, work, fault, backend)
    except StoreError as exc:
        return TaskResult(error=str(exc))


def _compute_and_commit(set_path: Path, spec: FeatureSpec, work: Sequence[WorkItem], fault: FaultHook | None,
                        backend: str = "numpy") -> TaskResult:
    """Read each recording once, compute its variants (``(C, F, T)``, or ``(L, H, T)`` for ssl) and
    commit them as one batch.

    A per-wave extractor (numpy log-Mel) computes the recordings in groups of about
    :data:`WAVE_GROUP_BYTES` of decoded audio as they are read, and each item goes into the batch
    writer at once (:class:`FeatureBatchWriter`: encoded chunk by chunk), so a task holds one group
    of waves and one chunk, not every wave or item of the task. A batched extractor (torch, ssl)
    gets every wave of the task in one call.
    """
    result = TaskResult()
    group_bytes = WAVE_GROUP_BYTES if extractor(spec, backend).per_wave else math.inf
    pending: list[tuple[dict[str, Any], np.ndarray, str]] = []  # (meta, varied wave, path)
    with FeatureBatchWriter(set_path, dtype=spec.dtype, fault=fault) as batch:
        for item in work:
            pending += _variants_of(item, spec, result)
            if sum(wave.nbytes for _, wave, _ in pending) >= group_bytes:
                _extract_into(batch, pending, spec, backend, result)
        _extract_into(batch, pending, spec, backend, result)
        if result.computed:
            result.batch = batch.commit()
    return result


def _variants_of(item: WorkItem, spec: FeatureSpec, result: TaskResult) -> list[tuple[dict[str, Any], np.ndarray, str]]:
    """``(meta, varied wave (n,), path)`` for each variant of ``item`` still to compute; a recording
    that cannot be read, or a variant that cannot be made, is added to ``result.failed`` instead."""
    try:
        wave = load_checked(item.path, item.sha256, spec.sample_rate, quality=spec.resample_quality)
    except AudioError as exc:
        result.failed.extend((item.utterance_id, v, str(exc)) for v in item.variants)
        return []
    duration = wave.size / spec.sample_rate
    out = []
    for variant in item.variants:
        try:
            varied = apply_variant(wave, spec.sample_rate, variant, seed=variant_seed(item.sha256, variant))
        except (SerError, ValueError) as exc:
            result.failed.append((item.utterance_id, variant, f"{item.path}: {exc}"))
            continue
        meta = {"sha256": item.sha256, "variant": variant, "utterance_id": item.utterance_id,
                "duration_s": round(duration, 4)}
        out.append((meta, varied, item.path))
    return out


def _extract_into(batch: FeatureBatchWriter, pending: list[tuple[dict[str, Any], np.ndarray, str]],
                  spec: FeatureSpec, backend: str, result: TaskResult) -> None:
    """Compute ``pending`` (emptied) and add each item's features to ``batch``; a wave that fails
    is added to ``result.failed``."""
    for meta, feats, error in _extract_all(pending, spec, backend):
        if error:
            result.failed.append((meta["utterance_id"], meta["variant"], error))
            continue
        batch.add(meta, feats)
        result.computed += 1
        result.audio_seconds += meta["duration_s"]
    pending.clear()


def _extract_all(pending: list[tuple[dict[str, Any], np.ndarray, str]], spec: FeatureSpec, backend: str
                 ) -> Iterator[tuple[dict[str, Any], np.ndarray | None, str]]:
    """``(meta, features, "")`` per pending wave, or ``(meta, None, reason)``: one batched call, and
    item by item only when the batch fails (so one bad wave fails alone)."""
    try:
        feats = extract_many([w for _, w, _ in pending], spec, backend=backend)
    except (SerError, ValueError):
        for meta, wave, path in pending:
            try:
                yield meta, extract_many([wave], spec, backend=backend)[0], ""
            except (SerError, ValueError) as exc:
                yield meta, None, f"{path}: {exc}"
        return
    for (meta, _, _), f in zip(pending, feats, strict=True):
        yield meta, f, ""


def variant_list(augment: AugmentSpec | Sequence[str] | None) -> list[str]:
    """Canonical variant keys, ``orig`` first."""
    if augment is None:
        return ["orig"]
    spec = augment if isinstance(augment, AugmentSpec) else AugmentSpec.of(list(augment))
    return list(spec.variants)


def check_manifest(manifest: pd.DataFrame) -> None:
    missing = [c for c in ("utterance_id", "path", "sha256") if c not in manifest.columns]
    if missing:
        raise ConfigError(f"manifest: missing column(s) {missing}")


class _Without:
    """``have`` minus ``bad``, for ``in`` tests only."""

    def __init__(self, have: Any, bad: Any) -> None:
        self.have, self.bad = have, bad

    def __contains__(self, key: object) -> bool:
        return key in self.have and key not in self.bad


def reusable_keys(manifest: pd.DataFrame, variants: Sequence[str], have: Any) -> list[tuple[str, str]]:
    """The ``(sha256, variant)`` keys of ``manifest`` already in ``have`` (each recording once)."""
    shas = dict.fromkeys(str(s) for s in manifest["sha256"])
    return [(sha, v) for sha in shas for v in variants if (sha, v) in have]


def damaged_items(fset: Any, manifest: pd.DataFrame, variants: Sequence[str]) -> dict[tuple[str, str], str]:
    """``{(sha256, variant): reason}`` of stored items ``manifest`` would reuse that fail their checks."""
    return fset.check(reusable_keys(manifest, variants, fset.key_set()))


def plan(
    manifest: pd.DataFrame, variants: Sequence[str], have: set[tuple[str, str]] | Any, *, force: bool = False
) -> tuple[list[WorkItem], int]:
    """Work still to do (one WorkItem per recording) and the number of items reused.

    Recordings with the same sha256 are computed once. ``have`` supports ``(sha, variant) in have``.
    """
    work: list[WorkItem] = []
    reused = 0
    seen: set[str] = set()
    durations = manifest["duration_s"] if "duration_s" in manifest.columns else [0.0] * len(manifest)
    for uid, path, sha, seconds in zip(manifest["utterance_id"], manifest["path"], manifest["sha256"], durations,
                                       strict=True):
        if sha in seen:
            continue
        seen.add(sha)
        todo = tuple(v for v in variants if force or (sha, v) not in have)
        reused += len(variants) - len(todo)
        if todo:
            work.append(WorkItem(str(uid), str(path), str(sha), todo, _seconds(seconds)))
    return work, reused


def _seconds(value: Any) -> float:
    """A manifest duration as a task-balancing weight: 0.0 when missing or not a positive number."""
    try:
        seconds = float(value)
    except (TypeError, ValueError):
        return 0.0
    return seconds if math.isfinite(seconds) and seconds > 0 else 0.0


def task_size(total_items: int, batch_size: int, parallel: int) -> int:
    """Items per task: at most ``batch_size``, split evenly into a multiple of ``parallel`` tasks.

    Fewer, larger tasks amortise the per-batch cost (Zarr group, fsync, scheduling: ~25 ms each,
    measured); equal sizes in a multiple of the worker count keep every worker busy to the end.
    E.g. 1200 items, at most 256, 2 workers -> 6 tasks of about 200 (:func:`chunk_work` cuts them where
    their audio is equal: 139-250 items of 380-384 s each on CASIA).
    """
    n_tasks = max(1, math.ceil(total_items / batch_size))
    n_tasks = math.ceil(n_tasks / parallel) * parallel
    return max(1, math.ceil(total_items / n_tasks))


def chunk_work(work: Sequence[WorkItem], task_items: int, most: int | None = None) -> Iterator[list[WorkItem]]:
    """As many tasks as ``task_items`` items each would make, cut where their audio is about equal.

    A task's cost is its items' audio (duration x variants; the item count when a duration is
    missing), so that equal tasks on equal workers finish together: on CASIA, tasks of 200 items held
    299-512 s of audio each, and one of the two workers ran 67 s of audio after the other had finished
    (about 5% of the pass). No task gets more than ``most`` items (default ``task_items``): a run of
    short recordings is cut there. A recording's variants stay together.
    """
    if not work:
        return
    most = max(task_items, most or task_items)
    weights = [len(w.variants) * w.seconds for w in work]
    if not all(weights):  # a duration is missing: items are the cost
        weights = [float(len(w.variants)) for w in work]
    n_tasks = max(1, math.ceil(sum(len(w.variants) for w in work) / task_items))
    target = sum(weights) / n_tasks
    task: list[WorkItem] = []
    done, size, boundary = 0.0, 0, 1
    for item, weight in zip(work, weights, strict=True):
        task.append(item)
        done += weight
        size += len(item.variants)
        if size >= most or done >= boundary * target:
            yield task
            task, size = [], 0
            boundary = math.floor(done / target) + 1  # the next multiple of the target not yet reached
    if task:
        yield task


def remove_abandoned_tmp(set_path: Path) -> list[Path]:
    """Delete temp batches left by dead writers; returns the removed paths."""
    removed = []
    root = set_path / TMP
    if root.is_dir():
        for tmp in sorted(root.iterdir()):
            if tmp_is_abandoned(tmp):
                shutil.rmtree(tmp, ignore_errors=True)
                removed.append(tmp)
    return removed


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="item", desc="featurize", file=sys.stderr)


def materialise(
    manifest: pd.DataFrame,
    spec: FeatureSpec,
    augment: AugmentSpec | Sequence[str] | None,
    store: FeatureStore,
    *,
    manifest_name: str = "",
    manifest_digest: str = "",
    client: Any = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    force: bool = False,
    progress: bool = False,
    fault: FaultHook | None = None,
    threads: int = 1,
    processes: int = 1,
    backend: str = "numpy",
) -> MaterialiseReport:
    """Compute every missing (recording, variant) item of ``manifest`` into the set of ``spec``.

    A stored item is reused only after its checks pass (:meth:`FeatureSet.check`: checksum,
    readable chunks); a damaged item counts as missing and is recomputed into a new batch (which
    supersedes it), counted in ``repaired``. Items of a batch whose item list is unreadable are
    missing too; the batch is named in ``unreadable_batches`` (``verify --repair`` sets it aside).

    Returns counts of computed, reused, repaired and failed items, with each failure's reason. StoreError
    before any work when the store cannot be written; StoreError when a write fails mid-run (the
    batches committed before stay readable). ``fault`` is passed to the writer (tests).

    Where tasks run: on ``client`` (Dask) when given; else on ``processes`` local worker processes
    (:func:`feature_store.pools.on_processes`) when more than one; else on ``threads`` threads of this process.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size={batch_size!r}: must be >= 1")
    if threads < 1:
        raise ConfigError(f"threads={threads!r}: must be >= 1")
    if processes < 1:
        raise ConfigError(f"processes={processes!r}: must be >= 1")
    backend = resolve_backend(backend)
    check_manifest(manifest)
    variants = variant_list(augment)
    start = time.perf_counter()
    store.ensure_writable()
    fset = store.open_set(spec, create=True)
    remove_abandoned_tmp(fset.path)
    damaged = {} if force else damaged_items(fset, manifest, variants)
    work, reused = plan(manifest, variants, _Without(fset.key_set(), damaged), force=force)
    report = MaterialiseReport(feature_digest=fset.digest, set_path=str(fset.path), variants=variants, reused=reused,
                               unreadable_batches=sorted(fset.unreadable_batches()))
    uid_of = {w.sha256: w.utterance_id for w in work}
    report.damaged = [(uid_of.get(sha, sha), var, why) for (sha, var), why in damaged.items()]
    total = sum(len(w.variants) for w in work)
    pool = Pool("dask", cluster_threads(client)) if client is not None else (
        Pool("processes", processes) if processes > 1 else Pool("threads", threads))
    tasks = list(chunk_work(work, task_size(total, batch_size, pool.size), most=batch_size))
    bar = _progress(total, progress and bool(work))
    try:
        for result, n_items in _run_tasks(tasks, str(fset.path), spec.to_dict(), client, pool, fault, backend):
            report.computed += result.computed
            report.failed.extend(result.failed)
            report.audio_seconds += result.audio_seconds
            report.batches += int(result.batch is not None)
            if bar is not None:
                bar.update(n_items)
    finally:
        if bar is not None:
            bar.close()
    failed_keys = {(uid, var) for uid, var, _ in report.failed}
    report.repaired = sum((uid, var) not in failed_keys for uid, var, _ in report.damaged)
    fset.record_manifest(manifest_name, manifest_digest, variants)
    fset.refresh()
    report.seconds = time.perf_counter() - start
    return report


@dataclass(frozen=True)
class Pool:
    """Where tasks run: ``kind`` ``threads`` (this process), ``processes`` (local worker processes)
    or ``dask`` (a client's cluster), with ``size`` tasks at once."""

    kind: str
    size: int


def _run_tasks(
    tasks: list[list[WorkItem]], set_path: str, spec_dict: dict[str, Any], client: Any, pool: Pool,
    fault: FaultHook | None,
    backend: str = "numpy",
) -> Iterator[tuple[TaskResult, int]]:
    """Yield ``(result, items in task)`` as tasks finish: in this process (one thread, or ``pool.size``
    threads), on local worker processes forked from a fork server (:mod:`feature_store.pools`), or on
    Dask with bounded flight."""
    sizes = [sum(len(w.variants) for w in t) for t in tasks]
    if pool.kind != "dask" and (pool.size <= 1 or len(tasks) <= 1):
        for task, size in zip(tasks, sizes, strict=True):
            yield run_task(set_path, spec_dict, task, fault, backend), size
        return
    calls = [(set_path, spec_dict, task, fault, backend) for task in tasks]
    if pool.kind == "processes" and fault is None and fork_server_available():  # a fault hook (tests) need
        # not pickle: threads then. A StoreError in a worker comes back as TaskResult.error, raised here once.
        with closing(on_processes(run_task_in_worker, calls, pool.size)) as done:
            for i, result in done:
                if result.error:
                    raise StoreError(result.error)
                yield result, sizes[i]
        return
    if pool.kind != "dask":  # BLAS limited to one thread for the whole pool (the limit is process-wide)
        from threadpoolctl import threadpool_limits

        load_compute_modules()
        with threadpool_limits(limits=1), closing(on_threads(partial(run_task, limit_blas=False), calls, pool.size)) as done:
            for i, result in done:
                yield result, sizes[i]
        return
    parallel = pool.size
    from distributed import as_completed

    pending = iter(zip(tasks, sizes, strict=True))
    in_flight = {}
    completed = as_completed()
    submitted = []
    for task, size in _take(pending, 4 * parallel):
        fut = client.submit(run_task_in_worker, set_path, spec_dict, task, fault, backend, pure=False)
        in_flight[fut.key] = size
        completed.add(fut)
        submitted.append(fut)
    try:
        for fut in completed:
            size = in_flight.pop(fut.key)
            result = fut.result()
            if result.error:
                raise StoreError(result.error)
            for task, nsize in _take(pending, 1):
                nxt = client.submit(run_task_in_worker, set_path, spec_dict, task, fault, backend, pure=False)
                in_flight[nxt.key] = nsize
                completed.add(nxt)
                submitted.append(nxt)
            yield result, size
    except BaseException:
        cancel_quietly(client, [f for f in submitted if not f.done()])
        raise


def _take(it: Iterator[Any], n: int) -> list[Any]:
    """The next ``n`` elements of ``it`` (fewer at its end)."""
    return list(itertools.islice(it, n))


