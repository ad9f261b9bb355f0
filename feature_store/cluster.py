"""Where tasks run on Dask: the client (an address or a local process cluster), its clean
shutdown, the local workers' environment and warm-up, and the one-thread-per-worker limits."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from ser_pipeline.errors import ConfigError, StoreError
from ser_pipeline.features import FeatureSpec, extract

DASK_ADDRESS_ENV = "SER_DASK_ADDRESS"


def limit_threads() -> None:
    """One compute thread per worker process: BLAS/OpenMP pools, and torch when it is loaded.

    Permanent for the process: call it in Dask workers only (:func:`warm_worker`, :func:`run_task`
    inside a worker). Small matrix products (the Mel projection) run far slower when BLAS spreads
    them over busy cores.
    """
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=1)
    torch = sys.modules.get("torch")
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


def in_dask_worker() -> bool:
    """Whether this code runs inside a dask.distributed worker."""
    if "distributed" not in sys.modules:
        return False
    from distributed import get_worker

    try:
        get_worker()
    except ValueError:
        return False
    return True


def cluster_threads(client: Any) -> int:
    """Tasks the cluster runs at once: the sum of its workers' threads (at least 1)."""
    workers = client.scheduler_info(n_workers=-1).get("workers", {})
    return max(1, sum(int(w.get("nthreads", 1)) for w in workers.values()))


def cancel_quietly(client: Any, futures: list[Any]) -> None:
    """Cancel ``futures`` and wait until the scheduler has forgotten them (errors while doing so ignored)."""
    if not futures:
        return
    try:
        client.cancel(futures, force=True)
    except Exception:  # noqa: BLE001 - shutting down after an error: the first error is the one to report
        pass


@contextmanager
def dask_client(workers: int | None = None, address: str | None = None, *, timeout_s: float = 10.0) -> Iterator[Any]:
    """A Dask client: to ``address`` (or ``$SER_DASK_ADDRESS``), else a local process cluster.

    The local cluster has ``workers`` processes (default: CPU count) with one thread each; each
    worker is warmed up (imports, thread limits) before the client is handed out.
    """
    import dask
    from distributed import Client, LocalCluster

    address = address or os.environ.get(DASK_ADDRESS_ENV) or None
    if address:
        try:
            client = Client(address, timeout=f"{timeout_s}s")
        except (OSError, TimeoutError) as exc:
            raise StoreError(f"cannot reach the Dask scheduler at {address!r}: {exc}") from exc
        try:
            yield client
        finally:
            _shutdown(client, None, timeout_s)
        return
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers!r}: must be >= 1")
    n = workers or os.cpu_count() or 1
    with dask.config.set(local_worker_config()):
        # Dask's own log lines stay silent: a task's error reaches the caller as one StoreError, and
        # at shutdown on a loaded machine a worker may log its last heartbeat's traceback (ERROR)
        # after the scheduler has gone, which is noise after the one error line.
        cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=":0",
                               silence_logs=logging.CRITICAL)
        client = None
        try:
            client = Client(cluster)
            client.run(warm_worker)
            yield client
        finally:
            _shutdown(client, cluster, timeout_s)


def _shutdown(client: Any, cluster: Any, timeout_s: float) -> None:
    """Close ``client`` then ``cluster`` in order, on success and on error alike.

    Pending futures were cancelled by :func:`_run_tasks`; the cluster is closed with a bounded wait, so an error
    (a full disk...) ends with its one message, not with asyncio's "Task was destroyed but it is
    pending!" from a loop torn down under running tasks. Errors while closing are ignored: the
    error that stopped the work is the one the caller reports.
    """
    if client is not None:
        try:
            client.close(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - see docstring
            pass
    if cluster is not None:
        try:
            cluster.close(timeout=timeout_s)
        except Exception:  # noqa: BLE001 - see docstring
            pass


def worker_environ() -> dict[str, Any]:
    """Environment for local worker processes: Dask's defaults minus ``MALLOC_TRIM_THRESHOLD_``.

    Dask sets ``MALLOC_TRIM_THRESHOLD_=65536`` so workers hand memory back to the OS. Setting it
    at all freezes glibc's mmap threshold at 128 KiB, so every numpy temporary of a frame matrix is
    a fresh ``mmap`` with page faults: measured 1.6-1.9x slower feature extraction. Tasks here hold
    one bounded batch, so glibc's default (adaptive) thresholds keep memory flat anyway.
    """
    import dask

    environ = dict(dask.config.get("distributed.nanny.pre-spawn-environ", default={}) or {})
    environ.pop("MALLOC_TRIM_THRESHOLD_", None)
    return environ


def local_worker_config() -> dict[str, Any]:
    """Dask config for the local cluster: worker environment above, no statistical profiler.

    The profiler samples every worker thread's stack every 10 ms; on this numpy-heavy path it cost
    10-20% of worker CPU in measurements, for a dashboard nobody watches during featurize.
    """
    return {"distributed.nanny.pre-spawn-environ": worker_environ(), "distributed.worker.profile.enabled": False}


def warm_worker() -> None:
    """Import the compute path and limit threads once per worker (part of cluster start-up)."""
    limit_threads()
    extract(np.full(800, 0.1, dtype=np.float32), FeatureSpec())
