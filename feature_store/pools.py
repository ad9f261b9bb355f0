"""Where featurize tasks run locally when there is more than one: threads of this process, or worker
processes forked from a fork server (the default for small jobs; a Dask cluster is in
:mod:`feature_store.cluster`). Both take a task function and its argument tuples and yield
``(index, result)`` as tasks finish; on error the tasks not started are cancelled.

Threads share the GIL: on 2 cores two ran slower than one (stop 24). The fork server imports the
compute path and Zarr once; each worker forked from it limits BLAS to one thread and keeps freed
heap memory between items, and the server is stopped and reaped when the process exits.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Executor, as_completed
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

from feature_store.cluster import limit_threads

# The compute path and the writer's imports, done once in the fork server instead of in every worker
# (zarr alone costs a worker about 0.25 s of CPU on its first batch), and what each worker would build on its
# first batch (`feature_store.worker_warmup`).
FORK_SERVER_PRELOAD = ("feature_store.materialise", "scipy.fft", "zarr", "zarr.codecs", "threadpoolctl",
                       "feature_store.worker_warmup")


def run_all(executor: Executor, fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], *,
            starting: AbstractContextManager[Any] | None = None) -> Iterator[tuple[int, Any]]:
    """Submit ``fn(*call)`` for every call (inside ``starting``) and yield ``(index, result)`` as they
    finish; on any error, or when the caller stops early, the calls not started are cancelled."""
    with starting or nullcontext():
        futures = {executor.submit(fn, *call): i for i, call in enumerate(calls)}
    try:
        for fut in as_completed(futures):
            yield futures[fut], fut.result()
    except BaseException:
        for fut in futures:
            fut.cancel()
        raise


def on_threads(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], threads: int) -> Iterator[tuple[int, Any]]:
    """:func:`run_all` on ``threads`` threads of this process."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="featurize") as pool:
        yield from run_all(pool, fn, calls)


def on_processes(fn: Callable[..., Any], calls: Sequence[tuple[Any, ...]], processes: int) -> Iterator[tuple[int, Any]]:
    """:func:`run_all` on ``processes`` worker processes forked from this process's fork server
    (:func:`start_fork_server`). ``fn`` and the calls must pickle."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    _wait_prestart()
    start_fork_server()
    context = multiprocessing.get_context("forkserver")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_init_worker) as pool:
        yield from run_all(pool, fn, calls, starting=_main_left_alone())  # the workers start at the first submit


def _init_worker() -> None:
    """A worker process's set-up: one BLAS thread, and freed heap memory kept for the next item."""
    from ser_pipeline.heap import keep_freed_memory

    limit_threads()
    keep_freed_memory()


def _ready() -> None:
    """A worker that does nothing: forking it proves the fork server has finished its imports."""


@contextmanager
def _main_left_alone() -> Iterator[None]:
    """Processes started inside do not run the caller's ``__main__`` again.

    multiprocessing re-imports the main script in every process it starts by fork server or spawn;
    these workers only need this package, and an unguarded script (no ``if __name__ == "__main__"``)
    would run again in each of them and fail. The main module's ``__file__`` and ``__spec__`` are
    hidden while the processes start and put back afterwards.
    """
    main = sys.modules.get("__main__")
    saved = {k: main.__dict__[k] for k in ("__file__", "__spec__") if main is not None and k in main.__dict__}
    try:
        if main is not None:
            main.__dict__.pop("__file__", None)
            main.__dict__["__spec__"] = None
        yield
    finally:
        if main is not None:
            main.__dict__.pop("__spec__", None)
            main.__dict__.update(saved)


def fork_server_available() -> bool:
    """Whether this platform has multiprocessing's fork server (not on Windows: threads are used there)."""
    import multiprocessing

    return "forkserver" in multiprocessing.get_all_start_methods()


def _stop_helpers() -> None:
    """At exit: stop and reap the fork server and multiprocessing's resource tracker, so that a
    command leaves no process behind (they would otherwise end on their own a moment after it).
    Their ``_stop`` is private to CPython; without it they end as they would anyway."""
    from multiprocessing import forkserver, resource_tracker

    _wait_prestart()  # a server still starting would be left behind
    for helper in (getattr(forkserver, "_forkserver", None), getattr(resource_tracker, "_resource_tracker", None)):
        stop = getattr(helper, "_stop", None)
        if stop is not None:
            try:
                stop()
            except Exception:  # noqa: BLE001 - exiting anyway: a helper that is already gone is fine
                pass


def _stop_helpers_at_exit() -> None:
    """Run :func:`_stop_helpers` at exit, once however often this is called."""
    import atexit

    atexit.unregister(_stop_helpers)
    atexit.register(_stop_helpers)


_PRESTART: list[threading.Thread] = []  # the background start of :func:`prestart_fork_server`, if any


def prestart_fork_server() -> None:
    """Start the fork server on a background thread and return at once, so that its imports (about
    0.4 s) run on another core while the caller imports and plans; :func:`on_processes` waits for it.

    For a command that will probably fork workers (``ser featurize --workers N``): when it computes
    nothing after all, the server is stopped at exit as usual (after its start has finished).
    Nothing happens where there is no fork server, or when one was started already. A failed start
    is not reported here: :func:`on_processes` starts it again and raises.
    """
    if _PRESTART or not fork_server_available():
        return
    _stop_helpers_at_exit()  # also when the caller fails before its workers start

    def start_quietly() -> None:
        try:
            start_fork_server()
        except Exception:  # noqa: BLE001 - on_processes starts it again and reports the error
            pass

    thread = threading.Thread(target=start_quietly, name="fork-server-start", daemon=True)
    _PRESTART.append(thread)
    thread.start()


def _wait_prestart() -> None:
    for thread in _PRESTART:
        thread.join()


def start_fork_server() -> None:
    """Start this process's fork server and wait until it can fork (once; later calls cost one fork):
    a clean process that has imported the compute path, from which :func:`on_processes` forks its
    workers."""
    import multiprocessing

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(FORK_SERVER_PRELOAD))
    _stop_helpers_at_exit()
    probe = context.Process(target=_ready, name="featurize-fork-server-probe")
    with _main_left_alone():
        probe.start()
    probe.join()
