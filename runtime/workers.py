"""Reader workers for ``esccs infer``: a thread pool, or worker processes that read into shared-memory batch rows.

Threads do not scale the reads: parsing headers and running the checks holds the GIL (measured on 2 cores: 2 reader
threads read fewer tiles/s than one). Processes do, if the pixels do not travel through a pipe, so with
``kind="process"`` the batch buffers of the pipeline's ring live in shared memory (:meth:`ProcessPool.buffer`);
a worker attaches them once and reads each job straight into its row, and only the small result dict comes back.

Worker processes are started with ``spawn`` (no fork of a process running onnxruntime and GDAL threads), ignore
SIGINT (the parent stops them: on Ctrl-C the whole process group gets the signal, and the parent's shutdown must
run first), exit on the parent's sentinel, and exit by themselves when the parent is gone (they poll their parent
pid), so an interrupted or crashed run leaves no orphans. :meth:`ProcessPool.shutdown` joins them, terminates what
is left and unlinks the shared memory.

Readers, threads and processes alike, run :data:`READER_NICE` nice levels below the backend (``$ESCCS_READER_NICE``):
where readers and the backend share cores, the backend's threads go first and the reads fill their idle moments.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue
import signal
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from multiprocessing import shared_memory
from types import SimpleNamespace
from typing import Any

import numpy as np

from esccs.errors import ConfigError

#: environment variable choosing the kind of reader workers when there are several: ``process`` or ``thread``
POOL_ENV = "ESCCS_READER_POOL"
KINDS = ("process", "thread")
#: environment variable: how many nice levels below the backend the readers run (0..19, 0 = the same priority)
NICE_ENV = "ESCCS_READER_NICE"
#: the default: on shared cores the backend's threads go first, readers take the idle moments. Measured with
#: ``esccs infer`` on 2 cores, 1 reader, 2 interleaved runs each (tiles/s): 128 px 250 / 232 at the same priority,
#: 265 / 255 niced by 3, 270 / 268 by 10; 32 px 1101 / 949, 1239 / 968, 1047 / 902 (at 32 px the reads set the
#: pace, and a reader niced by 10 starves). 3 is at least as fast as 0 in both.
READER_NICE = 3
#: how often a worker checks that its parent is still alive (seconds)
PARENT_POLL_S = 0.5


def pool_kind(workers: int, kind: str | None = None) -> str:
    """``thread`` for one worker; else ``kind``, ``$ESCCS_READER_POOL`` or ``process``.

    Raises:
        ConfigError: an unknown kind.
    """
    name = (kind or os.environ.get(POOL_ENV) or "process").strip().lower()
    if name not in KINDS:
        raise ConfigError(f"reader pool {name!r} (from {POOL_ENV}): choose {' or '.join(KINDS)}")
    return "thread" if workers <= 1 else name


def make_pool(reader, workers: int, kind: str | None = None):
    """A pool of ``workers`` readers (see :func:`pool_kind`): :class:`ThreadPool` or :class:`ProcessPool`."""
    reader_nice()  # a bad $ESCCS_READER_NICE fails here, in one line, not inside a worker
    if pool_kind(workers, kind) == "thread":
        return ThreadPool(workers)
    return ProcessPool(reader, workers)


class _SharedMemory(shared_memory.SharedMemory):
    """Shared memory whose ``close`` leaves the mapping to the arrays still using it (no BufferError)."""

    def close(self) -> None:
        try:
            super().close()
        except BufferError:  # arrays over it are alive: the mapping goes with the last of them
            pass


class ThreadPool(ThreadPoolExecutor):
    """Reader threads sharing the parent's reader; batch buffers are ordinary arrays."""

    kind = "thread"

    def __init__(self, workers: int) -> None:
        super().__init__(max_workers=workers, thread_name_prefix="esccs-read", initializer=_lower_priority)
        self.workers = workers

    def buffer(self, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        """A batch buffer the readers fill."""
        return np.empty(shape, dtype)

    def submit_batch(self, fn, reader, jobs: list, slot) -> list[Future]:
        """``fn(reader, job, slot, row)`` for every ``jobs[row]``, one future per row."""
        return [self.submit(fn, reader, job, slot, i) for i, job in enumerate(jobs)]

    def stats(self, reader) -> dict:
        """What the readers did (the parent's reader did it all)."""
        return reader.stats()

    def pids(self) -> list[int]:
        """No worker processes."""
        return []


class ProcessPool:
    """``workers`` spawned processes, each with its own reader, filling shared-memory batch rows.

    Args:
        reader: the parent's :class:`~esccs.runtime.reader.TileReader`; each worker builds one like it.
        workers: number of processes.
    """

    kind = "process"

    def __init__(self, reader, workers: int) -> None:
        self.workers = workers
        ctx = mp.get_context("spawn")
        self._tasks: Any = ctx.Queue()
        self._results: Any = ctx.Queue()
        self._shm: dict[int, tuple[_SharedMemory, np.ndarray]] = {}
        self._pending: dict[int, list[Future]] = {}
        self._lock = threading.Lock()
        self._next = 0
        self._worker_stats: list[dict] = []
        self._closed = False
        spec = reader.spec()
        self._procs = [ctx.Process(target=_worker_main, args=(spec, self._tasks, self._results, os.getpid()),
                                   name=f"esccs-read-{k}", daemon=True) for k in range(workers)]
        # SIGINT blocked while the workers start: they inherit the mask, so a Ctrl-C that lands while they are
        # still importing is not theirs to handle (a worker ignores SIGINT from its first line on)
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            for p in self._procs:
                p.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._collector = threading.Thread(target=self._collect, name="esccs-read-results", daemon=True)
        self._collector.start()

    # ---------------------------------------------------------------------------------------------------- buffers
    def buffer(self, shape: tuple[int, ...], dtype=np.float32) -> np.ndarray:
        """A batch buffer in shared memory (workers attach it by name on first use)."""
        dt = np.dtype(dtype)
        size = max(1, int(np.prod(shape)) * dt.itemsize)
        shm = _SharedMemory(create=True, size=size)
        arr = np.ndarray(shape, dt, buffer=shm.buf)
        self._shm[id(arr)] = (shm, arr)
        return arr

    def _ref(self, arr: np.ndarray) -> tuple[str, tuple[int, ...], str]:
        entry = self._shm.get(id(arr))
        if entry is None or entry[1] is not arr:
            raise ValueError("a process pool reads only into buffers made by its buffer()")
        return entry[0].name, arr.shape, arr.dtype.str

    # ------------------------------------------------------------------------------------------------------ tasks
    def submit(self, fn, reader, job, slot, row: int) -> Future:
        """Run ``fn(worker_reader, job, slot, row)`` in a worker (one message per call; see :meth:`submit_batch`)."""
        return self._send(fn, [job], slot, row)[0]

    def submit_batch(self, fn, reader, jobs: list, slot) -> list[Future]:
        """``fn(worker_reader, job, slot, row)`` for every ``jobs[row]``, one future per row.

        The rows go out in ``2 x workers`` contiguous parts, one message each (a message costs about as much as
        reading a 32 px tile). ``slot``'s arrays must come from :meth:`buffer`; ``reader`` is the parent's (each
        worker uses its own, built from ``reader.spec()``).
        """
        parts = max(1, min(len(jobs), 2 * self.workers))
        step = -(-len(jobs) // parts)
        futures: list[Future] = []
        for start in range(0, len(jobs), step):
            futures += self._send(fn, jobs[start:start + step], slot, start)
        return futures

    def _send(self, fn, jobs: list, slot, first_row: int) -> list[Future]:
        if self._closed:
            raise RuntimeError("the reader pool is shut down")
        refs = {k: self._ref(v) for k, v in vars(slot).items() if isinstance(v, np.ndarray)}
        futures = [Future() for _ in jobs]
        with self._lock:
            tid = self._next
            self._next += 1
            self._pending[tid] = futures
        self._tasks.put((tid, fn, jobs, refs, first_row))
        return futures

    def _collect(self) -> None:
        """Hand results to their futures; fail them all if a worker dies."""
        while True:
            try:
                msg = self._results.get(timeout=PARENT_POLL_S)
            except queue.Empty:
                dead = [p for p in self._procs if p.exitcode not in (None, 0)]
                if dead and not self._closed:
                    self._fail_all(RuntimeError(f"reader worker {dead[0].name} died (exit code {dead[0].exitcode})"))
                    return
                continue
            except (EOFError, OSError):
                return
            if msg is None:
                return
            tag, tid, payload = msg
            if tag == "stats":
                self._worker_stats.append(payload)
                continue
            with self._lock:
                futures = self._pending.pop(tid, [])
            for k, fut in enumerate(futures):
                if fut.cancelled():
                    continue
                if tag == "ok":
                    fut.set_result(payload[k])
                else:
                    fut.set_exception(payload)

    def _fail_all(self, err: BaseException) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
        for futures in pending.values():
            for fut in futures:
                if not fut.done():
                    fut.set_exception(err)

    # ---------------------------------------------------------------------------------------------------- closing
    def shutdown(self, wait: bool = True, timeout: float = 2.0) -> None:
        """Stop the workers (after the queued tasks when ``wait``), terminate stragglers, free the shared memory."""
        if self._closed:
            return
        self._closed = True
        if not wait:
            self._drain_tasks()
        for _ in self._procs:
            self._tasks.put(None)
        deadline = time.monotonic() + timeout
        for p in self._procs:
            p.join(max(0.0, deadline - time.monotonic()))
        for p in self._procs:
            if p.is_alive():
                p.terminate()
                p.join(2.0)
        self._results.put(None)
        self._collector.join(5.0)
        self._fail_all(RuntimeError("the reader pool shut down before this read finished"))
        for q in (self._tasks, self._results):
            q.close()
            q.join_thread()
        for shm, _ in self._shm.values():
            shm.close()
            shm.unlink()
        self._shm.clear()

    def _drain_tasks(self) -> None:
        while True:
            try:
                self._tasks.get_nowait()
            except (queue.Empty, OSError, ValueError):
                return

    def stats(self, reader) -> dict:
        """What the workers' readers did, summed (after :meth:`shutdown`)."""
        files: dict[str, int] = {}
        declined: dict[str, int] = {}
        out = {"engine": reader.engine, "workers": len(self._worker_stats), "signatures_checked": 0,
               "signatures_declined": 0}
        for s in self._worker_stats:
            for k, v in s["files"].items():
                files[k] = files.get(k, 0) + v
            for k, v in s["declined"].items():
                declined[k] = declined.get(k, 0) + v
            out["signatures_checked"] += s["signatures_checked"]
            out["signatures_declined"] += s["signatures_declined"]
        return {**out, "files": files, "declined": dict(list(declined.items())[:20])}

    def pids(self) -> list[int]:
        """Process ids of the workers (tests check none outlive the pool)."""
        return [p.pid for p in self._procs if p.pid is not None]

    def __enter__(self) -> ProcessPool:
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown(wait=exc[0] is None)


# ------------------------------------------------------------------------------------------------------- worker
def _watch_parent(parent: int) -> None:
    while True:
        time.sleep(PARENT_POLL_S)
        if os.getppid() != parent:
            os._exit(0)


def reader_nice() -> int:
    """How much lower than the backend the readers run: ``$ESCCS_READER_NICE``, default :data:`READER_NICE`.

    Raises:
        ConfigError: the variable is not an integer in 0..19.
    """
    raw = os.environ.get(NICE_ENV, str(READER_NICE))
    try:
        n = int(raw)
    except ValueError:
        n = -1
    if not 0 <= n <= 19:
        raise ConfigError(f"{NICE_ENV}={raw!r}: expected an integer 0..19 (0 = readers at the backend's priority)")
    return n


def _lower_priority() -> None:
    """Lower the calling reader thread's CPU priority by :func:`reader_nice` (Linux: nice is per thread).

    Under contention the scheduler then runs the backend's threads first and the reader in their idle moments;
    on idle cores nothing changes. Where the OS refuses (or has no per-thread nice), the reader runs as it is.
    """
    n = reader_nice()
    if not n or not hasattr(os, "setpriority"):
        return
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, min(19, os.getpriority(os.PRIO_PROCESS, tid) + n))
    except OSError:  # pragma: no cover - a sandbox that forbids it: same priority, same results
        pass


def _worker_main(spec: dict, tasks, results, parent: int) -> None:
    """Loop of one worker process: attach buffers, read jobs into them, send back the result dicts."""
    _lower_priority()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us (see the module docstring)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked by the parent while starting us
    threading.Thread(target=_watch_parent, args=(parent,), daemon=True).start()
    from esccs.runtime.reader import TileReader, configure_gdal

    configure_gdal()
    reader = TileReader.from_spec(spec)
    attached: dict[str, tuple[_SharedMemory, np.ndarray]] = {}
    try:
        while (task := tasks.get()) is not None:
            tid, fn, jobs, refs, first_row = task
            views = {}
            for key, (name, shape, dtype) in refs.items():
                if name not in attached:
                    shm = _SharedMemory(name=name)
                    attached[name] = (shm, np.ndarray(shape, np.dtype(dtype), buffer=shm.buf))
                views[key] = attached[name][1]
            slot = SimpleNamespace(**views)
            try:
                out = [fn(reader, job, slot, first_row + k) for k, job in enumerate(jobs)]
            except BaseException as err:  # noqa: BLE001 - handed to the parent's futures (as a picklable error)
                results.put(("error", tid, RuntimeError(f"reader worker: {type(err).__name__}: {err}")))
            else:
                results.put(("ok", tid, out))
        results.put(("stats", -1, reader.stats()))
    finally:
        for shm, _ in attached.values():
            shm.close()
        reader.close()
